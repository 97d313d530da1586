package importer

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/diskimporter/diskimporter/importer/fetch"
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
// pinned to AES-GCM, 1 MiB socket write buffers (the default 4 KiB costs
// about 30% of the push rate), HTTP/1.1 unless o.HTTP2, and plain http refused
// unless o.PlainHTTP.
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
	t := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil || o.StallTimeout <= 0 {
				return c, err
			}
			return writeStallConn{c, o.StallTimeout}, nil
		},
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: 30 * time.Second,
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
	if o.PlainHTTP {
		return retryAfter{t}, nil
	}
	return retryAfter{httpsOnly{t}}, nil
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

func (h httpsOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("refusing plain %s to registry %s (use --plain-http to allow it)", req.URL.Scheme, req.URL.Host)
	}
	return h.next.RoundTrip(req)
}
