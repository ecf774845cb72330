package tunnet

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseServiceTakesRoutableAddressesOnly(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "10.77.0.1:80", want: "10.77.0.1:80"},
		{in: "[fd77::1]:8080", want: "[fd77::1]:8080"},
		{in: "[::ffff:10.77.0.1]:80", want: "10.77.0.1:80"},
		{in: "10.77.0.1", err: "want ADDR:PORT"},
		{in: "svc.local:80", err: "want ADDR:PORT"},
		{in: "10.77.0.1:0", err: "port 0"},
		{in: "10.77.0.1:70000", err: "want ADDR:PORT"},
		{in: "0.0.0.0:80", err: "not unspecified"},
		{in: "127.0.0.2:80", err: "loopback"},
		{in: "[::1]:80", err: "loopback"},
		{in: "224.0.0.1:80", err: "multicast"},
		{in: "169.254.1.1:80", err: "link-local"},
		{in: "[fe80::1%eth0]:80", err: "zone"},
	} {
		got, err := ParseService(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseService(%q) = %v, %v; want an error about %q", tc.in, got, err, tc.err)
		case tc.err == "" && (err != nil || got.String() != tc.want):
			t.Errorf("ParseService(%q) = %v, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}

func TestConfigCheckRefusesWhatCannotWork(t *testing.T) {
	svc := []netip.AddrPort{netip.MustParseAddrPort("10.77.0.1:80")}
	v6 := []netip.AddrPort{netip.MustParseAddrPort("[fd77::1]:80")}
	for _, tc := range []struct {
		name string
		cfg  Config
		err  string
	}{
		{"no name", Config{Services: svc}, "no device name"},
		{"long name", Config{Name: "a-name-too-long-for-linux", Services: svc}, "at most 15 bytes"},
		{"slash", Config{Name: "tun/0", Services: svc}, "no '/'"},
		{"no service", Config{Name: "hafetun0"}, "no service"},
		{"small MTU", Config{Name: "hafetun0", MTU: 100, Services: svc}, "MTU 100"},
		{"IPv6 small MTU", Config{Name: "hafetun0", MTU: 1000, Services: v6}, "IPv6 needs an MTU of at least 1280"},
		{"twice", Config{Name: "hafetun0", Services: append(svc, svc...)}, "given twice"},
		{"unspecified", Config{Name: "hafetun0", Services: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:80")}}, "unspecified"},
	} {
		if err := tc.cfg.Check(); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: %v, want an error about %q", tc.name, err, tc.err)
		}
	}
	cfg := Config{Name: "hafetun0", Services: append(svc, netip.MustParseAddrPort("10.77.0.1:443"), v6[0])}
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	if cfg.MTU != DefaultMTU || cfg.Logger == nil {
		t.Errorf("defaults not filled: MTU %d, logger %v", cfg.MTU, cfg.Logger)
	}
	if got := cfg.addrs(); len(got) != 2 {
		t.Errorf("distinct addresses %v, want 10.77.0.1 and fd77::1", got)
	}
}
