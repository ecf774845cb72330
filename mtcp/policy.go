package mtcp

import "time"

// Triggers are the client's reasons to migrate; the mechanism (Migrate)
// does not know about them. Zero fields take the defaults noted.
type Triggers struct {
	// KeepAlive is how long a path may be silent before the client pings.
	// Default 1s.
	KeepAlive time.Duration
	// PathTimeout: a path on which nothing arrives for this long (despite
	// pings) has failed, and the client migrates. Default 5s.
	PathTimeout time.Duration
	// Rate enables the rate policy; nil disables it.
	Rate *RatePolicy
	// IgnoreRedirects makes the client ignore the servers' REDIRECT hints.
	IgnoreRedirects bool
}

func (t *Triggers) fill() {
	setDefault(&t.KeepAlive, time.Second)
	setDefault(&t.PathTimeout, 5*time.Second)
	if t.Rate != nil {
		r := *t.Rate
		r.fill()
		t.Rate = &r
	}
}

// tick is the period of the client's trigger timer: often enough for the
// keepalive and for every rate sample.
func (t *Triggers) tick() time.Duration {
	tick := t.KeepAlive / 2
	if t.Rate != nil && t.Rate.Interval < tick {
		tick = t.Rate.Interval
	}
	return tick
}

// RatePolicy migrates when the smoothed inbound rate falls below Fraction of
// the highest smoothed rate seen on the current server. Meant for streaming
// connections: an idle stream has a low rate too.
type RatePolicy struct {
	Fraction  float64       // default 0.75
	Interval  time.Duration // sampling interval, default 100ms
	Smoothing float64       // EWMA weight of the newest sample, default 0.5
	Warmup    int           // samples before deciding, default 3
	// MinPeak is the peak rate (bytes/s) below which the policy never
	// fires, so a trickle does not cause migrations. Default 1 kB/s.
	MinPeak float64
	// Cooldown is how long a server the policy left for slowness stays
	// out of its choices, so a dip on the new server never sends the
	// stream back to the slow one (with two servers it stays put).
	// Default 30s.
	Cooldown time.Duration
}

func (r *RatePolicy) fill() {
	if r.Fraction <= 0 {
		r.Fraction = 0.75
	}
	setDefault(&r.Interval, 100*time.Millisecond)
	if r.Smoothing <= 0 || r.Smoothing > 1 {
		r.Smoothing = 0.5
	}
	if r.Warmup <= 0 {
		r.Warmup = 3
	}
	if r.MinPeak <= 0 {
		r.MinPeak = 1000
	}
	setDefault(&r.Cooldown, 30*time.Second)
}

// rateEstimator is the rate policy's state; observe is a pure step.
type rateEstimator struct {
	p       RatePolicy
	ewma    float64
	peak    float64
	samples int
	last    uint64
	lastT   time.Time
}

func newRateEstimator(p RatePolicy, now time.Time, total uint64) rateEstimator {
	return rateEstimator{p: p, last: total, lastT: now}
}

// observe takes the total bytes received so far at time now. blocked says
// the application is not reading (a full receive buffer), in which case the
// sample says nothing about the server and is skipped. It reports whether
// to migrate.
func (r *rateEstimator) observe(now time.Time, total uint64, blocked bool) bool {
	dt := now.Sub(r.lastT).Seconds()
	if dt <= 0 {
		return false
	}
	bytes := total - r.last
	r.last, r.lastT = total, now
	if blocked {
		return false
	}
	rate := float64(bytes) / dt
	if r.samples == 0 {
		r.ewma = rate
	} else {
		r.ewma = r.p.Smoothing*rate + (1-r.p.Smoothing)*r.ewma
	}
	r.samples++
	if r.ewma > r.peak {
		r.peak = r.ewma
	}
	return r.samples > r.p.Warmup && r.peak >= r.p.MinPeak && r.ewma < r.p.Fraction*r.peak
}

// rateClock decides which ticks of the client's timer take a rate sample.
// Samples are due on a fixed schedule, one Interval apart; a tick counts
// for the sample nearest to it, within half a tick either way, so a timer
// whose period equals the interval uses every tick however it jitters
// (the estimator divides by the actual time between samples). Pure: it is
// fed the ticks' timestamps.
type rateClock struct {
	interval time.Duration
	slack    time.Duration // half the timer's period
	next     time.Time     // when the next sample is due
}

func newRateClock(interval, tick time.Duration, now time.Time) rateClock {
	return rateClock{interval: interval, slack: tick / 2, next: now.Add(interval)}
}

// due reports whether the tick at now takes a sample, and if so schedules
// the next one.
func (k *rateClock) due(now time.Time) bool {
	if now.Before(k.next.Add(-k.slack)) {
		return false
	}
	k.next = k.next.Add(k.interval)
	if !now.Before(k.next) {
		// The loop stalled for a whole interval or more (a migration
		// ran): start the schedule over rather than sample in a burst.
		k.next = now.Add(k.interval)
	}
	return true
}

// pickFaster chooses the rate policy's target: the first server after cur
// that it has not left for slowness within cooldown, or "" if none.
func pickFaster(servers []string, cur string, fled map[string]time.Time, now time.Time, cooldown time.Duration) string {
	for i := range len(servers) {
		s := pickServer(servers, cur, i)
		if s == cur {
			break
		}
		if t, ok := fled[s]; !ok || now.Sub(t) >= cooldown {
			return s
		}
	}
	return ""
}

// pickServer chooses the attempt-th migration target: the servers after
// cur in list order, cur itself last (a path failure may be transient).
func pickServer(servers []string, cur string, attempt int) string {
	if len(servers) == 0 {
		return cur
	}
	start := 0
	for i, s := range servers {
		if s == cur {
			start = i + 1
			break
		}
	}
	var order []string
	for i := range servers {
		s := servers[(start+i)%len(servers)]
		if s != cur {
			order = append(order, s)
		}
	}
	order = append(order, cur)
	return order[attempt%len(order)]
}

// mergeServers adds the addresses in upd to list, keeping list's order.
func mergeServers(list, upd []string) []string {
	seen := make(map[string]bool, len(list))
	for _, s := range list {
		seen[s] = true
	}
	for _, s := range upd {
		if s != "" && !seen[s] {
			list = append(list, s)
			seen[s] = true
		}
	}
	return list
}
