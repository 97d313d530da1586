package fetch_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/importer/fetch"
)

// answer is one way rangeServer answers a request.
type answer int

const (
	answerOK             answer = iota // the bytes asked for: 206, or 200 without Range
	answerCapped                       // 206 with a valid shorter range (a third)
	answerLongCL                       // Content-Length = range + 64, 64 junk bytes first
	answerLongChunked                  // no Content-Length, 64 junk bytes first
	answerShortCL                      // Content-Length one less than the range, body to match
	answerMultipart                    // multipart/byteranges, cut to the range's length
	answerWrongStart                   // Content-Range and bytes from start+1
	answerWrongTotal                   // Content-Range total one more than the object
	answerEndPast                      // a range 10 bytes longer than asked, bytes (or zeros) to match
	answer200                          // 200 with the whole object
	answerDrop                         // the connection dropped in the middle of the body
	answer503                          // 503
	answerChanged                      // another version, If-Range honoured: 200
	answerChangedIgnored               // another version, If-Range ignored: 206
	answerStallHeaders                 // no headers until the request ends
	answerStallBody                    // half the body, then nothing until the request ends
	answerCount
)

var answerNames = [...]string{"OK", "capped", "long (Content-Length)", "long (chunked)", "short Content-Length",
	"multipart/byteranges", "wrong start", "wrong total", "end past the asked", "200 instead of 206",
	"dropped connection", "503", "changed ETag", "changed ETag, If-Range ignored", "headers stall", "body stalls"}

func (a answer) String() string { return answerNames[a] }

// rangeServer serves data with the ETag "v1" (alt with "v2" for a
// changed version), each answer chosen by pick from the request's number
// (1 for the first) and its Range header.
type rangeServer struct {
	data, alt []byte
	pick      func(n int, rangeHeader string) answer

	requests atomic.Int32
	mu       sync.Mutex
	seen     []string // "Range -> answer", for failure messages
	headers  []http.Header
}

func newRangeServer(size int, pick func(n int, rangeHeader string) answer) *rangeServer {
	alt := randomBytes(size + 1)[1:]
	return &rangeServer{data: randomBytes(size), alt: alt, pick: pick}
}

func (s *rangeServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := int(s.requests.Add(1))
	rng := r.Header.Get("Range")
	a := s.pick(n, rng)
	s.mu.Lock()
	s.seen = append(s.seen, rng+" -> "+a.String())
	s.headers = append(s.headers, r.Header.Clone())
	s.mu.Unlock()
	size := int64(len(s.data))
	start, end, ranged := parseRange(rng, size)
	data, etag := s.data, `"v1"`
	if r.Header.Get("If-Range") == "" && (a == answerChanged || a == answerChangedIgnored) {
		a = answerOK // the version is the one this answer gives
	}
	switch a {
	case answer503:
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	case answerStallHeaders:
		<-r.Context().Done()
		return
	case answerChanged:
		if r.Header.Get("If-Range") != "" && r.Header.Get("If-Range") != `"v2"` {
			ranged = false
		}
		data, etag = s.alt, `"v2"`
	case answerChangedIgnored:
		data, etag = s.alt, `"v2"`
	case answer200:
		ranged = false
	}
	h := w.Header()
	h.Set("ETag", etag)
	h.Set("Accept-Ranges", "bytes")
	if !ranged {
		writeBody(w, r, http.StatusOK, data, int64(len(data)), a)
		return
	}
	if a == answerCapped {
		end = start + (end-start+2)/3
	}
	cr := func(s, e, total int64) { h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", s, e-1, total)) }
	body, cl := data[start:end], end-start
	cr(start, end, size)
	switch a {
	case answerLongCL:
		body = append(bytes.Repeat([]byte{'j'}, 64), body...)
		cl = int64(len(body))
	case answerLongChunked:
		body, cl = append(bytes.Repeat([]byte{'j'}, 64), body...), -1
	case answerShortCL:
		body, cl = body[:len(body)-1], cl-1
	case answerMultipart:
		h.Set("Content-Type", "multipart/byteranges; boundary=B")
		mp := fmt.Sprintf("--B\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes %d-%d/%d\r\n\r\n", start, end-1, size)
		body = append([]byte(mp), body...)[:end-start]
	case answerWrongStart:
		switch {
		case end < size:
			body = data[start+1 : end+1]
			cr(start+1, end+1, size)
		case start > 0:
			body = data[start-1 : end-1]
			cr(start-1, end-1, size)
		default:
			body, cl = data[1:], cl-1
			cr(1, size, size)
		}
	case answerWrongTotal:
		cr(start, end, size+1)
	case answerEndPast:
		// Past the object's end too when the range ends with it: a
		// Content-Range that ends past its total.
		e := end + 10
		cr(start, e, size)
		body, cl = append(append([]byte(nil), data[start:min(e, size)]...), make([]byte, e-min(e, size))...), e-start
	}
	writeBody(w, r, http.StatusPartialContent, body, cl, a)
}

// writeBody writes body with a Content-Length of cl (none when -1),
// dropping or stalling it halfway as a says.
func writeBody(w http.ResponseWriter, r *http.Request, code int, body []byte, cl int64, a answer) {
	if cl >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(cl, 10))
	}
	w.WriteHeader(code)
	half := len(body) / 2
	w.Write(body[:half])
	w.(http.Flusher).Flush()
	switch a {
	case answerDrop:
		panic(http.ErrAbortHandler)
	case answerStallBody:
		<-r.Context().Done()
		panic(http.ErrAbortHandler)
	}
	w.Write(body[half:])
}

// parseRange parses "bytes=A-B" (B clamped to the object), or says there
// is no Range.
func parseRange(v string, size int64) (start, end int64, ok bool) {
	if _, err := fmt.Sscanf(v, "bytes=%d-%d", &start, &end); err != nil || start >= size {
		return 0, size, false
	}
	return start, min(end+1, size), true
}

// readMode is one way of reading an object: the reader every command
// uses, from Open on.
type readMode struct {
	name  string
	conns int
	read  func(ctx context.Context, obj *fetch.Object, first *http.Response) ([]byte, error)
}

var readModes = []readMode{
	{"parallel", 4, func(ctx context.Context, obj *fetch.Object, first *http.Response) ([]byte, error) {
		r := obj.NewReader(ctx, first)
		defer r.Close()
		return io.ReadAll(r)
	}},
	{"stream after the probe", 4, func(ctx context.Context, obj *fetch.Object, first *http.Response) ([]byte, error) {
		r := obj.Stream(ctx, first)
		defer r.Close()
		return io.ReadAll(r)
	}},
	{"one stream", 1, func(ctx context.Context, obj *fetch.Object, first *http.Response) ([]byte, error) {
		r := obj.NewReader(ctx, first)
		defer r.Close()
		return io.ReadAll(r)
	}},
	{"sections", 4, func(ctx context.Context, obj *fetch.Object, first *http.Response) ([]byte, error) {
		first.Body.Close()
		var out []byte
		for off := int64(0); off < obj.Size(); {
			n := min(3*chunk+5, obj.Size()-off) // one in pieces, one stream
			r, err := obj.NewSectionReader(ctx, off, n)
			if err != nil {
				return out, err
			}
			b, err := io.ReadAll(r)
			r.Close()
			out = append(out, b...)
			if err != nil {
				return out, err
			}
			off += n
		}
		return out, nil
	}},
	{"ReaderAt", 4, func(ctx context.Context, obj *fetch.Object, first *http.Response) ([]byte, error) {
		first.Body.Close()
		out := make([]byte, obj.Size())
		ra := obj.ReaderAt(ctx)
		for off := int64(0); off < obj.Size(); off += chunk + 1000 {
			n, err := ra.ReadAt(out[off:min(off+chunk+1000, obj.Size())], off)
			if err != nil && !(err == io.EOF && off+int64(n) == obj.Size()) {
				return out[:off], err
			}
		}
		return out, nil
	}},
}

// readWith opens ts's URL and reads it as mode does.
func readWith(t *testing.T, url string, mode readMode, opts fetch.Options) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	opts.Connections = mode.conns
	obj, resp, err := fetch.Open(ctx, client(), url, "the object", nil, opts)
	if err != nil {
		return nil, err
	}
	return mode.read(ctx, obj, resp)
}

// outcome is what a read is to end with.
type outcome struct {
	err    error // nil: the exact bytes
	either bool  // the exact bytes, or err
}

// TestEveryAnswerChecked: every Range answer after the first is checked
// as the first is (issue 13, items 2, 3, 13), by every reader: a bad
// answer once is retried and the read gives the exact bytes; a bad answer
// every time fails the read with a clear error, never with other bytes.
// A shorter valid range is no failure at all.
func TestEveryAnswerChecked(t *testing.T) {
	t.Parallel()
	badRange := outcome{err: fetch.ErrBadRange}
	changed := outcome{err: fetch.ErrChanged}
	for _, tc := range []struct {
		a            answer
		once, always outcome
	}{
		{a: answerCapped},
		{a: answerLongCL, always: badRange},
		// Found after some of its bytes were handed on: final.
		{a: answerLongChunked, once: outcome{err: fetch.ErrBadRange, either: true}, always: badRange},
		{a: answerShortCL, always: badRange},
		{a: answerMultipart, always: badRange},
		{a: answerWrongStart, always: badRange},
		{a: answerWrongTotal, always: badRange},
		{a: answerEndPast, always: badRange},
		{a: answer200, once: changed, always: changed},
		{a: answerDrop, always: outcome{err: io.ErrUnexpectedEOF}},
		{a: answer503, always: outcome{err: &fetch.StatusError{}}},
		{a: answerChanged, once: changed, always: changed},
		{a: answerChangedIgnored, once: changed, always: changed},
		{a: answerStallHeaders, always: outcome{err: fetch.ErrStalled}},
		{a: answerStallBody, always: outcome{err: fetch.ErrStalled}},
	} {
		for _, mode := range readModes {
			if mode.conns == 1 {
				continue // no Range request after the first answer
			}
			for _, always := range []bool{false, true} {
				want := tc.once
				if always {
					want = tc.always
				}
				t.Run(fmt.Sprintf("%s/%s/always=%v", tc.a, mode.name, always), func(t *testing.T) {
					t.Parallel()
					s := newRangeServer(5*chunk+123, func(n int, rangeHeader string) answer {
						if n == 1 || rangeHeader == "" || !always && n > 2 {
							return answerOK
						}
						return tc.a
					})
					ts := httptest.NewServer(s)
					defer ts.Close()
					var retries atomic.Int32
					got, err := readWith(t, ts.URL, mode, fetch.Options{ChunkSize: chunk, Retries: 2,
						StallTimeout: 100 * time.Millisecond, RetryWait: time.Millisecond,
						OnRetry: func(int64, error) { retries.Add(1) }})
					checkOutcome(t, s, got, err, want)
					if tc.a == answerCapped && retries.Load() != 0 {
						t.Errorf("%d retries: a shorter valid range counted as a failure", retries.Load())
					}
				})
			}
		}
	}
}

// TestProbeAnswers: the first answer (Open's probe) goes through the same
// check, and a valid shorter one is fine.
func TestProbeAnswers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a    answer
		want outcome
	}{
		{a: answerCapped},
		{a: answerLongCL},
		{a: answerLongChunked, want: outcome{err: fetch.ErrBadRange, either: true}},
		{a: answerShortCL},
		{a: answerMultipart},
		{a: answerWrongStart},
		{a: answerEndPast},
		{a: answerDrop},
		{a: answer503},
		{a: answerStallHeaders},
		{a: answerStallBody},
	} {
		for _, mode := range readModes {
			if mode.conns == 1 {
				continue // no probe
			}
			t.Run(tc.a.String()+"/"+mode.name, func(t *testing.T) {
				t.Parallel()
				s := newRangeServer(5*chunk+123, func(n int, _ string) answer {
					if n == 1 {
						return tc.a
					}
					return answerOK
				})
				ts := httptest.NewServer(s)
				defer ts.Close()
				got, err := readWith(t, ts.URL, mode, fetch.Options{ChunkSize: chunk, Retries: 1,
					StallTimeout: 100 * time.Millisecond, RetryWait: time.Millisecond})
				checkOutcome(t, s, got, err, tc.want)
			})
		}
	}
}

func checkOutcome(t *testing.T, s *rangeServer, got []byte, err error, want outcome) {
	t.Helper()
	s.mu.Lock()
	seen := s.seen
	s.mu.Unlock()
	switch {
	case err == nil && !bytes.Equal(got, s.data):
		t.Fatalf("read %d bytes and no error, but not the %d served; answers %q", len(got), len(s.data), seen)
	case err == nil && want.err != nil && !want.either:
		t.Fatalf("read succeeded, want an error wrapping %v; answers %q", want.err, seen)
	case err != nil && want.err == nil:
		t.Fatalf("read failed: %v; answers %q", err, seen)
	case err != nil && !errorsAs(err, want.err):
		t.Fatalf("error %q does not wrap %v; answers %q", err, want.err, seen)
	case err != nil && errors.Is(err, context.DeadlineExceeded):
		t.Fatalf("error %q reads as a deadline", err)
	}
}

// TestNoReferer: a redirect, to the same origin and then to another one,
// carries no Referer (Go's client would send the previous URL, presigned
// query string included) and no credentials (issue 13, item 7).
func TestNoReferer(t *testing.T) {
	t.Parallel()
	store := newRangeServer(3*chunk, func(int, string) answer { return answerOK })
	storeTS := httptest.NewServer(store)
	defer storeTS.Close()
	var hopHeaders []http.Header
	var mu sync.Mutex
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hopHeaders = append(hopHeaders, r.Header.Clone())
		mu.Unlock()
		if r.URL.Path == "/disk" {
			http.Redirect(w, r, "/hop?X-Amz-Signature=s3cret2", http.StatusFound)
			return
		}
		http.Redirect(w, r, storeTS.URL+"/blob?X-Amz-Signature=s3cret3", http.StatusTemporaryRedirect)
	}))
	defer origin.Close()
	got, err := readWith(t, origin.URL+"/disk?X-Amz-Signature=s3cret1", readModes[0], fetch.Options{
		ChunkSize: chunk, Retries: 1, RetryWait: time.Millisecond})
	if err != nil || !bytes.Equal(got, store.data) {
		t.Fatalf("%d bytes, %v", len(got), err)
	}
	mu.Lock()
	defer mu.Unlock()
	store.mu.Lock()
	defer store.mu.Unlock()
	all := append(append([]http.Header(nil), hopHeaders...), store.headers...)
	if len(hopHeaders) < 2 || len(store.headers) == 0 {
		t.Fatalf("%d requests to the origin, %d to the store: the redirects were not followed", len(hopHeaders), len(store.headers))
	}
	for i, h := range all {
		if v := h.Get("Referer"); v != "" {
			t.Errorf("request %d carried a Referer (%d bytes)", i, len(v))
		}
		for name, vs := range h {
			if strings.Contains(strings.Join(vs, " "), "s3cret") {
				t.Errorf("request %d: header %s carries a signature", i, name)
			}
		}
	}
}

// TestHeaderStall: waiting for the response headers, or for the TLS
// handshake, longer than StallTimeout is a stall (issue 13, item 13):
// retried, counted against Retries, and once they run out an error that
// wraps ErrStalled and reads as no deadline; the caller's cancellation
// still reads as context.Canceled.
func TestHeaderStall(t *testing.T) {
	t.Parallel()
	const stall = 100 * time.Millisecond
	t.Run("retries run out", func(t *testing.T) {
		t.Parallel()
		s := newRangeServer(chunk, func(int, string) answer { return answerStallHeaders })
		ts := httptest.NewServer(s)
		defer ts.Close()
		var retries atomic.Int32
		start := time.Now()
		_, err := readWith(t, ts.URL, readModes[0], fetch.Options{ChunkSize: chunk, Retries: 2,
			StallTimeout: stall, RetryWait: time.Millisecond, OnRetry: func(int64, error) { retries.Add(1) }})
		checkStalled(t, err)
		if n := s.requests.Load(); n != 3 || retries.Load() != 2 {
			t.Errorf("%d requests, %d retries; want 3 and 2", n, retries.Load())
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("took %v for 3 stalls of %v", took, stall)
		}
	})
	t.Run("TLS handshake", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			var conns []net.Conn
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			for {
				c, err := ln.Accept() // and never answers the ClientHello
				if err != nil {
					return
				}
				conns = append(conns, c)
			}
		}()
		cl := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
			CheckRedirect: fetch.CheckRedirect}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var retries atomic.Int32
		_, _, err = fetch.Open(ctx, cl, "https://"+ln.Addr().String()+"/disk", "the object", nil,
			fetch.Options{Retries: 1, StallTimeout: stall, RetryWait: time.Millisecond,
				OnRetry: func(int64, error) { retries.Add(1) }})
		checkStalled(t, err)
		if n := retries.Load(); n != 1 {
			t.Errorf("%d retries, want 1", n)
		}
	})
	t.Run("caller cancels", func(t *testing.T) {
		t.Parallel()
		arrived := make(chan struct{}, 1)
		ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			arrived <- struct{}{}
			<-r.Context().Done()
		}))
		defer ts.Close()
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			<-arrived
			cancel()
		}()
		_, _, err := fetch.Open(ctx, client(), ts.URL, "the object", nil,
			fetch.Options{Retries: 3, StallTimeout: time.Minute, RetryWait: time.Millisecond})
		if !errors.Is(err, context.Canceled) || errors.Is(err, fetch.ErrStalled) {
			t.Fatalf("error %v: want context.Canceled, not a stall", err)
		}
	})
}

func checkStalled(t *testing.T, err error) {
	t.Helper()
	switch {
	case !errors.Is(err, fetch.ErrStalled):
		t.Fatalf("error %v does not wrap ErrStalled", err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		t.Fatalf("error %q reads as a deadline or a cancellation: the importer would call it Timeout", err)
	case !fetch.Transient(err):
		t.Fatalf("error %q is not transient", err)
	}
}

// permanentError says a retry cannot help.
type permanentError struct{}

func (permanentError) Error() string   { return "corrupt" }
func (permanentError) Permanent() bool { return true }

// TestPermanent: an error that says it is Permanent is not Transient, even
// wrapped in one that would be.
func TestPermanent(t *testing.T) {
	t.Parallel()
	if err := fmt.Errorf("reading: %w: %w", permanentError{}, io.ErrUnexpectedEOF); fetch.Transient(err) {
		t.Errorf("Transient(%v) = true", err)
	}
	if err := fmt.Errorf("reading: %w", io.ErrUnexpectedEOF); !fetch.Transient(err) {
		t.Errorf("Transient(%v) = false", err)
	}
}
