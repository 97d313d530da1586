package importer_test

import (
	"crypto/md5"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/importer"
)

// TestSkipExisting: a re-run with SkipExisting finds the image an earlier
// run made of the same source (by any checksum it recorded, with the same
// settings) and neither reads the source nor uploads.
func TestSkipExisting(t *testing.T) {
	t.Parallel()
	data := diskBytes(t, 1<<20)
	sha := importer.Checksum{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sha256.Sum256(data))}
	md := importer.Checksum{Algorithm: "md5", Hex: fmt.Sprintf("%x", md5.Sum(data))}
	other := importer.Checksum{Algorithm: "md5", Hex: fmt.Sprintf("%x", md5.Sum(nil))}
	reg := newTestRegistry(t)
	src := newTestSource(t, serveBytes(data, `"v1"`))

	var logs strings.Builder
	run := func(sums []importer.Checksum, modify func(*importer.Options)) *importer.Result {
		t.Helper()
		o := baseOptions(reg, src.url)
		o.DiskSHA256 = false
		o.SkipExisting, o.Checksums = true, sums
		logs.Reset()
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		if modify != nil {
			modify(&o)
		}
		res, err := importer.Run(testContext(t), o)
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		return res
	}

	first := run([]importer.Checksum{sha, md}, nil)
	if !strings.Contains(logs.String(), "not skipping: the destination holds no image") {
		t.Errorf("first run: no log line says why it did not skip:\n%s", logs.String())
	}
	if first.Skipped || src.gets.Load() != 1 {
		t.Fatalf("first run: skipped %v after %d GETs; want an import", first.Skipped, src.gets.Load())
	}
	for _, tc := range []struct {
		name   string
		sums   []importer.Checksum
		modify func(*importer.Options)
		skip   bool
		why    string // the log line of a run that does not skip
	}{
		{name: "same sha256", sums: []importer.Checksum{sha}, skip: true},
		{name: "same md5", sums: []importer.Checksum{md}, skip: true},
		{name: "another md5 and the same sha256", sums: []importer.Checksum{other, sha}, skip: true},
		{name: "another platform", sums: []importer.Checksum{sha}, modify: func(o *importer.Options) { o.Platform = "linux/arm64" },
			why: "made with other settings"},
	} {
		gets := src.gets.Load()
		res := run(tc.sums, tc.modify)
		if res.Skipped != tc.skip {
			t.Errorf("%s: Skipped = %v, want %v", tc.name, res.Skipped, tc.skip)
		}
		if tc.skip && res.MBPerSecond != 0 {
			t.Errorf("%s: a skipped import reports %v MB/s", tc.name, res.MBPerSecond)
		}
		if !tc.skip && strings.Count(logs.String(), "not skipping: ") != 1 || !strings.Contains(logs.String(), tc.why) {
			t.Errorf("%s: want one log line saying %q:\n%s", tc.name, tc.why, logs.String())
		}
		if read := src.gets.Load() - gets; tc.skip && read != 0 {
			t.Errorf("%s: skipped after %d GETs of the source, want none", tc.name, read)
		}
		if tc.skip && (res.ManifestDigest != first.ManifestDigest || res.LayerDigest != first.LayerDigest ||
			res.Size != first.Size || res.Source != first.Source || res.SourceSHA256 != "sha256:"+sha.Hex) {
			t.Errorf("%s: result %+v does not describe the first import %+v", tc.name, *res, *first)
		}
	}

	o := baseOptions(reg, src.url)
	o.SkipExisting = true
	if _, err := importer.Run(testContext(t), o); !errors.Is(err, importer.ErrInvalidOptions) {
		t.Errorf("SkipExisting without a checksum: %v, want ErrInvalidOptions", err)
	}
}

// TestRegistryRetryAfter: a 429 with Retry-After on the upload is retried
// no sooner than the registry asked, re-reading the source.
func TestRegistryRetryAfter(t *testing.T) {
	t.Parallel()
	data := diskBytes(t, 1<<20)
	var refused atomic.Bool
	reg := newTestRegistry(t, withMiddleware(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPatch && refused.CompareAndSwap(false, true) {
				w.Header().Set("Retry-After", "2")
				http.Error(w, `{"errors":[{"code":"TOOMANYREQUESTS"}]}`, http.StatusTooManyRequests)
				return
			}
			next.ServeHTTP(w, r)
		})
	}))
	src := newTestSource(t, serveBytes(data, `"v1"`))
	var retries []importer.Retry
	o := baseOptions(reg, src.url)
	o.OnRetry = func(r importer.Retry) { retries = append(retries, r) }
	start := time.Now()
	if _, err := importer.Run(testContext(t), o); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(retries) != 1 || retries[0].Stage != importer.RetryUpload {
		t.Errorf("OnRetry saw %+v, want one upload retry", retries)
	}
	if took := time.Since(start); took < 2*time.Second {
		t.Errorf("took %v: the retry came before the 2 s Retry-After", took)
	}
	if n := src.gets.Load(); n != 2 {
		t.Errorf("%d GETs of the source, want 2 (the upload re-read it)", n)
	}
}
