package fetch_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/importer/fetch"
)

// server serves data with Range support (http.ServeContent) and injects
// the faults its fields ask for. It counts requests and body bytes sent.
type server struct {
	data []byte
	etag string
	faults

	requests atomic.Int32
	sent     atomic.Int64
	inFlight atomic.Int32
	maxIn    atomic.Int32
	drops    atomic.Int32
	stalled  atomic.Bool
	// badRangeSent: the one bad Content-Range was answered.
	badRangeSent atomic.Bool
	mu           sync.Mutex
	ranges       []string
	inAtStart    []int32 // requests in flight as each started, itself included
}

// faults are what a server does wrong.
type faults struct {
	// dropAfter, when > 0, makes the first dropCount responses (0: all)
	// end after that many body bytes by dropping the connection.
	dropAfter int
	dropCount int32
	// stallAt, when > 0, makes the first response that reaches that
	// many body bytes stop sending until the request ends.
	stallAt int
	// failFirst answers the first failFirst requests with status
	// failStatus and Retry-After: 1.
	failFirst  int32
	failStatus int
	// badRangeOnce answers one Range request with a shifted
	// Content-Range.
	badRangeOnce bool
	// ignoreRange answers every request with the whole object.
	ignoreRange bool
	// changeAfter, when > 0, changes the ETag (and the bytes) after that
	// many requests.
	changeAfter int32
	// pace, when > 0, holds each response to that many bytes a second.
	pace int
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := s.requests.Add(1)
	in := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for m := s.maxIn.Load(); in > m && !s.maxIn.CompareAndSwap(m, in); m = s.maxIn.Load() {
	}
	s.mu.Lock()
	s.ranges = append(s.ranges, r.Header.Get("Range"))
	s.inAtStart = append(s.inAtStart, in)
	s.mu.Unlock()
	if n <= s.failFirst {
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(s.failStatus)
		return
	}
	etag, data := s.etag, s.data
	if s.changeAfter > 0 && n > s.changeAfter {
		etag, data = `"changed"`, bytes.Repeat([]byte{'x'}, len(s.data))
	}
	if s.ignoreRange {
		r.Header.Del("Range")
	}
	if s.badRangeOnce && r.Header.Get("Range") != "" && n > 1 && s.badRangeSent.CompareAndSwap(false, true) {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes 1-2/%d", len(data)))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(data[1:3])
		return
	}
	if etag != "" {
		w.Header().Set("ETag", etag)
	}
	http.ServeContent(&faultyWriter{ResponseWriter: w, s: s, r: r}, r, "", time.Time{}, bytes.NewReader(data))
}

// faultyWriter counts body bytes and drops or stalls the response.
type faultyWriter struct {
	http.ResponseWriter
	s       *server
	r       *http.Request
	written int
	start   time.Time
}

func (f *faultyWriter) Write(p []byte) (int, error) {
	if f.s.pace > 0 {
		return f.paced(p)
	}
	s := f.s
	if s.dropAfter > 0 && f.written+len(p) > s.dropAfter && (s.dropCount == 0 || s.drops.Load() < s.dropCount) {
		s.drops.Add(1)
		n, _ := f.ResponseWriter.Write(p[:s.dropAfter-f.written])
		s.sent.Add(int64(n))
		f.ResponseWriter.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // drops the connection
	}
	if s.stallAt > 0 && f.written+len(p) > s.stallAt && s.stalled.CompareAndSwap(false, true) {
		n, _ := f.ResponseWriter.Write(p[:s.stallAt-f.written])
		s.sent.Add(int64(n))
		f.ResponseWriter.(http.Flusher).Flush()
		<-f.r.Context().Done()
		panic(http.ErrAbortHandler)
	}
	s.sent.Add(int64(len(p))) // before the client can see them
	n, err := f.ResponseWriter.Write(p)
	f.written += n
	return n, err
}

// paced writes p in steps of 16 KiB, each no sooner than the pace allows.
func (f *faultyWriter) paced(p []byte) (int, error) {
	if f.start.IsZero() {
		f.start = time.Now()
	}
	written := 0
	for len(p) > 0 {
		time.Sleep(time.Until(f.start.Add(time.Duration(f.written) * time.Second / time.Duration(f.s.pace))))
		n, err := f.ResponseWriter.Write(p[:min(len(p), 16<<10)])
		f.ResponseWriter.(http.Flusher).Flush()
		f.s.sent.Add(int64(n))
		f.written, written, p = f.written+n, written+n, p[n:]
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(n), 1))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func client() *http.Client {
	return &http.Client{
		Transport:     &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 16},
		CheckRedirect: fetch.CheckRedirect,
	}
}

const chunk = 64 << 10

// readAll opens url and reads the object through NewReader.
func readAll(t *testing.T, url string, header http.Header, opts fetch.Options) ([]byte, *fetch.Object, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	obj, resp, err := fetch.Open(ctx, client(), url, "the object", header, opts)
	if err != nil {
		return nil, nil, err
	}
	r := obj.NewReader(ctx, resp)
	defer r.Close()
	got, err := io.ReadAll(r)
	return got, obj, err
}

func TestNewReader(t *testing.T) {
	t.Parallel()
	for _, size := range []int{1, chunk - 1, chunk, chunk + 1, 5*chunk + 3} {
		for _, conns := range []int{1, 2, 4, 8} {
			t.Run(fmt.Sprintf("%d bytes, %d connections", size, conns), func(t *testing.T) {
				t.Parallel()
				s := &server{data: randomBytes(size), etag: `"v1"`}
				ts := httptest.NewServer(s)
				defer ts.Close()
				got, obj, err := readAll(t, ts.URL, nil, fetch.Options{Connections: conns, ChunkSize: chunk})
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, s.data) {
					t.Fatalf("read %d bytes, not the %d served", len(got), size)
				}
				if obj.Size() != int64(size) {
					t.Errorf("Size() = %d, want %d", obj.Size(), size)
				}
				pieces := int32(1)
				if conns > 1 {
					pieces = int32((size + chunk - 1) / chunk)
				}
				if n := s.requests.Load(); n != pieces {
					t.Errorf("%d requests, want %d: %q", n, pieces, s.ranges)
				}
				if s.sent.Load() != int64(size) {
					t.Errorf("server sent %d bytes for %d", s.sent.Load(), size)
				}
				if m := s.maxIn.Load(); m > int32(conns) {
					t.Errorf("%d requests at once, more than %d connections", m, conns)
				}
			})
		}
	}
}

// TestFaults: each fault is survived (bytes identical, resumed from where
// it stopped rather than from zero) or ends the read with a clear error.
func TestFaults(t *testing.T) {
	t.Parallel()
	const size = 6*chunk + 100
	for _, tc := range []struct {
		name    string
		faults  faults
		conns   int
		retries int
		wantErr error  // nil: the read succeeds
		errText string // in the error
		// maxExtra is how many bytes beyond size the server may send.
		maxExtra int64
	}{
		{name: "stream drops 3 times", faults: faults{dropAfter: 100_000, dropCount: 3}, conns: 1, retries: 3, maxExtra: 0},
		{name: "pieces drop 7 times", faults: faults{dropAfter: 10_000, dropCount: 7}, conns: 4, retries: 7},
		{name: "stream stalls", faults: faults{stallAt: 2 * chunk}, conns: 1, retries: 1},
		{name: "piece stalls", faults: faults{stallAt: chunk / 2}, conns: 4, retries: 1},
		{name: "503 with Retry-After", faults: faults{failFirst: 2, failStatus: 503}, conns: 1, retries: 3},
		{name: "429 on pieces", faults: faults{failFirst: 3, failStatus: 429}, conns: 4, retries: 3},
		{name: "wrong Content-Range once", faults: faults{badRangeOnce: true}, conns: 4, retries: 1},
		{name: "Range ignored: one stream", faults: faults{ignoreRange: true}, conns: 4, retries: 1},
		{name: "drops more often than retries", faults: faults{dropAfter: 1000}, conns: 1, retries: 2,
			wantErr: io.ErrUnexpectedEOF, maxExtra: -1},
		{name: "ETag changes between pieces", faults: faults{changeAfter: 2}, conns: 4, retries: 3,
			wantErr: fetch.ErrChanged, errText: `now ETag "changed"`, maxExtra: -1},
		{name: "ETag changes on a resume", faults: faults{dropAfter: 50_000, dropCount: 1, changeAfter: 1}, conns: 1, retries: 3,
			wantErr: fetch.ErrChanged, maxExtra: -1},
		{name: "404", faults: faults{failFirst: 100, failStatus: 404}, conns: 4, retries: 3,
			wantErr: &fetch.StatusError{}, errText: "404", maxExtra: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := &server{data: randomBytes(size), etag: `"v1"`, faults: tc.faults}
			ts := httptest.NewServer(s)
			defer ts.Close()
			var retries atomic.Int32
			opts := fetch.Options{Connections: tc.conns, ChunkSize: chunk, Retries: tc.retries,
				StallTimeout: 200 * time.Millisecond, RetryWait: time.Millisecond,
				OnRetry: func(int64, error) { retries.Add(1) }}
			start := time.Now()
			got, _, err := readAll(t, ts.URL, nil, opts)
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("read failed: %v", err)
			case tc.wantErr == nil && !bytes.Equal(got, s.data):
				t.Fatalf("read %d bytes that differ from the %d served", len(got), size)
			case tc.wantErr != nil && err == nil:
				t.Fatalf("read succeeded, want an error wrapping %v", tc.wantErr)
			case tc.wantErr != nil && !errorsAs(err, tc.wantErr):
				t.Fatalf("error %q does not wrap %T %v", err, tc.wantErr, tc.wantErr)
			case tc.errText != "" && !strings.Contains(err.Error(), tc.errText):
				t.Errorf("error %q does not say %q", err, tc.errText)
			}
			if tc.maxExtra >= 0 && s.sent.Load() > size+tc.maxExtra {
				t.Errorf("server sent %d bytes for %d: a resume started over", s.sent.Load(), size)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("took %v", took)
			}
			t.Logf("%d requests, %d retries, %d bytes sent for %d", s.requests.Load(), retries.Load(), s.sent.Load(), size)
		})
	}
}

func errorsAs(err, target error) bool {
	if se, ok := target.(*fetch.StatusError); ok {
		return errors.As(err, &se)
	}
	return errors.Is(err, target)
}

// TestBoundedMemory: while the head piece stalls, no more than Connections
// pieces are started, however far the others could run ahead.
func TestBoundedMemory(t *testing.T) {
	t.Parallel()
	s := &server{data: randomBytes(40 * chunk), etag: `"v1"`}
	release := make(chan struct{})
	var started atomic.Int32
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started.Add(1)
		if strings.HasPrefix(r.Header.Get("Range"), "bytes=0-") && started.Load() > 1 {
			<-release // the head piece, retried after the stall
		}
		s.ServeHTTP(w, r)
	}))
	defer ts.Close()
	s.stallAt = 1000 // the probe (piece 0) stalls after 1000 bytes
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	obj, resp, err := fetch.Open(ctx, client(), ts.URL, "the object", nil, fetch.Options{Connections: 4, ChunkSize: chunk, Retries: 2,
		StallTimeout: 100 * time.Millisecond, RetryWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r := obj.NewReader(ctx, resp)
	defer r.Close()
	head := make([]byte, 1000)
	if _, err := io.ReadFull(r, head); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the others run as far as they may
	// Piece 0 (stalled, then its retry held), and pieces 1-3.
	if n := started.Load(); n > 5 {
		t.Errorf("%d requests started while the head piece stalled; want at most 4 pieces and one retry", n)
	}
	close(release)
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(append(head, rest...), s.data) {
		t.Fatal("bytes differ")
	}
}

// TestTuneAddsConnections: against a store that paces each connection,
// the reader soon has every piece it may in flight, and says so.
func TestTuneAddsConnections(t *testing.T) {
	t.Parallel()
	s := &server{data: randomBytes(24 << 20), etag: `"v1"`, faults: faults{pace: 4 << 20}}
	ts := httptest.NewServer(s)
	defer ts.Close()
	var mu sync.Mutex
	var kept []int
	got, _, err := readAll(t, ts.URL, nil, fetch.Options{Connections: 8, ChunkSize: 256 << 10, OnLevel: func(n int) {
		mu.Lock()
		kept = append(kept, n)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(kept) == 0 || kept[len(kept)-1] != 8 {
		t.Errorf("levels kept %v; want 8 last", kept)
	}
	mu.Unlock()
	if !bytes.Equal(got, s.data) {
		t.Fatal("bytes differ")
	}
	// 96 pieces, the first two at a time for some 300 ms (about 10),
	// eight at a time on probation for as long (about 40), and then for
	// good: pieces 60 to 80 start beside seven others.
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := slices.Max(s.inAtStart[60:80]); n < 8 {
		t.Errorf("pieces 60 to 80 started with at most %d requests in flight (%v); want 8, each connection paced", n, s.inAtStart)
	}
}

// TestTuneSlowConsumer: a consumer slower than the source keeps the
// reader at two pieces in flight: more would only take memory and CPU.
func TestTuneSlowConsumer(t *testing.T) {
	t.Parallel()
	s := &server{data: randomBytes(8 << 20), etag: `"v1"`}
	ts := httptest.NewServer(s)
	defer ts.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	obj, resp, err := fetch.Open(ctx, client(), ts.URL, "the object", nil, fetch.Options{Connections: 8, ChunkSize: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	r := obj.NewReader(ctx, resp)
	defer r.Close()
	var got bytes.Buffer
	tick := time.NewTicker(5 * time.Millisecond) // a piece each: 50 MiB/s
	defer tick.Stop()
	most := 0
	for {
		<-tick.C
		// Pieces asked for, beyond those read.
		most = max(most, int(s.requests.Load())-got.Len()/(256<<10))
		n, err := got.ReadFrom(io.LimitReader(r, 256<<10))
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	if !bytes.Equal(got.Bytes(), s.data) {
		t.Fatal("bytes differ")
	}
	if most > 2 {
		t.Errorf("%d pieces asked for ahead of the consumer; want at most 2 for one that never waits", most)
	}
}

// TestRedirect: pieces go straight to where the first GET was redirected,
// never with the origin's Authorization; an expired target (403) is
// resolved again through the origin.
func TestRedirect(t *testing.T) {
	t.Parallel()
	store := &server{data: randomBytes(10*chunk + 7), etag: `"v1"`}
	var expired atomic.Bool
	var storeAuth atomic.Int32
	storeTS := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			storeAuth.Add(1)
		}
		if r.URL.Query().Get("sig") == "old" && expired.Load() {
			http.Error(w, "expired", http.StatusForbidden)
			return
		}
		store.ServeHTTP(w, r)
	}))
	defer storeTS.Close()
	var originGets atomic.Int32
	sig := atomic.Value{}
	sig.Store("old")
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		originGets.Add(1)
		if r.Header.Get("Authorization") != "Bearer secret" {
			http.Error(w, "no auth", http.StatusUnauthorized)
			return
		}
		http.Redirect(w, r, storeTS.URL+"/blob?sig="+sig.Load().(string), http.StatusTemporaryRedirect)
	}))
	defer origin.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	header := http.Header{"Authorization": {"Bearer secret"}}
	// Two connections: the first GET is a probe of one chunk, the rest
	// is read in pieces two at a time.
	obj, resp, err := fetch.Open(ctx, client(), origin.URL+"/v2/r/blobs/sha256:x", "the blob", header,
		fetch.Options{Connections: 2, ChunkSize: chunk, Retries: 1, RetryWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if !obj.Redirected() {
		t.Error("Redirected() = false after a 307")
	}
	r := obj.NewReader(ctx, resp)
	defer r.Close()
	// Read the probe, then expire the signature: the rest is resolved
	// again through the origin.
	head := make([]byte, chunk)
	if _, err := io.ReadFull(r, head); err != nil {
		t.Fatal(err)
	}
	expired.Store(true)
	sig.Store("new")
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(append(head, rest...), store.data) {
		t.Fatal("bytes differ")
	}
	if n := storeAuth.Load(); n != 0 {
		t.Errorf("the store got Authorization %d times", n)
	}
	// The first GET, then once after the expiry for each piece that was
	// in flight then.
	if n := originGets.Load(); n < 2 || n > 3 {
		t.Errorf("origin asked %d times, want 2 or 3", n)
	}

	// A parallel read after that goes to the new target, and ReaderAt too.
	originBefore := originGets.Load()
	r2 := obj.NewReader(ctx, nil)
	all, err := io.ReadAll(r2)
	r2.Close()
	if err != nil || !bytes.Equal(all, store.data) {
		t.Fatalf("second read: %d bytes, %v", len(all), err)
	}
	tail := make([]byte, 100)
	if _, err := obj.ReaderAt(ctx).ReadAt(tail, obj.Size()-100); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if !bytes.Equal(tail, store.data[len(store.data)-100:]) {
		t.Error("ReadAt bytes differ")
	}
	if n := originGets.Load() - originBefore; n != 0 {
		t.Errorf("origin asked %d more times; the target should be cached", n)
	}
}

func TestCheckRedirect(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		from, to string
		keep     bool
		refuse   bool
	}{
		{"https://reg.example/v2/x", "https://reg.example/other", true, false},
		{"https://reg.example/v2/x", "https://reg.example:443/other", true, false},
		{"https://reg.example/v2/x", "https://s3.reg.example/blob", false, false},
		{"https://reg.example/v2/x", "https://reg.example:8443/blob", false, false},
		{"http://reg.example/v2/x", "https://reg.example/blob", false, false},
		{"https://reg.example/v2/x", "http://reg.example/blob", false, true},
	} {
		from, _ := http.NewRequest(http.MethodGet, tc.from, nil)
		to, _ := http.NewRequest(http.MethodGet, tc.to, nil)
		to.Header.Set("Authorization", "Bearer secret")
		err := fetch.CheckRedirect(to, []*http.Request{from})
		if refused := err != nil; refused != tc.refuse {
			t.Errorf("%s -> %s: error %v, want refused %v", tc.from, tc.to, err, tc.refuse)
		}
		if kept := to.Header.Get("Authorization") != ""; !tc.refuse && kept != tc.keep {
			t.Errorf("%s -> %s: Authorization kept %v, want %v", tc.from, tc.to, kept, tc.keep)
		}
	}
}

// TestNoLength: an object served without a length (chunked) is read as one
// stream, and reading on after its end keeps giving io.EOF.
func TestNoLength(t *testing.T) {
	t.Parallel()
	data := randomBytes(300_000)
	var requests atomic.Int32
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Write(data[:1000])
		http.NewResponseController(w).Flush() // no Content-Length
		w.Write(data[1000:])
	}))
	defer ts.Close()
	for _, conns := range []int{1, 4} {
		got, obj, err := readAll(t, ts.URL, nil, fetch.Options{Connections: conns, ChunkSize: chunk, Retries: 2})
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d connections: %d bytes, %v", conns, len(got), err)
		}
		if obj.Size() != -1 || obj.Ranged() {
			t.Errorf("Size() = %d, Ranged() = %v; want -1, false", obj.Size(), obj.Ranged())
		}
	}
	ctx := context.Background()
	obj, resp, err := fetch.Open(ctx, client(), ts.URL, "x", nil, fetch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := obj.NewReader(ctx, resp)
	defer r.Close()
	io.Copy(io.Discard, r)
	for range 3 {
		if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
			t.Fatalf("Read after the end = %d, %v; want 0, EOF", n, err)
		}
	}
	if n := requests.Load(); n != 3 {
		t.Errorf("%d requests, want 3", n)
	}
}

// TestSectionReader reads byte ranges of an object, as a disk inside an
// uncompressed layer blob is read.
func TestSectionReader(t *testing.T) {
	t.Parallel()
	s := &server{data: randomBytes(10*chunk + 77), etag: `"v1"`}
	ts := httptest.NewServer(s)
	defer ts.Close()
	size := int64(len(s.data))
	// Sections of a chunk or less are read as one stream, longer ones in
	// pieces.
	for _, conns := range []int{2, 4} {
		ctx := context.Background()
		obj, resp, err := fetch.Open(ctx, client(), ts.URL, "the blob", nil, fetch.Options{Connections: conns, ChunkSize: chunk})
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body) // so that the bytes sent are counted before the sections
		resp.Body.Close()
		for _, sec := range [][2]int64{{0, size}, {1024, 3*chunk + 5}, {size - 10, 10}, {512, 0}, {chunk, chunk}} {
			before := s.sent.Load()
			r, err := obj.NewSectionReader(ctx, sec[0], sec[1])
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			r.Close()
			if err != nil || !bytes.Equal(got, s.data[sec[0]:sec[0]+sec[1]]) {
				t.Errorf("%d connections, section %v: %d bytes, %v", conns, sec, len(got), err)
			}
			if sent := s.sent.Load() - before; sent != sec[1] {
				t.Errorf("%d connections, section %v: server sent %d bytes", conns, sec, sent)
			}
		}
		if _, err := obj.NewSectionReader(ctx, size-1, 2); err == nil {
			t.Error("a section past the end was accepted")
		}
	}
}

// TestStraggler: a piece whose first connection crawls while the others
// are fast is dropped and resumed on a new connection, from where it
// stopped.
func TestStraggler(t *testing.T) {
	t.Parallel()
	const piece = 256 << 10
	data := randomBytes(8 * piece)
	var slowServed atomic.Bool
	var slowRequests atomic.Int32
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		var from int
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &from); err == nil && from >= 2*piece && from < 3*piece {
			slowRequests.Add(1)
			if slowServed.CompareAndSwap(false, true) {
				// 16 KiB, then a crawl: 1 KiB every 100 ms.
				w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", 2*piece, 3*piece-1, len(data)))
				w.Header().Set("Content-Length", strconv.Itoa(piece))
				w.WriteHeader(http.StatusPartialContent)
				w.Write(data[2*piece : 2*piece+16<<10])
				for off := 2*piece + 16<<10; off < 3*piece; off += 1 << 10 {
					w.(http.Flusher).Flush()
					select {
					case <-r.Context().Done():
						return
					case <-time.After(100 * time.Millisecond):
					}
					if _, err := w.Write(data[off : off+1<<10]); err != nil {
						return
					}
				}
				return
			}
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	defer ts.Close()
	start := time.Now()
	got, _, err := readAll(t, ts.URL, nil, fetch.Options{Connections: 4, ChunkSize: piece, Retries: 1})
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("took %v: the straggler was waited for (it alone needs 24 s)", took)
	}
	if n := slowRequests.Load(); n != 2 {
		t.Errorf("the slow piece was requested %d times, want 2: dropped once, resumed", n)
	}
}
