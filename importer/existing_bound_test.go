package importer_test

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/diskimporter/diskimporter/importer"
)

// TestSkipExistingBounded: with SkipExisting, what the registry says is at
// the destination is read with bounded memory: a config whose descriptor
// says 200 MiB is not fetched (the image is no earlier import, and the
// source is imported), and a manifest or a config body that goes on past
// 4 MiB is cut short, whatever its descriptor said.
func TestSkipExistingBounded(t *testing.T) {
	t.Parallel()
	const huge = 200 << 20
	data := diskBytes(t, 256<<10)
	sum := importer.Checksum{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sha256.Sum256(data))}
	for _, tc := range []struct {
		name string
		// configSize is what the manifest's config descriptor says.
		configSize int64
		// hugeManifest: the manifest body itself goes on for huge bytes.
		hugeManifest bool
		wantErr      bool
	}{
		{name: "config descriptor of 200 MiB", configSize: huge},
		{name: "config of 200 MiB behind a 1 KiB descriptor", configSize: 1 << 10, wantErr: true},
		{name: "manifest of 200 MiB", hugeManifest: true, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var served atomic.Int64 // body bytes of the fake manifest and config
			cfgDigest := "sha256:" + strings.Repeat("ab", 32)
			manifest, _ := json.Marshal(map[string]any{
				"schemaVersion": 2,
				"mediaType":     "application/vnd.oci.image.manifest.v1+json",
				"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfgDigest, "size": tc.configSize},
				"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": cfgDigest, "size": 1}},
			})
			var pushed atomic.Bool
			reg := newTestRegistry(t, withMiddleware(func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					switch {
					case r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/"):
						pushed.Store(true)
					case pushed.Load():
					case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/manifests/"+testTag):
						w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
						if tc.hugeManifest {
							serveHuge(w, &served, append(manifest, ' '), huge, false)
							return
						}
						w.Header().Set("Content-Length", strconv.Itoa(len(manifest)))
						w.Write(manifest)
						return
					case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+cfgDigest):
						serveHuge(w, &served, []byte(" "), huge, true)
						return
					}
					next.ServeHTTP(w, r)
				})
			}))
			src := newTestSource(t, serveBytes(data, `"v1"`))
			o := baseOptions(reg, src.url)
			o.SkipExisting, o.Checksums = true, []importer.Checksum{sum}
			res, err := importer.Run(testContext(t), o)
			if got := served.Load(); got > 32<<20 { // what the client read, and what the socket buffers took
				t.Errorf("the registry sent %d bytes of the existing image's manifest and config, want at most 32 MiB", got)
			}
			switch {
			case tc.wantErr && err == nil:
				t.Errorf("Run succeeded (skipped %v), want an error", res.Skipped)
			case !tc.wantErr && err != nil:
				t.Errorf("Run: %v", err)
			case !tc.wantErr && (res.Skipped || src.gets.Load() == 0):
				t.Errorf("skipped %v after %d GETs of the source; want an import", res.Skipped, src.gets.Load())
			}
		})
	}
}

// serveHuge writes piece over and over, size bytes in all (with a
// Content-Length when withLength), counting them in served, until the
// client goes away.
func serveHuge(w http.ResponseWriter, served *atomic.Int64, piece []byte, size int64, withLength bool) {
	if withLength {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	}
	buf := []byte(strings.Repeat(string(piece), (64<<10)/len(piece)+1))[:64<<10]
	for n := int64(0); n < size; n += int64(len(buf)) {
		m, err := w.Write(buf[:min(int64(len(buf)), size-n)])
		served.Add(int64(m))
		if err != nil {
			return
		}
	}
}
