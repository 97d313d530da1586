package importer_test

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/reason"
)

// TestManifestNotStored: a registry (or a proxy in front of it) that
// answers the manifest PUT with 201 but stores nothing, or stores it under
// no tag, fails the import with a registry error instead of reporting a
// reference that does not exist; with the tag already holding an earlier
// image, the tag must resolve to the new manifest, not the old one.
func TestManifestNotStored(t *testing.T) {
	t.Parallel()
	data := diskBytes(t, 256<<10)
	for _, tc := range []struct {
		name string
		// earlier: the tag holds an image of other bytes first.
		earlier bool
	}{
		{name: "no image at the tag"},
		{name: "an earlier image at the tag", earlier: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var drop atomic.Bool
			reg := newTestRegistry(t, withMiddleware(func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if drop.Load() && r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/") {
						io.Copy(io.Discard, r.Body)
						w.Header().Set("Location", r.URL.Path)
						w.WriteHeader(http.StatusCreated)
						return
					}
					next.ServeHTTP(w, r)
				})
			}))
			if tc.earlier {
				src := newTestSource(t, serveBytes(diskBytes(t, 128<<10), `"old"`))
				if _, err := importer.Run(testContext(t), baseOptions(reg, src.url)); err != nil {
					t.Fatalf("earlier import: %v", err)
				}
			}
			drop.Store(true)
			src := newTestSource(t, serveBytes(data, `"new"`))
			res, err := importer.Run(testContext(t), baseOptions(reg, src.url))
			if err == nil {
				t.Fatalf("Run succeeded with reference %s, which the registry does not hold", res.Reference)
			}
			if !errors.Is(err, importer.ErrRegistry) || reason.Of(err) != reason.RegistryError ||
				!strings.Contains(err.Error(), "accepted the manifest but the tag") {
				t.Errorf("Run: %v (reason %s); want a registry error saying the tag does not resolve to the manifest", err, reason.Of(err))
			}
			if !tc.earlier {
				reg.assertNoTag(t)
			}
		})
	}
}
