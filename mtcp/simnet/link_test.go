package simnet

import (
	"math/rand/v2"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func newScheduler(cfg LinkConfig, seed uint64) *scheduler {
	return &scheduler{cfg: cfg, rng: rand.New(rand.NewPCG(seed, 0))}
}

func TestSchedulerAddsDelay(t *testing.T) {
	s := newScheduler(LinkConfig{Delay: 5 * time.Millisecond}, 1)
	at, v := s.admit(t0, 1500)
	if v != admitted || !at.Equal(t0.Add(5*time.Millisecond)) {
		t.Errorf("admit = %v, %v; want arrival after the delay", at.Sub(t0), v)
	}
}

func TestSchedulerSerialisesBackToBackPackets(t *testing.T) {
	// 1000 bytes at 1 MB/s take 1 ms each; three sent at once queue up.
	s := newScheduler(LinkConfig{Delay: 10 * time.Millisecond, Bandwidth: 1_000_000}, 1)
	for i := 1; i <= 3; i++ {
		at, v := s.admit(t0, 1000)
		want := t0.Add(time.Duration(i)*time.Millisecond + 10*time.Millisecond)
		if v != admitted || !at.Equal(want) {
			t.Errorf("packet %d: admit = %v, %v; want %v", i, at.Sub(t0), v, want.Sub(t0))
		}
	}
	// Once the queue has drained, a packet starts at once.
	later := t0.Add(time.Second)
	if at, _ := s.admit(later, 1000); !at.Equal(later.Add(11 * time.Millisecond)) {
		t.Errorf("idle link: arrival after %v, want 11ms", at.Sub(later))
	}
}

func TestSchedulerTailDropsWhenQueueIsFull(t *testing.T) {
	s := newScheduler(LinkConfig{Bandwidth: 1_000_000, QueueBytes: 3000}, 1)
	var got []verdict
	for range 5 {
		_, v := s.admit(t0, 1000)
		got = append(got, v)
	}
	// 3000 bytes waiting to be serialised, counting the packet on the wire,
	// fill the queue.
	want := []verdict{admitted, admitted, admitted, overflowed, overflowed}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("verdicts = %v, want %v", got, want)
		}
	}
}

func TestSchedulerStaysFIFOWhenDelayDrops(t *testing.T) {
	s := newScheduler(LinkConfig{Delay: 100 * time.Millisecond}, 1)
	first, _ := s.admit(t0, 100)
	s.cfg.Delay = time.Millisecond
	second, _ := s.admit(t0.Add(time.Millisecond), 100)
	if second.Before(first) {
		t.Errorf("second packet arrives %v before the first", first.Sub(second))
	}
}

func TestSchedulerJitterNeverReorders(t *testing.T) {
	s := newScheduler(LinkConfig{Delay: 10 * time.Millisecond, Jitter: 10 * time.Millisecond}, 3)
	var prev time.Time
	spread := false
	for i := range 1000 {
		now := t0.Add(time.Duration(i) * 100 * time.Microsecond)
		at, v := s.admit(now, 100)
		if v != admitted {
			t.Fatalf("packet %d: %v", i, v)
		}
		if at.Before(prev) {
			t.Fatalf("packet %d arrives %v before its predecessor", i, prev.Sub(at))
		}
		if d := at.Sub(now); d < 10*time.Millisecond || d > 20*time.Millisecond {
			t.Fatalf("packet %d delayed %v, want within [10ms, 20ms]", i, d)
		} else if d > 11*time.Millisecond {
			spread = true
		}
		prev = at
	}
	if !spread {
		t.Error("jitter added no delay")
	}
}

func TestSchedulerLossIsSeededAndNearTheRate(t *testing.T) {
	run := func(seed uint64) []verdict {
		s := newScheduler(LinkConfig{Loss: 0.05}, seed)
		out := make([]verdict, 20000)
		for i := range out {
			_, out[i] = s.admit(t0, 100)
		}
		return out
	}
	a, b := run(7), run(7)
	lostN := 0
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("same seed, different verdict for packet %d", i)
		}
		if a[i] == lost {
			lostN++
		}
	}
	// 5% of 20000 is 1000 with a standard deviation of about 31.
	if lostN < 800 || lostN > 1200 {
		t.Errorf("lost %d of %d packets at 5%% loss", lostN, len(a))
	}
}

func TestLinkConfigValidation(t *testing.T) {
	for _, c := range []LinkConfig{
		{Delay: -1}, {Jitter: -1}, {Loss: -0.1}, {Loss: 1.1}, {Bandwidth: -1}, {QueueBytes: -1},
	} {
		if c.validate() == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	if err := (LinkConfig{Delay: time.Second, Loss: 1, Bandwidth: 1, QueueBytes: 1}).validate(); err != nil {
		t.Errorf("valid config rejected: %v", err)
	}
}
