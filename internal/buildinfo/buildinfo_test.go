package buildinfo

import (
	"runtime"
	"testing"
)

func TestReadNamesTheToolchainAndAVersion(t *testing.T) {
	i := Read()
	if i.Go != runtime.Version() {
		t.Fatalf("Go %q, want %q", i.Go, runtime.Version())
	}
	if i.Version == "" {
		t.Fatal("empty version")
	}
}

func TestShortRevision(t *testing.T) {
	for _, c := range []struct {
		in   Info
		want string
	}{
		{Info{}, ""},
		{Info{Revision: "abc"}, "abc"},
		{Info{Revision: "0123456789abcdef0123"}, "0123456789ab"},
		{Info{Revision: "0123456789abcdef0123", Modified: true}, "0123456789ab+dirty"},
		{Info{Modified: true}, ""},
	} {
		if got := c.in.ShortRevision(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.in, got, c.want)
		}
	}
}
