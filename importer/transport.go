package importer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/diskimporter/diskimporter/importer/fetch"
	"github.com/diskimporter/diskimporter/importer/tlswrite"
	"github.com/diskimporter/diskimporter/tlsconfig"
)

// tlsState records the version and cipher suite of the last TLS handshake
// with the registry, for the result.
type tlsState struct {
	mu      sync.Mutex
	version uint16
	suite   uint16
}

func (s *tlsState) get() (version, suite string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.version == 0 {
		return "", ""
	}
	return tls.VersionName(s.version), tls.CipherSuiteName(s.suite)
}

// registryTransport returns the transport for every registry request: TLS
// pinned to AES-GCM, 1 MiB write buffers (the default 4 KiB costs about
// 30% of the push rate), HTTP/1.1 unless o.HTTP2, with the TLS records of
// each write sent together, and plain http refused unless o.PlainHTTP.
func registryTransport(o *settings, state *tlsState) (http.RoundTripper, error) {
	tc, err := tlsconfig.New(o.RegistryTLS)
	if err != nil {
		return nil, fmt.Errorf("%w: registry TLS: %w", ErrInvalidOptions, err)
	}
	pin := tc.VerifyConnection
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		if err := pin(cs); err != nil {
			return err
		}
		state.mu.Lock()
		state.version, state.suite = cs.Version, cs.CipherSuite
		state.mu.Unlock()
		return nil
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(o.HTTP2)
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil || o.StallTimeout <= 0 {
			return c, err
		}
		return writeStallConn{c, o.StallTimeout}, nil
	}
	t := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dial,
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: tlsHandshakeTimeout,
		// From the end of the request body: the registry commits a blob
		// of any size in seconds.
		ResponseHeaderTimeout: 5 * time.Minute,
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   4,
		WriteBufferSize:       1 << 20,
		ReadBufferSize:        64 << 10,
		Protocols:             protocols,
	}
	if !o.HTTP2 {
		t.DialTLSContext = batchedTLSDial(dial, tc)
	}
	var rt http.RoundTripper = t
	if !o.PlainHTTP {
		rt = httpsOnly{t}
	}
	return boundedBodies{next: retryAfter{rt}, stall: o.StallTimeout}, nil
}

// tlsHandshakeTimeout bounds a TLS handshake with the registry.
const tlsHandshakeTimeout = 30 * time.Second

// batchedTLSDial returns a DialTLSContext for HTTP/1.1 that dials with
// dial and sends the TLS records of each write in large socket writes
// (package tlswrite): the layer's upload costs a third less CPU per GiB
// than with one socket write per 16 KiB record. tc is the configuration
// net/http would use itself; through a proxy, the TLS to the registry in
// the tunnel is net/http's own, unbatched.
func batchedTLSDial(dial func(ctx context.Context, network, addr string) (net.Conn, error), tc *tls.Config) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		raw, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		cfg := tc.Clone()
		if cfg.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				raw.Close()
				return nil, err
			}
			cfg.ServerName = host
		}
		cfg.NextProtos = []string{"http/1.1"}
		ctx, cancel := context.WithTimeout(ctx, tlsHandshakeTimeout)
		defer cancel()
		return tlswrite.Client(ctx, raw, cfg)
	}
}

// maxRegistryBody bounds every registry response body the import reads: a
// manifest, an index, an image config, a token or an error. containerd
// refuses manifests past 4 MiB too; nothing diskimporter reads from its
// destination comes near that, and a hostile registry could otherwise
// fill the memory of a Job limited to 256 MiB.
const maxRegistryBody = 4 << 20

// errStalled ends the request of a stalled body.
var errStalled = errors.New("registry response stalled")

// errBodyTooLarge: a registry response body passed maxRegistryBody.
var errBodyTooLarge = fmt.Errorf("response body larger than %d MiB (no manifest, config or token is that large)", maxRegistryBody>>20)

// boundedBodies gives every registry response a body that fails past
// maxRegistryBody bytes and, when stall is set, when a read gives no byte
// for stall: a registry that stops sending in the middle of a manifest
// does not hold the import until --timeout.
type boundedBodies struct {
	next  http.RoundTripper
	stall time.Duration // 0: never
}

func (b boundedBodies) RoundTrip(req *http.Request) (*http.Response, error) {
	// Cancelling this context is what interrupts a stalled body read,
	// over HTTP/1.1 and HTTP/2 alike.
	ctx, cancel := context.WithCancelCause(req.Context())
	resp, err := b.next.RoundTrip(req.WithContext(ctx))
	if err != nil {
		cancel(nil)
		return nil, err
	}
	resp.Body = &boundedBody{rc: resp.Body, host: req.URL.Host, stall: b.stall, cancel: cancel}
	return resp, nil
}

// boundedBody is a response body of boundedBodies.
type boundedBody struct {
	rc     io.ReadCloser
	host   string
	stall  time.Duration
	cancel context.CancelCauseFunc
	read   int
}

func (b *boundedBody) Read(p []byte) (int, error) {
	// One byte past the bound tells a body too large from one that fits.
	p = p[:min(len(p), maxRegistryBody+1-b.read)]
	var t *time.Timer
	if b.stall > 0 {
		t = time.AfterFunc(b.stall, func() { b.cancel(errStalled) })
	}
	n, err := b.rc.Read(p)
	b.read += n
	switch {
	case t != nil && !t.Stop():
		// The timer fired: report the stall, not the cancellation
		// net/http saw, since the import was not cancelled.
		return n, fmt.Errorf("registry %s: %w: the response body gave no byte for %s (StallTimeout)", b.host, errStalled, b.stall)
	case b.read > maxRegistryBody:
		return n, fmt.Errorf("registry %s: %w", b.host, errBodyTooLarge)
	}
	return n, err
}

func (b *boundedBody) Close() error {
	err := b.rc.Close()
	b.cancel(nil)
	return err
}

// writeStallConn fails a write that makes no progress for timeout: a
// registry that stops reading the upload does not hold the import for
// ever. The deadline moves with every write, so a long upload is never cut
// short.
type writeStallConn struct {
	net.Conn
	timeout time.Duration
}

func (c writeStallConn) Write(p []byte) (int, error) {
	if err := c.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

// maxRetryAfter caps the wait a registry's Retry-After can impose.
const maxRetryAfter = time.Minute

// retryAfter holds a 429 or 503 answer for as long as its Retry-After asks
// (up to maxRetryAfter) before handing it on: go-containerregistry retries
// those answers, after a backoff of its own that ignores the header.
type retryAfter struct{ next http.RoundTripper }

func (r retryAfter) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.next.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable {
		return resp, err
	}
	if wait := min(fetch.RetryAfter(resp.Header), maxRetryAfter); wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-req.Context().Done():
		}
	}
	return resp, nil
}

// httpsOnly refuses plain-http requests. go-containerregistry tries plain
// http for registries on loopback and private addresses when https fails;
// that would send credentials and the disk in the clear.
type httpsOnly struct{ next http.RoundTripper }

// errPlainRefused is what httpsOnly answers a plain http request with. Its
// text suggests nothing: go-containerregistry tries plain http after any
// https failure (an untrusted certificate, a refused connection), where
// allowing plain http is not the fix.
var errPlainRefused = errors.New("plain http not allowed")

func (h httpsOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("%w: not trying %s to registry %s", errPlainRefused, req.URL.Scheme, req.URL.Host)
	}
	return h.next.RoundTrip(req)
}
