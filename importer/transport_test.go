package importer_test

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/importer"
)

// TestRegistryStopsReading: a registry that stops reading the upload fails
// the import after the stall timeout instead of holding it for ever, and
// nothing is tagged.
func TestRegistryStopsReading(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	defer close(release)
	reg := newTestRegistry(t, withMiddleware(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPatch {
				next.ServeHTTP(w, r)
				return
			}
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			<-release // hold the connection, read nothing
		})
	}))
	// More than loopback socket buffers hold, so that the writer blocks.
	src := newTestSource(t, serveBytes(diskBytes(t, 48<<20), `"v1"`))
	o := baseOptions(reg, src.url)
	o.StallTimeout, o.Retries = 500*time.Millisecond, -1
	start := time.Now()
	_, err := importer.Run(testContext(t), o)
	if !errors.Is(err, importer.ErrRegistry) {
		t.Fatalf("Run error %v, want ErrRegistry", err)
	}
	if took := time.Since(start); took > 15*time.Second {
		t.Errorf("took %v to notice the stall", took)
	}
	reg.assertNoTag(t)
}
