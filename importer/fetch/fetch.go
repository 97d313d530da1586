// Package fetch reads one large object over HTTP fast and safely: one
// stream, or bounded Range requests on several connections reassembled in
// order, every answer checked against the version first seen, and a
// dropped or stalled response resumed from the bytes already received.
//
// Open sends the first GET and learns what the server offers; the Object it
// returns hands out readers (NewReader) and random access (ReaderAt) to
// that version of the object.
package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Errors a caller may want to tell apart. Answers that are errors
// themselves are *StatusError.
var (
	// ErrChanged: the object is no longer the version first read (its
	// validator or length differ, or a Range request was answered with
	// the whole object, as a server does when If-Range fails).
	ErrChanged = errors.New("the object changed while it was read")
	// ErrStalled: a request waited Options.StallTimeout for its
	// connection or headers, or a response gave no byte for that long.
	// It never wraps context.DeadlineExceeded: no deadline of the
	// caller's ran out.
	ErrStalled = errors.New("no data received within the stall timeout")
	// ErrBadRange: a Range request was answered with other bytes than
	// those asked for.
	ErrBadRange = errors.New("a Range request was answered with the wrong bytes")
	// ErrRedirect: CheckRedirect refused a redirect.
	ErrRedirect = errors.New("redirect refused")
)

// StatusError is an HTTP answer other than the one asked for.
type StatusError struct {
	Code   int
	Status string
	// RetryAfter is what a Retry-After header asked for, or 0.
	RetryAfter time.Duration
}

func (e *StatusError) Error() string { return "answered " + e.Status }

// Options tune how an object is read. The zero value reads one stream and
// never resumes.
type Options struct {
	// Connections is how many Range requests may run at once; 1 or less
	// reads one stream. A read starts with two, and has more only while
	// they make it faster (tune.go).
	Connections int
	// ChunkSize is the length of each Range request, and of each of the
	// Connections buffers that reassemble them in order.
	ChunkSize int64
	// ProbeSize is the length of the first GET's Range, for a caller that
	// needs only the object's first bytes before it decides what to read.
	// Zero: ChunkSize.
	ProbeSize int64
	// Retries is how many times in a row one response may fail (drop,
	// stall, short body, 5xx) and be resumed from the bytes it already
	// gave before the read fails. The count starts again once bytes flow.
	Retries int
	// StallTimeout drops a request that waits this long for its
	// connection, TLS handshake or response headers, or a response that
	// gives no byte for this long, so that it is retried or resumed
	// (ErrStalled, counted against Retries); 0 waits for ever.
	StallTimeout time.Duration
	// RetryWait is the first wait before a retry; it doubles on each
	// failure in a row, up to 10 s. Default 250 ms.
	RetryWait time.Duration
	// OnLevel, when set, is told of each number of pieces in flight
	// that a parallel read found faster than fewer, and keeps (tune.go).
	OnLevel func(pieces int)
	// OnRetry, when set, is told of each failure that is about to be
	// retried, with the offset the retry resumes from.
	OnRetry func(offset int64, err error)
	// Immutable says the object never changes (a content-addressed blob
	// whose digest the caller checks): it may be split and resumed
	// without an ETag or Last-Modified.
	Immutable bool
}

const maxRetryWait = 10 * time.Second

// Object is one version of an HTTP resource.
type Object struct {
	client  *http.Client
	url     string      // as given
	header  http.Header // sent only to url's origin
	display string      // url without credentials, for errors

	size       int64  // -1 when unknown
	ranged     bool   // the server answers Range requests with 206
	rangeAware bool   // it answered the probe with 416, a Range answer
	validator  string // If-Range value: a strong ETag or Last-Modified; "" none
	etag       string
	modified   string

	opts Options

	mu     sync.Mutex
	target string // where requests go: the URL the first GET ended at
}

// Open sends a GET for rawURL with header (which is sent to rawURL's origin
// only, never to another host a redirect leads to) and returns the object
// and the response; transient failures are retried as opts says. With
// opts.Connections > 1 the GET asks for the first ChunkSize bytes with a
// Range header: a server that supports Range requests answers with just
// those, and the object is Ranged; one that does not answers with the
// whole body. display names the object in errors.
func Open(ctx context.Context, client *http.Client, rawURL, display string, header http.Header, opts Options) (*Object, *http.Response, error) {
	if opts.RetryWait <= 0 {
		opts.RetryWait = 250 * time.Millisecond
	}
	o := &Object{client: client, url: rawURL, header: header, display: display, target: rawURL, size: -1, opts: opts}
	probe := int64(0)
	if opts.Connections > 1 && opts.ChunkSize > 0 {
		probe = opts.ChunkSize
		if opts.ProbeSize > 0 {
			probe = min(opts.ProbeSize, opts.ChunkSize)
		}
	}
	var retries retries
	for {
		resp, err := o.open(ctx, probe)
		var se *StatusError
		if probe > 0 && errors.As(err, &se) && se.Code == http.StatusRequestedRangeNotSatisfiable {
			// Some servers refuse a range past the end of a short
			// object instead of shortening it: ask for it whole. They
			// answer Range requests, if not that one.
			probe, o.rangeAware = 0, true
			continue
		}
		if err == nil || unreachable(err) || !retries.retry(ctx, &o.opts, 0, err) {
			return o, resp, err
		}
	}
}

// unreachable tells whether err says the server could not be reached at
// all (no such host, connection refused, also by a proxy): on the first
// request that is most likely a wrong URL or proxy setting, and fails at
// once rather than after retries.
func unreachable(err error) bool {
	var dnsErr *net.DNSError
	var opErr *net.OpError
	return errors.As(err, &dnsErr) || errors.As(err, &opErr) && (opErr.Op == "dial" || opErr.Op == "proxyconnect")
}

func (o *Object) open(ctx context.Context, probe int64) (*http.Response, error) {
	resp, err := o.send(ctx, o.url, 0, probe)
	if err != nil {
		return nil, err
	}
	o.etag, o.modified = resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")
	if !strings.HasPrefix(o.etag, "W/") && o.etag != "" {
		o.validator = o.etag
	} else {
		o.validator = o.modified
	}
	switch resp.StatusCode {
	case http.StatusOK:
		o.size = resp.ContentLength
		// Without a probe, trust Accept-Ranges; every Range answer is
		// checked anyway.
		o.ranged = probe == 0 && o.size > 0 && (resp.Header.Get("Accept-Ranges") == "bytes" || o.rangeAware)
	case http.StatusPartialContent:
		// A shorter range than the probe asked for is fine: the rest
		// is asked for when it is read.
		_, total, err := checkPartial(resp, 0, probe, -1, "")
		if err != nil {
			resp.Body.Close()
			return nil, fmt.Errorf("GET %s: %w", o.display, err)
		}
		o.size, o.ranged = total, true
	default:
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %w", o.display, statusError(resp))
	}
	o.target = resp.Request.URL.String()
	return resp, nil
}

// send GETs target, with a Range header for bytes [start, end) when end >
// 0, on a context of its own: waiting longer than Options.StallTimeout
// for the connection, the TLS handshake or the response headers is a
// stall (ErrStalled, retried like a stalled body), and closing the body
// ends the request. The body is watched for stalls as well.
func (o *Object) send(ctx context.Context, target string, start, end int64) (*http.Response, error) {
	rctx, cancel := context.WithCancel(ctx)
	req, err := o.request(rctx, target)
	if err != nil {
		cancel()
		return nil, err
	}
	if end > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", start, end-1))
		if o.ranged && o.validator != "" {
			req.Header.Set("If-Range", o.validator)
		}
	}
	var timer *time.Timer
	if o.opts.StallTimeout > 0 {
		timer = time.AfterFunc(o.opts.StallTimeout, cancel)
	}
	resp, err := o.client.Do(req)
	if timer != nil && !timer.Stop() && ctx.Err() == nil {
		// The timer fired: the wait for the headers was the stall,
		// whatever error the cancellation gave.
		if err == nil {
			resp.Body.Close()
		}
		cancel()
		return nil, fmt.Errorf("GET %s: %w: no response headers within %v", o.display, ErrStalled, o.opts.StallTimeout)
	}
	if err != nil {
		cancel()
		err = unwrapURLError(err)
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			// The transport's own timeout (response headers, TLS
			// handshake), not the caller's: a stall too. Its text
			// only, so that it does not read as the caller's deadline.
			return nil, fmt.Errorf("GET %s: %w: %s", o.display, ErrStalled, err.Error())
		}
		return nil, fmt.Errorf("GET %s: %w", o.display, err)
	}
	resp.Body = newBody(resp.Body, o.opts.StallTimeout, cancel)
	return resp, nil
}

// checkPartial is the one check of every 206 answer, the first included,
// to a request for bytes [start, end) of an object of total bytes (-1:
// not known yet). The answer must give one range (not a multipart body)
// that starts at start, ends at or before end (a server may cap each
// answer), gives the total expected, and has a Content-Length, when there
// is one, of its length; its body is then held to exactly that many
// bytes. An ETag other than etag (when not "") is another version, from
// a server that ignored If-Range. It returns where the range ends and the
// total it gives.
func checkPartial(resp *http.Response, start, end, total int64, etag string) (rangeEnd, gotTotal int64, err error) {
	cr := resp.Header.Get("Content-Range")
	s, e, t, ok := parseContentRange(cr)
	asked := "no Range"
	if end > 0 {
		asked = fmt.Sprintf("bytes=%d-%d", start, end-1)
	}
	switch now := resp.Header.Get("ETag"); {
	case etag != "" && now != "" && now != etag:
		return 0, 0, fmt.Errorf("%w: asked for %s with If-Range %s, got ETag %s", ErrChanged, asked, etag, now)
	case isMultipart(resp.Header.Get("Content-Type")):
		return 0, 0, fmt.Errorf("%w: asked for %s, got a multipart/byteranges body", ErrBadRange, asked)
	case !ok || s != start || e >= end:
		return 0, 0, fmt.Errorf("%w: asked for %s, got Content-Range %q", ErrBadRange, asked, cr)
	case total >= 0 && t != total:
		return 0, 0, fmt.Errorf("%w: asked for %s of %d bytes, got Content-Range %q", ErrBadRange, asked, total, cr)
	case resp.ContentLength >= 0 && resp.ContentLength != e-s+1:
		return 0, 0, fmt.Errorf("%w: asked for %s, got Content-Range %q with Content-Length %d", ErrBadRange, asked, cr, resp.ContentLength)
	}
	if b, ok := resp.Body.(*body); ok { // always: every request goes through send
		b.left = e - s + 1
	}
	return e + 1, t, nil
}

// isMultipart tells whether a Content-Type is multipart/byteranges: a
// body of several parts with headers of their own, not the bytes asked
// for.
func isMultipart(contentType string) bool {
	mediaType, _, _ := strings.Cut(contentType, ";")
	return strings.EqualFold(strings.TrimSpace(mediaType), "multipart/byteranges")
}

// strongETag is the ETag every answer must carry, if any: the strong
// ETag first seen, or "" when there is none or the object is Immutable
// (its pieces may come from backends with ETags of their own).
func (o *Object) strongETag() string {
	if o.opts.Immutable || strings.HasPrefix(o.etag, "W/") {
		return ""
	}
	return o.etag
}

// Size is the object's length, or -1 when the server did not say.
func (o *Object) Size() int64 { return o.size }

// Ranged tells whether the server answered a Range request with 206.
func (o *Object) Ranged() bool { return o.ranged }

// Resumable tells whether a read of this object can be resumed, or split
// into Range requests, without risk of mixing two versions: the server
// answers Range requests, and the object has a length and a validator
// (a strong ETag or Last-Modified) for If-Range.
func (o *Object) Resumable() bool {
	return o.ranged && o.size > 0 && (o.validator != "" || o.opts.Immutable)
}

// Validator names the version of the object that was read: its strong
// ETag or Last-Modified, and its length; "" when it has neither (it cannot
// be told apart from another version).
func (o *Object) Validator() string {
	if o.validator == "" || o.size < 0 {
		return ""
	}
	return o.validator + "; " + strconv.FormatInt(o.size, 10) + " bytes"
}

// Redirected tells whether the first GET was redirected; requests go
// straight to where it ended.
func (o *Object) Redirected() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.target != o.url
}

func (o *Object) request(ctx context.Context, target string) (*http.Request, error) {
	if len(o.header) > 0 {
		// CheckRedirect removes them when a redirect leaves the origin:
		// net/http copies every header to the next request.
		ctx = context.WithValue(ctx, originHeadersKey{}, o.header)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", o.display, err)
	}
	if sameOrigin(req.URL, o.url) {
		for k, v := range o.header {
			req.Header[k] = v
		}
	}
	return req, nil
}

// originHeadersKey keys the headers of a request that are for its origin
// only.
type originHeadersKey struct{}

// get requests bytes [start, end) of the object and checks the answer is
// bytes of the version first seen from start, up to end or, when the
// server caps its answers, fewer; it returns the body and where it ends.
// An object that is not Ranged can only be read whole.
func (o *Object) get(ctx context.Context, start, end int64) (io.ReadCloser, int64, error) {
	o.mu.Lock()
	target := o.target
	o.mu.Unlock()
	resp, bodyEnd, err := o.getFrom(ctx, target, start, end)
	var se *StatusError
	if target != o.url && errors.As(err, &se) && (se.Code == http.StatusForbidden || se.Code == http.StatusBadRequest) {
		// A presigned URL expired: ask the origin again where to go.
		resp, bodyEnd, err = o.getFrom(ctx, o.url, start, end)
	}
	if err != nil {
		return nil, 0, err
	}
	if t := resp.Request.URL.String(); t != target {
		o.mu.Lock()
		o.target = t
		o.mu.Unlock()
	}
	return resp.Body, bodyEnd, nil
}

func (o *Object) getFrom(ctx context.Context, target string, start, end int64) (*http.Response, int64, error) {
	if !o.ranged && (start != 0 || end != o.size) {
		return nil, 0, fmt.Errorf("%s does not answer Range requests: it can only be read whole", o.display)
	}
	rangeEnd := int64(0) // no Range header
	if o.ranged {
		rangeEnd = end
	}
	resp, err := o.send(ctx, target, start, rangeEnd)
	if err != nil {
		return nil, 0, err
	}
	bodyEnd := end
	switch {
	case o.ranged && resp.StatusCode == http.StatusOK:
		err = fmt.Errorf("%w: a Range request with If-Range %s was answered with the whole object, now ETag %s, Last-Modified %s",
			ErrChanged, o.validator, orNone(resp.Header.Get("ETag")), orNone(resp.Header.Get("Last-Modified")))
	case o.ranged && resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		err = fmt.Errorf("%w: it is now shorter than %d bytes (416)", ErrChanged, end)
	case o.ranged && resp.StatusCode == http.StatusPartialContent:
		bodyEnd, _, err = checkPartial(resp, start, end, o.size, o.strongETag())
	case !o.ranged && resp.StatusCode == http.StatusOK:
		if resp.ContentLength != o.size || resp.Header.Get("ETag") != o.etag || resp.Header.Get("Last-Modified") != o.modified {
			err = fmt.Errorf("%w: was %d bytes, ETag %s, Last-Modified %s; now %d bytes, ETag %s, Last-Modified %s", ErrChanged,
				o.size, orNone(o.etag), orNone(o.modified), resp.ContentLength, orNone(resp.Header.Get("ETag")), orNone(resp.Header.Get("Last-Modified")))
		}
	default:
		err = statusError(resp)
	}
	if err != nil {
		resp.Body.Close()
		return nil, 0, fmt.Errorf("GET %s bytes %d-%d: %w", o.display, start, end-1, err)
	}
	return resp, bodyEnd, nil
}

// LimitChunkSize makes the Range requests of the readers made after it
// at most n bytes long. It must not be called while one is made.
func (o *Object) LimitChunkSize(n int64) {
	o.opts.ChunkSize = min(o.opts.ChunkSize, n)
}

// NewReader returns the object's bytes in order. first is the response
// Open returned, whose bytes it starts with, or nil to start with a
// request of its own (a second read of the object). With
// Options.Connections > 1 and a Resumable object, the rest is read with
// bounded Range requests on that many connections, using at most
// Connections × ChunkSize bytes of buffers; otherwise it is one stream,
// resumed with a Range request when it fails and the object is Resumable.
// Close stops every request.
func (o *Object) NewReader(ctx context.Context, first *http.Response) io.ReadCloser {
	body, firstEnd := o.firstBody(first)
	ctx, cancel := context.WithCancel(ctx)
	if o.opts.Connections > 1 && o.opts.ChunkSize > 0 && o.Resumable() && o.size > firstEnd {
		return newParallelReader(ctx, cancel, o, body, 0, firstEnd, o.size)
	}
	return &streamReader{ctx: ctx, cancel: cancel, o: o, body: body, bodyEnd: firstEnd, end: o.size}
}

// Stream is NewReader on one connection, whatever Options.Connections
// says: for a reader that needs only the first bytes of a large object.
func (o *Object) Stream(ctx context.Context, first *http.Response) io.ReadCloser {
	body, firstEnd := o.firstBody(first)
	ctx, cancel := context.WithCancel(ctx)
	return &streamReader{ctx: ctx, cancel: cancel, o: o, body: body, bodyEnd: firstEnd, end: o.size}
}

// firstBody returns the body of the response Open returned (checked and
// watched for stalls as every body is) and where it ends; nil and 0
// without one.
func (o *Object) firstBody(first *http.Response) (io.ReadCloser, int64) {
	if first == nil {
		return nil, 0
	}
	end := o.size
	if first.StatusCode == http.StatusPartialContent {
		_, last, _, _ := parseContentRange(first.Header.Get("Content-Range"))
		end = last + 1
	}
	return first.Body, end
}

// NewSectionReader returns the n bytes of the object from offset off, in
// order, read as NewReader reads the whole object. The object must be
// Ranged, and the section within it.
func (o *Object) NewSectionReader(ctx context.Context, off, n int64) (io.ReadCloser, error) {
	if !o.ranged || off < 0 || n < 0 || off+n > o.size {
		return nil, fmt.Errorf("bytes %d-%d of %s: out of its %d bytes, or it does not answer Range requests", off, off+n-1, o.display, o.size)
	}
	ctx, cancel := context.WithCancel(ctx)
	if o.opts.Connections > 1 && o.opts.ChunkSize > 0 && o.Resumable() && n > o.opts.ChunkSize {
		return newParallelReader(ctx, cancel, o, nil, off, off, off+n), nil
	}
	return &streamReader{ctx: ctx, cancel: cancel, o: o, off: off, end: off + n}, nil
}

// streamReader reads the object as one stream: the first response, then,
// when that was a bounded range or it failed, one Range request for the
// rest.
type streamReader struct {
	ctx     context.Context
	cancel  context.CancelFunc
	o       *Object
	body    io.ReadCloser
	bodyEnd int64 // where body ends
	off     int64
	end     int64 // where the read ends: the object's size, -1 when unknown
	eof     bool
	retries retries
}

func (r *streamReader) Read(p []byte) (int, error) {
	for {
		if r.eof {
			return 0, io.EOF
		}
		if r.body == nil {
			if r.end >= 0 && r.off >= r.end {
				r.eof = true
				return 0, io.EOF
			}
			b, bodyEnd, err := r.o.get(r.ctx, r.off, r.end)
			if err != nil {
				if (r.off == 0 || r.o.Resumable()) && r.retry(err) {
					continue
				}
				return 0, err
			}
			r.body, r.bodyEnd = b, bodyEnd
		}
		n, err := r.body.Read(p)
		r.off += int64(n)
		r.retries.progress(n)
		switch {
		case err == nil:
			return n, nil
		case err == io.EOF && r.off == r.bodyEnd, err == io.EOF && r.end < 0:
			r.body.Close()
			r.body = nil
			if r.end >= 0 && r.off < r.end {
				// The response was a bounded range (the probe, or a
				// capped answer): ask for the rest.
				if n == 0 {
					continue
				}
				return n, nil
			}
			r.eof = true
			return n, io.EOF
		case err == io.EOF:
			err = io.ErrUnexpectedEOF
		}
		err = fmt.Errorf("GET %s: at byte %d of %d: %w", r.o.display, r.off, r.end, err)
		r.body.Close()
		r.body = nil
		if !r.o.Resumable() || !r.retry(err) {
			return n, err
		}
		if n > 0 {
			return n, nil
		}
	}
}

// retry waits before the next attempt after err, or says not to retry.
func (r *streamReader) retry(err error) bool {
	return r.retries.retry(r.ctx, &r.o.opts, r.off, err)
}

func (r *streamReader) Close() error {
	r.cancel()
	if r.body != nil {
		return r.body.Close()
	}
	return nil
}

// fill reads bytes [start, start+len(buf)) of the object into buf, from
// body first when it is not nil, resuming after failures; it calls
// progress with the count of bytes in buf after each read.
//
// a, when not nil, lets another goroutine drop the response being read
// (a straggler): the read then resumes at once on a new request, and the
// drop does not count as a failure.
func (o *Object) fill(ctx context.Context, start int64, buf []byte, body io.ReadCloser, progress func(filled int), a *attempt) error {
	filled := 0
	var retries retries
	defer func() {
		if body != nil {
			body.Close()
		}
	}()
	a.set(body)
	for filled < len(buf) {
		if body == nil {
			b, _, err := o.get(ctx, start+int64(filled), start+int64(len(buf)))
			if err != nil {
				if retries.retry(ctx, &o.opts, start+int64(filled), err) {
					continue
				}
				return err
			}
			body = b
			a.set(body)
		}
		n, err := body.Read(buf[filled:])
		retries.progress(n)
		if n > 0 {
			filled += n
			if progress != nil {
				progress(filled)
			}
		}
		if filled == len(buf) {
			break
		}
		switch {
		case err == nil:
			continue
		case err == io.EOF:
			// A shorter range than asked for, whole (the body says
			// so): ask for the rest. Not a failure.
			body.Close()
			body = nil
			a.set(nil)
			continue
		}
		err = fmt.Errorf("GET %s bytes %d-%d: at byte %d: %w", o.display, start, start+int64(len(buf))-1, start+int64(filled), err)
		body.Close()
		body = nil
		a.set(nil)
		if a.dropped() {
			continue // a straggler, dropped on purpose: resume at once
		}
		if !retries.retry(ctx, &o.opts, start+int64(filled), err) {
			return err
		}
	}
	return nil
}

// attempt is the response a fill is reading, which another goroutine may
// drop. A nil *attempt does nothing.
type attempt struct {
	mu   sync.Mutex
	body io.ReadCloser
	drop bool
}

func (a *attempt) set(body io.ReadCloser) {
	if a == nil {
		return
	}
	a.mu.Lock()
	a.body = body
	a.mu.Unlock()
}

// cut closes the response being read, if any, and says whether it did.
func (a *attempt) cut() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.body == nil {
		return false
	}
	a.drop = true
	a.body.Close()
	return true
}

// dropped tells whether the last failure was a cut, and forgets it.
func (a *attempt) dropped() bool {
	if a == nil {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	d := a.drop
	a.drop = false
	return d
}

// resetAfter is how many bytes one read must give after a failure for the
// count of failures in a row to start again: a server that drops every
// connection after a few bytes still fails the read.
const resetAfter = 1 << 20

// retries counts the failures in a row of one read.
type retries struct {
	failures int
	since    int64 // bytes read since the last failure
}

func (r *retries) progress(n int) {
	r.since += int64(n)
	if r.since >= resetAfter {
		r.failures = 0
	}
}

// retry decides whether a failed request or read is tried again and waits
// before it: transient failures are, Retries times in a row, with a
// doubling wait (or what Retry-After asks, up to a minute).
func (r *retries) retry(ctx context.Context, opts *Options, offset int64, err error) bool {
	if ctx.Err() != nil || !Transient(err) || r.failures >= opts.Retries {
		return false
	}
	wait := opts.RetryWait << r.failures
	if wait > maxRetryWait || wait <= 0 {
		wait = maxRetryWait
	}
	var se *StatusError
	if errors.As(err, &se) && se.RetryAfter > 0 {
		wait = min(se.RetryAfter, time.Minute)
	}
	r.failures++
	r.since = 0
	if opts.OnRetry != nil {
		opts.OnRetry(offset, err)
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Transient tells whether err may go away on a retry: a dropped, stalled
// or short response, wrong bytes for a range, or an answer of 408, 429 or
// 5xx. A changed object, another 4xx, a cancelled context, a Range
// answer found too long after its first bytes were handed on, or an error
// that says it is Permanent is final.
func Transient(err error) bool {
	var se *StatusError
	var p Permanent
	switch {
	case errors.Is(err, ErrChanged), errors.Is(err, errUntrusted),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false
	case errors.As(err, &p) && p.Permanent():
		return false
	case errors.As(err, &se):
		return se.Code == http.StatusRequestTimeout || se.Code == http.StatusTooManyRequests || se.Code >= 500
	}
	return !errors.Is(err, ErrRedirect)
}

// Permanent is an error that says whether a retry cannot help (a corrupt
// image read by a caller of this package): Transient is false for one
// whose Permanent is true.
type Permanent interface {
	error
	Permanent() bool
}

func statusError(resp *http.Response) *StatusError {
	return &StatusError{Code: resp.StatusCode, Status: resp.Status, RetryAfter: RetryAfter(resp.Header)}
}

// RetryAfter is how long a Retry-After header (seconds, or an HTTP date)
// asks to wait, or 0 when there is none or it is malformed.
func RetryAfter(h http.Header) time.Duration {
	v := h.Get("Retry-After")
	if s, err := strconv.Atoi(v); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// parseContentRange parses "bytes START-END/TOTAL".
func parseContentRange(s string) (start, end, total int64, ok bool) {
	rest, found := strings.CutPrefix(s, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	r, t, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, 0, false
	}
	a, b, found := strings.Cut(r, "-")
	if !found {
		return 0, 0, 0, false
	}
	var err1, err2, err3 error
	start, err1 = strconv.ParseInt(a, 10, 64)
	end, err2 = strconv.ParseInt(b, 10, 64)
	total, err3 = strconv.ParseInt(t, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || start < 0 || end < start || total <= end {
		return 0, 0, 0, false
	}
	return start, end, total, true
}

// sameOrigin tells whether u has the scheme, host and port of raw.
func sameOrigin(u *url.URL, raw string) bool {
	o, err := url.Parse(raw)
	return err == nil && origin(u) == origin(o)
}

func origin(u *url.URL) string {
	port := u.Port()
	if port == "" {
		switch u.Scheme {
		case "http":
			port = "80"
		case "https":
			port = "443"
		}
	}
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(u.Hostname()) + ":" + port
}

// CheckRedirect is the redirect policy for an http.Client that fetches
// objects: at most 10 redirects, never from https to plain http, and no
// credentials sent to another origin (scheme, host or port): neither
// Authorization nor Cookie, nor the headers given to Open. Go's client
// would forward Authorization to a subdomain or another port of the same
// host, and every other header anywhere; the distribution spec says
// credentials must not cross hosts, and object stores refuse a presigned
// URL that carries them. No Referer is sent either: Go's client sets one
// to the previous URL, query string (a presigned signature) included.
func CheckRedirect(req *http.Request, via []*http.Request) error {
	req.Header.Del("Referer")
	if len(via) >= 10 {
		return fmt.Errorf("%w: stopped after 10 redirects", ErrRedirect)
	}
	if via[0].URL.Scheme == "https" && req.URL.Scheme != "https" {
		return fmt.Errorf("%w: from https to %s", ErrRedirect, req.URL.Scheme)
	}
	if origin(req.URL) != origin(via[0].URL) {
		req.Header.Del("Authorization")
		req.Header.Del("Cookie")
		if h, ok := req.Context().Value(originHeadersKey{}).(http.Header); ok {
			for name := range h {
				req.Header.Del(name)
			}
		}
	}
	return nil
}

// unwrapURLError drops the *url.Error net/http wraps a failed request in:
// its text holds the full URL, credentials and query included.
func unwrapURLError(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err
	}
	return err
}
