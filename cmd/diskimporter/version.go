package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// buildVersion is the release a build names itself, set with
// -ldflags "-X main.buildVersion=v1.2.3" (the Dockerfile does); empty:
// the module version, or "devel" for a build from a checkout.
var buildVersion string

// version describes the build: its version, the VCS revision when the
// binary was built from a checkout with VCS stamping, and the Go version.
// It names a version whatever the build recorded.
func version() string {
	v, rev, modified := buildVersion, "unknown", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision":
				rev = s.Value
			case s.Key == "vcs.modified" && s.Value == "true":
				modified = "+dirty"
			}
		}
	}
	if v == "" {
		v = "devel"
	}
	return fmt.Sprintf("diskimporter %s (revision %s%s, %s)", v, rev, modified, runtime.Version())
}
