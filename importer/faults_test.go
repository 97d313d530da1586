package importer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/detect"
	"github.com/diskimporter/diskimporter/importer/reason"
	"github.com/diskimporter/diskimporter/layer"
)

// faultDiskSize is the size of the disk every fault case imports: not a
// multiple of 512 (the tar padding is exercised) nor of the chunk size.
const faultDiskSize = 5<<20 + 1234

// maxStallHold bounds how long a stalling source holds a response: a
// client that does not drop it by its stall timeout gets a short body
// after this long instead of hanging the test.
const maxStallHold = 10 * time.Second

// errInjected is what a faulty writer returns once its fault fired.
var errInjected = errors.New("fault injected")

// faultySource serves data over http with an ETag and Range support
// (http.ServeContent), counting the body bytes it writes, and injects
// faults: drops into chosen GETs, numbered from 1 in arrival order, or
// into the first response that starts at a chosen offset, and a stall at
// one offset of the object, into whichever response reaches it first.
type faultySource struct {
	data []byte
	etag string
	// From GET number changeFrom on (0: never), alt is served with
	// altETag instead: the object changed on the server.
	changeFrom int64
	alt        []byte
	altETag    string
	drops      map[int64]int64 // GET number → body bytes after which the connection is dropped
	dropStarts map[int64]int64 // offset → the same, for the first response that starts there
	stallAt    int64           // >0: the response that reaches this offset stalls there, once

	gets     atomic.Int64
	served   atomic.Int64 // body bytes written to the connection
	injected atomic.Int64
	stalled  atomic.Bool

	mu     sync.Mutex
	held   []time.Duration // how long the stalled response was held until the client dropped it
	starts []int64         // the offset each response started at
}

func (s *faultySource) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := s.gets.Add(1)
	data, etag := s.data, s.etag
	if s.changeFrom > 0 && n >= s.changeFrom {
		data, etag = s.alt, s.altETag
		s.injected.Add(1)
	}
	fw := &faultWriter{ResponseWriter: w, req: r, src: s, limit: -1, start: rangeStart(r, etag)}
	if lim, ok := s.drops[n]; ok {
		fw.limit = lim
	}
	s.mu.Lock()
	if lim, ok := s.dropStarts[fw.start]; ok && !slices.Contains(s.starts, fw.start) {
		fw.limit = lim
	}
	s.starts = append(s.starts, fw.start)
	s.mu.Unlock()
	w.Header().Set("ETag", etag)
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(fw, r, "disk.img", time.Time{}, bytes.NewReader(data))
	if fw.tripped && !fw.stall {
		// Close the connection in the middle of the body: the client
		// sees it end early.
		panic(http.ErrAbortHandler)
	}
}

// rangeStart is the offset the answer to r starts at: the first byte of
// its "bytes=a-b" Range when ServeContent honours it (If-Range matches
// etag), else 0.
func rangeStart(r *http.Request, etag string) int64 {
	spec, ok := strings.CutPrefix(r.Header.Get("Range"), "bytes=")
	if !ok || r.Header.Get("If-Range") != "" && r.Header.Get("If-Range") != etag {
		return 0
	}
	a, _, _ := strings.Cut(spec, "-")
	n, err := strconv.ParseInt(a, 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// faultWriter passes the body through until its fault: after limit bytes
// (none when negative) the response is dropped (the handler aborts); at
// the source's stallAt offset it stalls until the client goes away.
type faultWriter struct {
	http.ResponseWriter
	req     *http.Request
	src     *faultySource
	limit   int64
	start   int64 // the object offset of the first body byte
	written int64
	stall   bool
	tripped bool
}

func (w *faultWriter) Write(p []byte) (int, error) {
	if w.tripped {
		return 0, errInjected
	}
	cut := int64(-1)
	if w.limit >= 0 && w.written+int64(len(p)) >= w.limit {
		cut = w.limit - w.written
	}
	if at, pos := w.src.stallAt, w.start+w.written; at > 0 && pos <= at && at < pos+int64(len(p)) &&
		(cut < 0 || at-pos < cut) && w.src.stalled.CompareAndSwap(false, true) {
		cut, w.stall = at-pos, true
	}
	if cut < 0 {
		n, err := w.ResponseWriter.Write(p)
		w.written += int64(n)
		w.src.served.Add(int64(n))
		return n, err
	}
	n, _ := w.ResponseWriter.Write(p[:cut])
	w.written += int64(n)
	w.src.served.Add(int64(n))
	w.tripped = true
	w.src.injected.Add(1)
	// Everything written so far reaches the client before the fault.
	_ = http.NewResponseController(w.ResponseWriter).Flush()
	if w.stall {
		start := time.Now()
		select {
		case <-w.req.Context().Done(): // the client dropped it
		case <-time.After(maxStallHold):
		}
		w.src.mu.Lock()
		w.src.held = append(w.src.held, time.Since(start))
		w.src.mu.Unlock()
	}
	return n, errInjected
}

// registryFaults wraps the in-memory registry: it counts the upload bytes
// it receives, injects at most one fault of each kind it is set up for,
// and checks on every manifest PUT that reaches the registry that each
// blob it refers to is there, whole.
type registryFaults struct {
	layerSize int64 // the disk layer's size

	patchDrop      int64  // >0: the first layer PATCH is dropped after this many body bytes
	patchStatus    int    // the first layer PATCH is answered with this status, after its body
	retryAfter     string // Retry-After sent with patchStatus
	patchRedirect  bool   // the first layer PATCH is redirected (307) to a new upload session
	manifestStatus int    // the first manifest PUT is answered with this status

	injected        atomic.Int64
	patchFired      atomic.Bool
	manifestFired   atomic.Bool
	layerPatches    atomic.Int64
	layerPatchBytes atomic.Int64 // body bytes of layer PATCHes read by the server
	redirectTo      atomic.Pointer[string]
	followed        atomic.Int64 // PATCHes to the session redirected to
	manifestPuts    atomic.Int64 // manifest PUTs that reached the registry
	blobsChecked    atomic.Int64
	partial         atomic.Int64 // manifest PUTs referring to a missing or short blob

	mu         sync.Mutex
	partialWhy []string
}

// isLayerPatch tells the disk layer's PATCH from the config blob's: the
// layer goes in chunked encoding (its Size is not reported before it was
// read whole), or with its length.
func (f *registryFaults) isLayerPatch(r *http.Request) bool {
	return r.Method == http.MethodPatch && (r.ContentLength < 0 || r.ContentLength == f.layerSize)
}

// middleware is count → inject → check → registry.
func (f *registryFaults) middleware(next http.Handler) http.Handler {
	return f.count(f.inject(f.check(next)))
}

// count counts the body bytes of layer PATCHes that the handlers read.
func (f *registryFaults) count(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !f.isLayerPatch(r) {
			next.ServeHTTP(w, r)
			return
		}
		f.layerPatches.Add(1)
		if to := f.redirectTo.Load(); to != nil && r.URL.Path == *to {
			f.followed.Add(1)
		}
		cb := &countingBody{ReadCloser: r.Body}
		r.Body = cb
		defer func() { f.layerPatchBytes.Add(cb.n.Load()) }()
		next.ServeHTTP(w, r)
	})
}

type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (f *registryFaults) inject(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case f.isLayerPatch(r) && (f.patchDrop > 0 || f.patchStatus != 0 || f.patchRedirect) && f.patchFired.CompareAndSwap(false, true):
			f.injected.Add(1)
			switch {
			case f.patchDrop > 0:
				io.CopyN(io.Discard, r.Body, f.patchDrop)
				conn, _, err := http.NewResponseController(w).Hijack()
				if err != nil {
					panic(http.ErrAbortHandler)
				}
				conn.Close() // unread body left: the client's write fails
				return
			case f.patchStatus != 0:
				io.Copy(io.Discard, r.Body)
				if f.retryAfter != "" {
					w.Header().Set("Retry-After", f.retryAfter)
				}
				http.Error(w, "injected "+http.StatusText(f.patchStatus), f.patchStatus)
				return
			case f.patchRedirect:
				io.Copy(io.Discard, r.Body)
				// Another upload session of the same repository.
				repo, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/v2/"), "/blobs/uploads/")
				rec := httptest.NewRecorder()
				next.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v2/"+repo+"/blobs/uploads/", nil))
				loc := rec.Header().Get("Location")
				if rec.Code != http.StatusAccepted || loc == "" || loc == r.URL.Path {
					http.Error(w, fmt.Sprintf("test: new upload session: %d %q", rec.Code, loc), http.StatusInternalServerError)
					return
				}
				f.redirectTo.Store(&loc)
				w.Header().Set("Location", loc)
				w.WriteHeader(http.StatusTemporaryRedirect)
				return
			}
		case f.manifestStatus != 0 && r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/") &&
			f.manifestFired.CompareAndSwap(false, true):
			f.injected.Add(1)
			io.Copy(io.Discard, r.Body)
			http.Error(w, "injected "+http.StatusText(f.manifestStatus), f.manifestStatus)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// check looks, before the registry stores a manifest (and so moves a
// tag), at every blob the manifest refers to.
func (f *registryFaults) check(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		repo, _, isManifest := strings.Cut(strings.TrimPrefix(r.URL.Path, "/v2/"), "/manifests/")
		if r.Method != http.MethodPut || !isManifest {
			next.ServeHTTP(w, r)
			return
		}
		f.manifestPuts.Add(1)
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		var m v1.Manifest
		if err := json.Unmarshal(body, &m); err != nil {
			f.notePartial(fmt.Sprintf("manifest %q: %v", body, err))
		}
		for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			f.blobsChecked.Add(1)
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, httptest.NewRequest(http.MethodHead, "/v2/"+repo+"/blobs/"+d.Digest.String(), nil))
			if got := rec.Header().Get("Content-Length"); rec.Code != http.StatusOK || got != strconv.FormatInt(d.Size, 10) {
				f.notePartial(fmt.Sprintf("blob %s of %d bytes: HEAD %d, Content-Length %q", d.Digest, d.Size, rec.Code, got))
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (f *registryFaults) notePartial(why string) {
	f.partial.Add(1)
	f.mu.Lock()
	f.partialWhy = append(f.partialWhy, why)
	f.mu.Unlock()
}

// importLog is a slog.Handler that records what the import logs about
// retries: where source reads resumed, and how often the upload re-read
// the disk.
type importLog struct {
	mu      sync.Mutex
	offsets []int64
	reopens int
}

func (l *importLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *importLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *importLog) WithGroup(string) slog.Handler            { return l }

func (l *importLog) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch r.Message {
	case "source read failed; resuming":
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "offset" {
				l.offsets = append(l.offsets, a.Value.Int64())
			}
			return true
		})
	case "reading the disk again for an upload retry":
		l.reopens++
	}
	return nil
}

// resumes returns the offsets source reads resumed from, sorted.
func (l *importLog) resumes() []int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := slices.Clone(l.offsets)
	slices.Sort(out)
	return out
}

// uploadRetries is how many times the upload read the disk again from
// its first byte.
func (l *importLog) uploadRetries() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.reopens
}

// faultRow is one line of the table TestFaults prints.
type faultRow struct {
	fault, injected, outcome, sourceResent, registryResent, partialTag, took string
}

// TestFaults injects faults into the source and the registry of an import
// and checks that each is survived (the image pulled back is the disk,
// byte for byte) or fails cleanly (the right reason, no tag), counting the
// bytes sent again. No tag ever points at a manifest whose blobs are not
// all there: every manifest PUT that reaches the registry is checked.
func TestFaults(t *testing.T) {
	t.Parallel()
	data := diskBytes(t, faultDiskSize)
	alt := bytes.Clone(data)
	alt[len(alt)-1] ^= 0xff
	layerSize, err := layer.TarSize("disk.img", faultDiskSize)
	if err != nil {
		t.Fatal(err)
	}
	const piece = 256 << 10
	pieces := int64((faultDiskSize + piece - 1) / piece)
	// The drop point of the one-stream case: past fetch's 1 MiB reset of
	// the failures-in-a-row count, not on a buffer boundary.
	const streamDrop = 1<<20 + 4099

	type testCase struct {
		name string
		src  *faultySource
		// handler, when set, serves the source instead of src.
		handler http.HandlerFunc
		reg     *registryFaults // nil: no registry fault
		opts    func(*importer.Options)
		// wantInjected counts source and registry faults fired; -1: at
		// least one.
		wantInjected int64
		wantErr      error
		wantReason   reason.Reason
		// wantGets is how many GETs the source must get; 0: not checked.
		wantGets int64
		// exactSource: every byte of the source crosses the wire once.
		exactSource bool
		// stall: the source stalls at src.stallAt; see checkStall.
		stall bool
		// wantLayerPatchBytes is what the registry must have read of
		// layer PATCHes; 0: not checked.
		wantLayerPatchBytes int64
		// scratch: the case spools; check the scratch directory is left empty.
		scratch bool
		// check runs extra checks.
		check func(t *testing.T, src *faultySource, rf *registryFaults, logs *importLog)
	}
	fastSource := func(conns int, chunk int64, stall time.Duration) func(*importer.Options) {
		return func(o *importer.Options) {
			o.Connections, o.ChunkSize, o.Retries = conns, chunk, 3
			if stall > 0 {
				// A few more: a stall timer this short may also fire
				// on a busy machine (see checkStall).
				o.StallTimeout, o.Retries = stall, 5
			}
		}
	}
	fastUpload := func(o *importer.Options) { o.Retries = 2 }
	cases := []testCase{
		{
			name: "source drops the connection ×3, one stream",
			src: &faultySource{data: data, etag: `"f1"`,
				drops: map[int64]int64{1: streamDrop, 2: streamDrop, 3: streamDrop}},
			opts:         fastSource(1, 0, 0),
			wantInjected: 3, wantGets: 4, exactSource: true, wantLayerPatchBytes: layerSize,
			check: func(t *testing.T, _ *faultySource, _ *registryFaults, logs *importLog) {
				want := []int64{streamDrop, 2 * streamDrop, 3 * streamDrop}
				if got := logs.resumes(); !slices.Equal(got, want) {
					t.Errorf("source reads resumed at offsets %v, want the drop points %v", got, want)
				}
			},
		},
		{
			name: "source drops the connection ×3, 4 connections × 256 KiB",
			src: &faultySource{data: data, etag: `"f1"`,
				dropStarts: map[int64]int64{0: 100000, 3 * piece: 100000, 6 * piece: 100000}},
			opts:         fastSource(4, piece, 0),
			wantInjected: 3, wantGets: pieces + 3, exactSource: true, wantLayerPatchBytes: layerSize,
			check: func(t *testing.T, _ *faultySource, _ *registryFaults, logs *importLog) {
				// Each piece resumes from the 100000 bytes it had.
				want := []int64{100000, 3*piece + 100000, 6*piece + 100000}
				got := logs.resumes()
				slices.Sort(got)
				if !slices.Equal(got, want) {
					t.Errorf("source reads resumed at offsets %v, want %v", got, want)
				}
			},
		},
		{
			name:         "source stalls, one stream, 300ms stall timeout",
			src:          &faultySource{data: data, etag: `"f1"`, stallAt: 2<<20 + 77},
			opts:         fastSource(1, 0, 300*time.Millisecond),
			wantInjected: 1, wantGets: 2, stall: true, wantLayerPatchBytes: layerSize,
		},
		{
			name:         "source stalls, 4 connections × 256 KiB, 300ms stall timeout",
			src:          &faultySource{data: data, etag: `"f1"`, stallAt: 3*piece + 50000},
			opts:         fastSource(4, piece, 300*time.Millisecond),
			wantInjected: 1, wantGets: pieces + 1, stall: true, wantLayerPatchBytes: layerSize,
		},
		{
			name: "source ETag changes between pieces",
			src: &faultySource{data: data, etag: `"f1"`,
				changeFrom: 3, alt: alt, altETag: `"f2"`},
			opts:         fastSource(4, piece, 0),
			wantInjected: -1, wantErr: importer.ErrSourceChanged, wantReason: "SourceChanged",
			check: func(t *testing.T, src *faultySource, _ *registryFaults, _ *importLog) {
				// Each answer is final: no GET beyond the pieces
				// already started.
				if got := src.gets.Load(); got > 3+4 {
					t.Errorf("source got %d GETs, want the import to stop at the first changed answer", got)
				}
			},
		},
		{
			name:         "registry drops the layer PATCH mid-body",
			src:          &faultySource{data: data, etag: `"f1"`},
			reg:          &registryFaults{patchDrop: layerSize / 2},
			opts:         fastUpload,
			wantInjected: 1, wantLayerPatchBytes: layerSize + layerSize/2,
		},
		{
			name:         "registry answers the layer PATCH 500 once",
			src:          &faultySource{data: data, etag: `"f1"`},
			reg:          &registryFaults{patchStatus: http.StatusInternalServerError},
			opts:         fastUpload,
			wantInjected: 1, wantLayerPatchBytes: 2 * layerSize,
		},
		{
			name:         "registry answers the layer PATCH 429 Retry-After: 1 once",
			src:          &faultySource{data: data, etag: `"f1"`},
			reg:          &registryFaults{patchStatus: http.StatusTooManyRequests, retryAfter: "1"},
			opts:         fastUpload,
			wantInjected: 1, wantLayerPatchBytes: 2 * layerSize,
		},
		{
			name:         "registry redirects the layer PATCH (307) to another upload session",
			src:          &faultySource{data: data, etag: `"f1"`},
			reg:          &registryFaults{patchRedirect: true},
			opts:         fastUpload,
			wantInjected: 1, wantLayerPatchBytes: 2 * layerSize,
			check: func(t *testing.T, _ *faultySource, rf *registryFaults, _ *importLog) {
				if rf.redirectTo.Load() == nil || rf.followed.Load() != 1 {
					t.Errorf("%d layer PATCHes went to the session redirected to, want 1", rf.followed.Load())
				}
			},
		},
		{
			name:         "registry answers the manifest PUT 500 once",
			src:          &faultySource{data: data, etag: `"f1"`},
			reg:          &registryFaults{manifestStatus: http.StatusInternalServerError},
			opts:         fastUpload,
			wantInjected: 1, wantLayerPatchBytes: layerSize, exactSource: true,
			check: func(t *testing.T, _ *faultySource, rf *registryFaults, _ *importLog) {
				if got := rf.manifestPuts.Load(); got != 1 {
					t.Errorf("%d manifest PUTs reached the registry, want 1 (the retry)", got)
				}
			},
		},
		{
			// ENOSPC while the spool is written cannot be injected from
			// outside the package: this is the free-space check that
			// runs before it, end to end.
			name:         "scratch volume smaller than the source (spool pre-check)",
			handler:      hugeGzip(compressed(t, detect.Gzip, data, false)),
			wantInjected: 1, wantErr: importer.ErrScratchSpace, wantReason: "ScratchSpace",
			scratch: true,
		},
	}

	var (
		mu   sync.Mutex
		rows = map[string]faultRow{}
	)
	t.Run("cases", func(t *testing.T) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				rf := tc.reg
				if rf == nil {
					rf = &registryFaults{}
				}
				rf.layerSize = layerSize
				reg := newTestRegistry(t, withMiddleware(rf.middleware))
				fs := tc.src
				handler := tc.handler
				if handler == nil {
					handler = fs.ServeHTTP
				} else {
					fs = &faultySource{}
				}
				src := newTestSource(t, handler)
				o := baseOptions(reg, src.url)
				logs := &importLog{}
				o.Logger = slog.New(logs)
				scratch := t.TempDir()
				o.ScratchDir = scratch
				if tc.opts != nil {
					tc.opts(&o)
				}

				start := time.Now()
				res, err := importer.Run(testContext(t), o)
				took := time.Since(start)

				row := faultRow{fault: tc.name, partialTag: "no", took: took.Round(10 * time.Millisecond).String()}
				defer func() { // also after a t.Fatal
					if t.Failed() {
						row.outcome = "TEST FAILED: " + row.outcome
					}
					mu.Lock()
					rows[tc.name] = row
					mu.Unlock()
				}()
				injected := fs.injected.Load() + rf.injected.Load()
				if tc.handler != nil {
					injected = 1 // its one fault: the Content-Length it claims
				}
				row.injected = strconv.FormatInt(injected, 10)
				switch {
				case tc.wantInjected < 0 && injected == 0:
					t.Errorf("no fault was injected")
				case tc.wantInjected >= 0 && injected != tc.wantInjected:
					t.Errorf("%d faults injected, want %d", injected, tc.wantInjected)
				}

				served := fs.served.Load()
				if tc.wantErr == nil {
					if err != nil {
						t.Fatalf("Run: %v (reason %s)", err, reason.Of(err))
					}
					row.outcome = "ok, image identical"
					if n := logs.uploadRetries(); n > 0 {
						row.outcome += fmt.Sprintf(", %d upload retry re-read the source", n)
					}
					row.sourceResent = fmt.Sprintf("%d (%d served)", served-faultDiskSize, served)
					row.registryResent = fmt.Sprintf("%d (%d received)", rf.layerPatchBytes.Load()-layerSize, rf.layerPatchBytes.Load())
					checkImport(t, reg, res, data, checkWant{
						source: src.url, format: "raw", diskPath: "disk/disk.img", os: "linux", arch: "amd64",
						auth: authn.Anonymous,
					})
					if tc.exactSource && served != faultDiskSize {
						t.Errorf("source served %d body bytes for a %d-byte disk: %d sent again, want 0 (resumed from where it stopped)",
							served, faultDiskSize, served-faultDiskSize)
					}
					if tc.stall {
						if note := checkStall(t, fs, logs, o.ChunkSize, tc.wantGets); note != "" {
							row.outcome += " (" + note + ")"
						}
					}
					if rf.manifestPuts.Load() == 0 || rf.blobsChecked.Load() < 2 {
						t.Errorf("%d manifest PUTs and %d blobs checked, want the final manifest checked",
							rf.manifestPuts.Load(), rf.blobsChecked.Load())
					}
				} else {
					if err == nil {
						t.Fatalf("Run succeeded with %+v, want %v", *res, tc.wantErr)
					}
					if !errors.Is(err, tc.wantErr) {
						t.Errorf("Run error %q is not %q", err, tc.wantErr)
					}
					if got := reason.Of(err); got != tc.wantReason {
						t.Errorf("Reason(%q) = %q, want %q", err, got, tc.wantReason)
					}
					t.Logf("error: %v", err)
					row.outcome = "failed: " + string(reason.Of(err)) + ", no tag"
					row.sourceResent = fmt.Sprintf("n/a (%d served)", served)
					row.registryResent = fmt.Sprintf("n/a (%d received, not committed)", rf.layerPatchBytes.Load())
					reg.assertNoTag(t)
					if rf.manifestPuts.Load() != 0 {
						t.Errorf("%d manifest PUTs reached the registry in a failed import", rf.manifestPuts.Load())
					}
				}
				if got := fs.gets.Load(); tc.wantGets != 0 && !tc.stall && got != tc.wantGets {
					t.Errorf("source got %d GETs, want %d", fs.gets.Load(), tc.wantGets)
				}
				if tc.wantLayerPatchBytes != 0 && rf.layerPatchBytes.Load() != tc.wantLayerPatchBytes {
					t.Errorf("registry read %d bytes of layer PATCHes, want %d", rf.layerPatchBytes.Load(), tc.wantLayerPatchBytes)
				}
				t.Logf("source: %d GETs, %d body bytes served, reads resumed at offsets %v; upload retries %d; registry: %d layer PATCHes, %d bytes read, %d manifest PUTs checked",
					fs.gets.Load(), served, logs.resumes(), logs.uploadRetries(), rf.layerPatches.Load(), rf.layerPatchBytes.Load(), rf.manifestPuts.Load())
				if n := rf.partial.Load(); n != 0 {
					rf.mu.Lock()
					t.Errorf("%d manifest PUTs referred to a missing or partial blob: %v", n, rf.partialWhy)
					rf.mu.Unlock()
					row.partialTag = fmt.Sprintf("YES (%d)", n)
				}
				if tc.scratch {
					assertEmptyDir(t, scratch)
					row.outcome += ", spool removed"
				}
				if tc.check != nil {
					tc.check(t, fs, rf, logs)
				}
				reg.assertNoPlainHTTP(t)
			})
		}
	})

	table := []faultRow{{"fault", "injected", "outcome", "source bytes re-sent", "registry bytes re-sent", "partial tag", "took"}}
	for _, tc := range cases {
		if r, ok := rows[tc.name]; ok {
			table = append(table, r)
		}
	}
	table = append(table,
		faultRow{"importer SIGKILLed mid-upload, rerun", "-", "see e2e TestKilledMidUpload", "-", "-", "-", "-"},
		faultRow{"ENOSPC while writing the spool", "-", "not injected: no hook in spool.go (see TestWriteSpool for the pre-check)", "-", "-", "-", "-"},
	)
	var b strings.Builder
	fmt.Fprintf(&b, "disk %d bytes, layer %d bytes\n", faultDiskSize, layerSize)
	for _, r := range table {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", r.fault, r.injected, r.outcome, r.sourceResent, r.registryResent, r.partialTag, r.took)
	}
	t.Logf("fault table:\n%s", b.String())
}

// checkStall checks a case whose source stalled once at fs.stallAt, read
// in pieces of chunk bytes (0: one stream), wantGets GETs when the stall
// was the only one. The stall must have been dropped by the stall timeout
// and the read resumed from where the client had stopped reading, never
// from byte 0. Normally that is the stall point, and nothing is sent
// twice. On a busy machine the 300 ms timer may also fire on a response
// that did not stall (the server or the reader did not get the CPU for
// that long; in one stream also while the import is busy elsewhere, as
// the timer counts from the reader's last Read), and the bytes the client
// had received but not yet read are then read again: that is reported in
// the returned note rather than failed.
func checkStall(t *testing.T, fs *faultySource, logs *importLog, chunk, wantGets int64) (note string) {
	t.Helper()
	fs.mu.Lock()
	held, starts := slices.Clone(fs.held), slices.Clone(fs.starts)
	fs.mu.Unlock()
	if len(held) != 1 {
		t.Fatalf("%d stalled responses, want 1", len(held))
	}
	// 300 ms stall timeout; under -race on a busy machine the close
	// may come later, but never near maxStallHold.
	if held[0] > 5*time.Second {
		t.Errorf("the stalled response was held %v before the client dropped it, want about the 300ms stall timeout", held[0])
	}
	resumes := logs.resumes()
	if len(resumes) == 0 {
		t.Fatal("the source read was never resumed")
	}
	for _, off := range resumes {
		if off <= 0 || off > faultDiskSize {
			t.Errorf("source read resumed at offset %d, want in (0, %d]", off, faultDiskSize)
		}
	}
	if resumes[0] > fs.stallAt {
		t.Errorf("the first resume is at offset %d, past the stall at %d", resumes[0], fs.stallAt)
	}
	// Every request but those of new pieces resumes from an offset the
	// reader logged.
	for _, st := range starts {
		newPiece := st == 0 || chunk > 0 && st%chunk == 0
		if !newPiece && !slices.Contains(resumes, st) {
			t.Errorf("a request started at offset %d, where no read was resumed (resumes %v)", st, resumes)
		}
	}
	resent := fs.served.Load() - faultDiskSize
	if slices.Equal(resumes, []int64{fs.stallAt}) {
		if resent != 0 {
			t.Errorf("resumed at the stall point, but %d bytes were sent again", resent)
		}
		if got := fs.gets.Load(); got != wantGets {
			t.Errorf("source got %d GETs, want %d", got, wantGets)
		}
		return ""
	}
	if resent >= faultDiskSize {
		t.Errorf("%d bytes sent again, the whole disk or more", resent)
	}
	t.Logf("the stall timer fired %d times for one injected stall at %d (resumed at %v): %d bytes sent again", len(resumes), fs.stallAt, resumes, resent)
	return fmt.Sprintf("stall timer fired %d× on a busy machine, resumed at %v", len(resumes), resumes)
}

// hugeGzip serves gz announcing a Content-Length of 1 EiB, more than any
// scratch volume has free, and closes the connection after gz.
func hugeGzip(gz []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/gzip")
		w.Header().Set("Content-Length", strconv.FormatInt(1<<60, 10))
		w.Write(gz)
	}
}
