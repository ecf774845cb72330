// Package buildinfo says which build of hafe is running: the module
// version and the VCS revision the go command stamped into the binary.
//
// The invariant: nothing here is set by hand at build time; what the
// toolchain recorded is what is reported.
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Info describes the running binary.
type Info struct {
	// Version is the main module's version: a tag such as v1.2.0, a
	// pseudo-version for a commit, or "(devel)" for a build from a work
	// tree.
	Version string
	// Revision is the VCS commit the binary was built from ("" when the
	// build had no VCS information, e.g. go test or -buildvcs=false).
	Revision string
	// Modified is true when the work tree had uncommitted changes.
	Modified bool
	// Time is the commit's time, RFC 3339 ("" when unknown).
	Time string
	// Go is the toolchain version, e.g. go1.26.8.
	Go string
}

// Read returns the running binary's build information.
func Read() Info {
	info := Info{Version: "(devel)", Go: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return info
	}
	if v := bi.Main.Version; v != "" {
		info.Version = v
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		case "vcs.time":
			info.Time = s.Value
		}
	}
	return info
}

// ShortRevision is the first 12 characters of the revision, with
// "+dirty" when the work tree was modified.
func (i Info) ShortRevision() string {
	r := i.Revision
	if len(r) > 12 {
		r = r[:12]
	}
	if i.Modified && r != "" {
		r += "+dirty"
	}
	return r
}
