package warm

import (
	"errors"
	"runtime"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/diskimporter/diskimporter/importer"
)

// TestSettingsPlatform: Platform is os/arch[/variant] as export's and
// import's are; empty is the node's own.
func TestSettingsPlatform(t *testing.T) {
	for _, tc := range []struct {
		platform string
		want     v1.Platform
	}{
		{"", v1.Platform{OS: "linux", Architecture: runtime.GOARCH}},
		{"linux/arm64/v8", v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}},
		{"linux", v1.Platform{}},
		{"/amd64", v1.Platform{}},
	} {
		s, err := Options{Platform: tc.platform}.settings("registry.example/disks/fedora:41")
		if tc.want.OS == "" {
			if !errors.Is(err, importer.ErrInvalidOptions) {
				t.Errorf("Platform %q: %v, want ErrInvalidOptions", tc.platform, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Platform %q: %v", tc.platform, err)
			continue
		}
		if !s.platform.Equals(tc.want) {
			t.Errorf("Platform %q is %s, want %s", tc.platform, s.platform.String(), tc.want.String())
		}
	}
}
