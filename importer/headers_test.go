package importer_test

import (
	"errors"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/diskimporter/diskimporter/importer"
)

// TestSourceHeaders: extra headers reach the source's origin, never the
// other origin it redirects to, and a bad header name is refused before
// anything moves.
func TestSourceHeaders(t *testing.T) {
	t.Parallel()
	data := diskBytes(t, 2<<20)
	var leaked atomic.Int32
	store := newTestSource(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" || r.Header.Get("X-Token") != "" {
			leaked.Add(1)
		}
		serveBytes(data, `"v1"`)(w, r)
	})
	origin := newTestSource(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" || r.Header.Get("X-Token") != "t2" {
			http.Error(w, "no token", http.StatusUnauthorized)
			return
		}
		http.Redirect(w, r, store.url+"?sig=s", http.StatusTemporaryRedirect)
	})
	reg := newTestRegistry(t)

	o := baseOptions(reg, origin.url)
	o.Connections, o.ChunkSize = 4, 256<<10
	o.SourceHeaders = http.Header{"Authorization": {"Bearer tok"}, "X-Token": {"t2"}}
	if _, err := importer.Run(testContext(t), o); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := leaked.Load(); n != 0 {
		t.Errorf("the redirect target got the source headers %d times", n)
	}
	if origin.gets.Load() == 0 || store.gets.Load() < 8 {
		t.Errorf("%d GETs at the origin, %d at the store", origin.gets.Load(), store.gets.Load())
	}

	o.SourceHeaders = nil
	if _, err := importer.Run(testContext(t), o); !errors.Is(err, importer.ErrSourceUnauthorized) {
		t.Errorf("without the header: %v, want ErrSourceUnauthorized", err)
	}
	o.SourceHeaders = http.Header{"Bad Name:": {"x"}}
	if _, err := importer.Run(testContext(t), o); !errors.Is(err, importer.ErrInvalidOptions) {
		t.Errorf("a header name with a space and a colon: %v, want ErrInvalidOptions", err)
	}
}
