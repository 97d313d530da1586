package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version describes the build: module version, VCS revision when the
// binary was built from a checkout with VCS stamping, and Go version.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "diskimporter (no build info) " + runtime.Version()
	}
	rev, modified := "", ""
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "+dirty"
			}
		}
	}
	if rev == "" {
		rev = "unknown"
	}
	return fmt.Sprintf("diskimporter %s (revision %s%s, %s)", bi.Main.Version, rev, modified, bi.GoVersion)
}
