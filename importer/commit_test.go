package importer_test

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/diskimporter/diskimporter/importer"
)

// TestCommitRetried: a registry that answers the layer's final PUT
// (?digest=) with a 503 once is asked again, and the import succeeds
// without sending the layer again.
func TestCommitRetried(t *testing.T) {
	t.Parallel()
	data := diskBytes(t, 1<<20)
	var puts, patches atomic.Int32
	reg := newTestRegistry(t, withMiddleware(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPatch {
				patches.Add(1)
			}
			if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/blobs/uploads/") && puts.Add(1) == 1 {
				http.Error(w, "busy", http.StatusServiceUnavailable)
				return
			}
			next.ServeHTTP(w, r)
		})
	}))
	src := newTestSource(t, serveBytes(data, `"v1"`))
	o := baseOptions(reg, src.url)
	o.Retries = 2
	if _, err := importer.Run(testContext(t), o); err != nil {
		t.Fatalf("Run: %v", err)
	}
	// The layer's PATCH and the config blob's, once each.
	if puts.Load() < 2 || patches.Load() != 2 {
		t.Errorf("%d blob PUTs, %d PATCHes; want the layer's PUT asked again and no PATCH sent again", puts.Load(), patches.Load())
	}
}
