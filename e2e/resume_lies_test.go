package e2e

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/diskimporter/diskimporter/layer"
)

// TestUploadResumeLies: a registry (or a proxy before it) that reports a
// wrong offset after a cut (behind, ahead, or one past, as Quay does) is
// caught: the import refuses to go on from there, starts a fresh upload if
// it must, and the image is the right one. A registry that was still
// storing the cut PATCH when first asked (it reports less than it ends up
// with, refuses the next PATCH, then reports what it holds) is gone on
// with, not started over: what it holds is within what was sent.
func TestUploadResumeLies(t *testing.T) {
	needE2E(t)
	t.Parallel()
	const size = 32 << 20
	total, err := layer.TarSize(layer.DefaultDiskName, size)
	if err != nil {
		t.Fatal(err)
	}
	want := layerDigest(t, size)
	for _, c := range []struct {
		delta     int64
		once      bool // lie at the first GET only
		wantFresh bool
	}{{-4096, false, true}, {+4096, false, true}, {+1, false, true}, {-12 << 20, true, false}} {
		t.Run(fmt.Sprintf("offset %+d once %v", c.delta, c.once), func(t *testing.T) {
			t.Parallel()
			cutter := &patchCutter{at: []int64{total / 2}}
			var lies atomic.Int64
			proxy := newFaultProxy(t, func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/uploads/") {
					delta := c.delta
					if c.once && lies.Load() > 0 {
						delta = 0
					}
					return lie(w, r, delta, &lies)
				}
				return cutter.handle(w, r)
			})
			source, _ := countingSource(t, size)
			dest := proxy.addr + "/" + newRepo(t) + ":v1"
			args := []string{"--source", source, "--destination", dest, "--ca-file", proxy.caFile, "--log-format", "json", "--retries", "6"}
			r := runImport(t, childEnv(t, credsEnv(reg)...), args...)
			res := parseSuccess(t, r)
			if res.LayerDigest != want {
				t.Errorf("layer %s, want %s", res.LayerDigest, want)
			}
			if lies.Load() == 0 {
				t.Errorf("the registry was never asked where the upload stands")
			}
			if fresh := strings.Contains(string(r.stderr), "starting a fresh upload"); fresh != c.wantFresh {
				t.Errorf("a fresh upload: %v, want %v:\n%s", fresh, c.wantFresh, r.stderr)
			}
		})
	}
}

// lie asks the registry where the upload r names stands and answers with
// that offset moved by delta.
func lie(w http.ResponseWriter, r *http.Request, delta int64, lies *atomic.Int64) bool {
	req := r.Clone(r.Context())
	req.Host = reg.Addr
	req.URL.Scheme, req.URL.Host = "https", reg.Addr
	req.RequestURI = ""
	resp, err := regTransport(reg).RoundTrip(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return true
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	if loc := resp.Header.Get("Location"); loc != "" {
		w.Header().Set("Location", strings.Replace(loc, reg.Addr, r.Host, 1))
	}
	if rg := resp.Header.Get("Range"); resp.StatusCode == http.StatusNoContent && rg != "" {
		_, end, _ := strings.Cut(rg, "-")
		if n, err := strconv.ParseInt(end, 10, 64); err == nil && n > 0 {
			w.Header().Set("Range", fmt.Sprintf("0-%d", max(n+delta, 1)))
			lies.Add(1)
		}
	}
	w.WriteHeader(resp.StatusCode)
	return true
}
