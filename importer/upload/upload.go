// Package upload is a client for the OCI distribution spec's blob upload
// sessions that can be resumed: it opens or re-attaches an upload, asks
// the registry how many bytes it holds, sends bytes from an offset with
// Content-Range and Content-Length, and commits the blob with its digest.
//
// It retries nothing and trusts no registry: Send reports a dropped
// connection as Transient, the caller asks Stored where the upload
// stands, checks the answer with Consistent and sends again or starts a
// fresh upload. A PATCH or PUT that the registry redirects is refused,
// since its body is a stream that cannot be sent twice. No error names an
// upload location's query string, which holds distribution's _state token.
package upload

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"sync"

	"github.com/diskimporter/diskimporter/importer/reason"
	"github.com/diskimporter/diskimporter/importer/redact"
)

// Session is one blob upload session in a registry (the OCI distribution
// spec's upload location). Its methods must not run concurrently, except
// Location, which may be called at any time.
type Session struct {
	client *http.Client
	host   string // the registry's hostname

	mu  sync.Mutex
	loc *url.URL // absolute; changes with every answer
}

// maxRedirects is how many redirects a GET or DELETE follows when the
// caller's client sets no policy of its own (net/http's default).
const maxRedirects = 10

// newSession returns a session at loc whose client is a copy of client
// that does not follow a redirect of a PATCH or PUT.
func newSession(client *http.Client, loc *url.URL) *Session {
	c := *client
	next := client.CheckRedirect
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		switch {
		case via[0].Method == http.MethodPatch || via[0].Method == http.MethodPut:
			return http.ErrUseLastResponse
		case next != nil:
			return next(req, via)
		case len(via) >= maxRedirects:
			return fmt.Errorf("stopped after %d redirects", maxRedirects)
		}
		return nil
	}
	return &Session{client: &c, host: loc.Hostname(), loc: loc}
}

// Start opens an upload: POST {base}blobs/uploads/, where base is the
// repository's URL (https://host/v2/repo/), answered 202 with a Location.
// client carries the registry's auth (go-containerregistry's transport
// with push scope).
func Start(ctx context.Context, client *http.Client, base *url.URL) (*Session, error) {
	s := newSession(client, base)
	resp, err := s.do(ctx, http.MethodPost, base.JoinPath("blobs/uploads/"), nil, 0)
	if err != nil {
		return nil, hide(fmt.Errorf("starting an upload: %w", err))
	}
	defer drain(resp)
	switch {
	case resp.StatusCode != http.StatusAccepted:
		err = statusError(resp)
	case resp.Header.Get("Location") == "":
		err = fmt.Errorf("%w: POST %s answered no Location", reason.ErrRegistry, redact.URL(resp.Request.URL.String()))
	default:
		err = s.adopt(resp)
	}
	if err != nil {
		return nil, hide(fmt.Errorf("starting an upload: %w", err))
	}
	return s, nil
}

// Attach returns the session of an upload started earlier (by another
// process) at location, an absolute http or https URL. It sends nothing.
func Attach(client *http.Client, location string) (*Session, error) {
	u, err := url.Parse(location)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("attaching to the upload %s: not an absolute http or https URL", redact.URL(location))
	}
	return newSession(client, u), nil
}

// Location is the session's current upload URL, absolute. It changes with
// every answer (a registry may keep state in it): keep the newest in a
// checkpoint, after Checkpointable.
func (s *Session) Location() string {
	return s.current().String()
}

// current returns a copy of the session's location.
func (s *Session) current() *url.URL {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := *s.loc
	return &u
}

// Stored asks the registry how many bytes of the upload it holds: GET on
// the location, answered 204 with Range "0-END" (or Quay's "bytes=0-END")
// and a fresh Location, which the session adopts. It returns END+1. It
// fails with ErrOffsetUnknown when the answer does not tell (no Range, a
// malformed one, or "0-0"), with ErrUploadUnknown on 404, and with a
// *StatusError on any other answer. Check the result with Consistent.
func (s *Session) Stored(ctx context.Context) (int64, error) {
	n, err := s.stored(ctx)
	return n, hide(err)
}

func (s *Session) stored(ctx context.Context) (int64, error) {
	resp, err := s.do(ctx, http.MethodGet, s.current(), nil, 0)
	if err != nil {
		return -1, fmt.Errorf("asking for the upload's offset: %w", err)
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusNoContent {
		return -1, fmt.Errorf("asking for the upload's offset: %w", classify(statusError(resp)))
	}
	if err := s.adopt(resp); err != nil {
		return -1, err
	}
	n, err := parseRange(resp.Header.Get("Range"))
	if err != nil {
		return -1, fmt.Errorf("%w: GET %s: %w", ErrOffsetUnknown, redact.URL(resp.Request.URL.String()), err)
	}
	return n, nil
}

// Send PATCHes length bytes of body, the blob's bytes from byte from, to
// the location, with Content-Range "from-(from+length-1)" and
// Content-Length length. It reads at most length bytes of body, and
// fails if body ends sooner. The answer must be 202 (or ECR's 201); the
// session adopts its Location.
//
// Send returns how many bytes the answer's Range says the registry holds
// (END+1), or -1 when it does not tell. A Range other than from+length
// comes with an error wrapping ErrOffsetInconsistent (ECR's Range may
// stop advancing). A 416 or RANGE_INVALID answer fails with
// ErrOffsetMismatch, a 404 with ErrUploadUnknown, a 307 or 308 with
// ErrRedirected (the session has moved: send the same bytes again). A
// dropped connection
// or an answer of 408, 429 or 5xx is Transient: ask Stored, then send
// again. A failure to read body is returned wrapped, not Transient.
func (s *Session) Send(ctx context.Context, body io.Reader, from, length int64) (int64, error) {
	n, err := s.send(ctx, body, from, length)
	return n, hide(err)
}

func (s *Session) send(ctx context.Context, body io.Reader, from, length int64) (int64, error) {
	if from < 0 || length < 1 || from > math.MaxInt64-length {
		return -1, fmt.Errorf("cannot send %d bytes from byte %d", length, from)
	}
	end := from + length // one past the last byte sent
	src := &bodyReader{r: body, left: length}
	reqBody := io.Reader(src)
	if wt, ok := body.(io.WriterTo); ok {
		reqBody = writingBody{src, wt}
	}
	resp, err := s.do(ctx, http.MethodPatch, s.current(), reqBody, length,
		"Content-Range", fmt.Sprintf("%d-%d", from, end-1), "Content-Type", "application/octet-stream")
	if err != nil {
		if serr := src.failure(); serr != nil {
			err = serr
		}
		return -1, fmt.Errorf("sending bytes %d-%d of the upload: %w", from, end-1, err)
	}
	defer drain(resp)
	switch resp.StatusCode {
	case http.StatusAccepted, http.StatusCreated:
	case http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		if err := s.adopt(resp); err != nil {
			return -1, err
		}
		return -1, fmt.Errorf("sending bytes %d-%d of the upload: %w to %s", from, end-1, ErrRedirected, redact.URL(s.Location()))
	default:
		return -1, fmt.Errorf("sending bytes %d-%d of the upload: %w", from, end-1, classify(statusError(resp)))
	}
	if err := s.adopt(resp); err != nil {
		return -1, err
	}
	n, err := parseRange(resp.Header.Get("Range"))
	switch {
	case err != nil:
		return -1, nil
	case n != end:
		return n, fmt.Errorf("%w: PATCH %s of bytes %d-%d answered Range %s",
			ErrOffsetInconsistent, redact.URL(resp.Request.URL.String()), from, end-1, resp.Header.Get("Range"))
	}
	return n, nil
}

// Commit finishes the upload: PUT on the location with the query
// parameter digest (such as "sha256:…") and no body, answered 201. The
// registry checks the digest against what it holds.
func (s *Session) Commit(ctx context.Context, digest string) error {
	u := s.current()
	if u.RawQuery != "" {
		u.RawQuery += "&"
	}
	u.RawQuery += "digest=" + url.QueryEscape(digest)
	resp, err := s.do(ctx, http.MethodPut, u, nil, 0)
	if err != nil {
		return hide(fmt.Errorf("committing the upload: %w", err))
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusCreated {
		return hide(fmt.Errorf("committing the upload: %w", classify(statusError(resp))))
	}
	return nil
}

// Cancel deletes the upload, for a registry that keeps what it holds
// until then. It is best effort, bounded by ctx; its outcome is ignored.
func (s *Session) Cancel(ctx context.Context) {
	if resp, err := s.do(ctx, http.MethodDelete, s.current(), nil, 0); err == nil {
		drain(resp)
	}
}

// do sends one request to u with header, pairs of names and values. body
// is nil or holds length bytes; it is never replayed.
func (s *Session) do(ctx context.Context, method string, u *url.URL, body io.Reader, length int64, header ...string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, redact.URL(u.String()), err)
	}
	req.ContentLength = length
	req.GetBody = nil
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, requestError(err)
	}
	return resp, nil
}

// drain reads what is left of an answer's body, up to a bound, so that
// its connection can be reused, and closes it.
func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
	resp.Body.Close()
}

// bodyReader hands on at most left bytes of r and fails if r ends
// sooner. net/http may read it in another goroutine.
type bodyReader struct {
	r    io.Reader
	left int64

	mu  sync.Mutex
	err error // the failure of r, if any
}

// errShort is the failure of a body that ended before its length.
var errShort = errors.New("ended early")

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	if err != nil {
		err = b.ended(err)
	}
	return n, err
}

// ended turns the error that ended r, io.EOF included, into the body's:
// io.EOF when every byte came, else a failure kept for failure.
func (b *bodyReader) ended(err error) error {
	switch {
	case err == io.EOF && b.left == 0:
		return io.EOF
	case err == io.EOF:
		err = fmt.Errorf("reading the layer: %w, %d bytes short", errShort, b.left)
	default:
		err = fmt.Errorf("reading the layer: %w", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.err = err
	return err
}

// writingBody is the bodyReader of a body that writes itself
// (io.WriterTo, as the layer does): the connection is handed its buffers
// instead of reading them into one of its own.
type writingBody struct {
	*bodyReader
	wt io.WriterTo
}

// WriteTo hands on the first left bytes the body writes, a failure of the
// body kept for failure and one of w not.
func (b writingBody) WriteTo(w io.Writer) (int64, error) {
	if b.left <= 0 {
		// net/http asks again for what follows the length: nothing,
		// as Read says, and the body is not asked to write its end
		// twice.
		return 0, nil
	}
	lw := &limitedWriter{w: w, left: b.left}
	n, err := b.wt.WriteTo(lw)
	b.left = lw.left
	switch {
	case err == errEnough:
		return n, nil
	case err != nil && err == lw.err:
		return n, err // the connection's
	case err == nil:
		err = io.EOF
	}
	if err = b.ended(err); err == io.EOF {
		err = nil
	}
	return n, err
}

// limitedWriter passes the first left bytes written to it on to w, stops
// the writer with errEnough when it goes past them, and keeps w's error.
type limitedWriter struct {
	w    io.Writer
	left int64
	err  error
}

// errEnough stops a body that writes itself once it wrote what is sent.
var errEnough = errors.New("the bytes being sent are all written")

func (l *limitedWriter) Write(p []byte) (int, error) {
	enough := int64(len(p)) > l.left
	if enough {
		p = p[:l.left]
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	l.err = err
	if err == nil && enough {
		err = errEnough
	}
	return n, err
}

// failure returns the error the body failed with, or nil.
func (b *bodyReader) failure() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}
