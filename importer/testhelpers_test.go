package importer_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/testdisk"
	"github.com/diskimporter/diskimporter/tlsconfig"
)

// testTimeout bounds every import a test runs.
const testTimeout = 60 * time.Second

// testRepo and testTag are the destination repository and tag of every test.
const (
	testRepo = "disks/test"
	testTag  = "v1"
)

// anonymousKeychain answers every registry with anonymous access, so that
// the developer's Docker config never matters.
type anonymousKeychain struct{}

func (anonymousKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return authn.Anonymous, nil
}

// diskBytes returns the bytes of a generated test disk of size bytes.
func diskBytes(t *testing.T, size int64) []byte {
	t.Helper()
	b, err := io.ReadAll(testdisk.New(size).Reader())
	if err != nil {
		t.Fatalf("reading test disk: %v", err)
	}
	if int64(len(b)) != size {
		t.Fatalf("test disk is %d bytes, want %d", len(b), size)
	}
	return b
}

// testRegistry is an in-memory registry served over TLS on loopback.
type testRegistry struct {
	srv *httptest.Server
	// reg is the bare in-memory registry, without any middleware, for
	// looking at what was stored.
	reg http.Handler
	// host is HOST:PORT of the server.
	host string
	// caFile is a PEM file holding the server's certificate.
	caFile string

	// plainConns counts connections whose first byte was not a TLS
	// handshake record: plain http sent to the TLS port.
	plainConns atomic.Int64
	// requests counts requests that reached the handler; h2Requests those
	// among them made over HTTP/2.
	requests, h2Requests atomic.Int64
}

type registryConfig struct {
	middleware func(http.Handler) http.Handler
	tlsConfig  *tls.Config
	http2      bool
}

type registryOption func(*registryConfig)

// withMiddleware wraps the in-memory registry in mw.
func withMiddleware(mw func(http.Handler) http.Handler) registryOption {
	return func(c *registryConfig) { c.middleware = mw }
}

// withServerTLS sets the server's TLS configuration (the certificate is
// added by httptest).
func withServerTLS(tc *tls.Config) registryOption {
	return func(c *registryConfig) { c.tlsConfig = tc }
}

// withHTTP2 offers HTTP/2 on the registry.
func withHTTP2() registryOption {
	return func(c *registryConfig) { c.http2 = true }
}

func newTestRegistry(t *testing.T, opts ...registryOption) *testRegistry {
	t.Helper()
	var cfg registryConfig
	for _, o := range opts {
		o(&cfg)
	}
	tr := &testRegistry{reg: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
	var h http.Handler = tr.reg
	if cfg.middleware != nil {
		h = cfg.middleware(h)
	}
	inner := h
	h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tr.requests.Add(1)
		if r.ProtoMajor == 2 {
			tr.h2Requests.Add(1)
		}
		inner.ServeHTTP(w, r)
	})
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Listener = &sniffListener{Listener: srv.Listener, plain: &tr.plainConns}
	srv.TLS = cfg.tlsConfig
	srv.EnableHTTP2 = cfg.http2
	srv.StartTLS()
	t.Cleanup(srv.Close)
	tr.srv = srv
	tr.host = srv.Listener.Addr().String()

	tr.caFile = filepath.Join(t.TempDir(), "registry-ca.pem")
	p := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(tr.caFile, p, 0o600); err != nil {
		t.Fatal(err)
	}
	return tr
}

// destination returns the tag every test imports to.
func (r *testRegistry) destination() string {
	return r.host + "/" + testRepo + ":" + testTag
}

// clientTransport returns a transport that trusts the registry and refuses
// plain http, so that go-containerregistry's http fallback for loopback
// registries never hits the TLS port.
func (r *testRegistry) clientTransport() http.RoundTripper {
	pool := x509.NewCertPool()
	pool.AddCert(r.srv.Certificate())
	return httpsOnlyTransport{&http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

type httpsOnlyTransport struct{ next http.RoundTripper }

func (h httpsOnlyTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		return nil, fmt.Errorf("test transport: refusing %s", req.URL)
	}
	return h.next.RoundTrip(req)
}

// direct sends a request straight to the bare in-memory registry.
func (r *testRegistry) direct(method, path string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	r.reg.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec
}

// tags returns the tags of the test repository, asking the in-memory
// registry directly.
func (r *testRegistry) tags(t *testing.T) []string {
	t.Helper()
	rec := r.direct(http.MethodGet, "/v2/"+testRepo+"/tags/list")
	switch rec.Code {
	case http.StatusNotFound:
		return nil
	case http.StatusOK:
		var list struct {
			Tags []string `json:"tags"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &list); err != nil {
			t.Fatalf("tags list %q: %v", rec.Body.String(), err)
		}
		return list.Tags
	}
	t.Fatalf("tags list answered %d: %s", rec.Code, rec.Body.String())
	return nil
}

// assertNoTag checks that no tag and no manifest exists at the destination.
func (r *testRegistry) assertNoTag(t *testing.T) {
	t.Helper()
	if tags := r.tags(t); len(tags) != 0 {
		t.Errorf("registry holds tags %v of %s after a failed import, want none", tags, testRepo)
	}
	if rec := r.direct(http.MethodHead, "/v2/"+testRepo+"/manifests/"+testTag); rec.Code != http.StatusNotFound {
		t.Errorf("HEAD manifest %s:%s answered %d, want 404", testRepo, testTag, rec.Code)
	}
}

// assertNoPlainHTTP checks that nothing reached the registry in clear text.
func (r *testRegistry) assertNoPlainHTTP(t *testing.T) {
	t.Helper()
	if n := r.plainConns.Load(); n != 0 {
		t.Errorf("registry got %d plain-text (non-TLS) connections, want 0", n)
	}
}

// sniffListener counts accepted connections whose first byte is not a TLS
// handshake record (0x16).
type sniffListener struct {
	net.Listener
	plain *atomic.Int64
}

func (l *sniffListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &sniffConn{Conn: c, plain: l.plain}, nil
}

type sniffConn struct {
	net.Conn
	plain *atomic.Int64
	once  sync.Once
}

func (c *sniffConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.once.Do(func() {
			if p[0] != 0x16 {
				c.plain.Add(1)
			}
		})
	}
	return n, err
}

// testSource is an http server of a disk image that counts its requests.
type testSource struct {
	srv      *httptest.Server
	url      string
	requests atomic.Int64
	gets     atomic.Int64
}

// newTestSource serves h on loopback at /disk.img, counting requests.
func newTestSource(t *testing.T, h http.HandlerFunc) *testSource {
	t.Helper()
	s := &testSource{}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		if r.Method == http.MethodGet {
			s.gets.Add(1)
		}
		h(w, r)
	}))
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.srv.Start()
	t.Cleanup(s.srv.Close)
	s.url = s.srv.URL + "/disk.img"
	return s
}

// serveBytes returns a handler serving data with a length and etag.
func serveBytes(data []byte, etag string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if etag != "" {
			w.Header().Set("ETag", etag)
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "disk.img", time.Time{}, bytes.NewReader(data))
	}
}

// serveDisk returns a handler serving a generated test disk of size bytes.
func serveDisk(size int64) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"testdisk"`)
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "disk.img", time.Time{}, testdisk.New(size).Reader())
	}
}

// baseOptions returns options importing source into reg, trusting reg's
// certificate, with anonymous credentials and no log output, computing the
// disk's sha256 so that tests can check it.
func baseOptions(reg *testRegistry, source string) importer.Options {
	return importer.Options{
		SourceOptions: importer.SourceOptions{Source: source},
		Destination:   reg.destination(),
		RegistryOptions: importer.RegistryOptions{
			RegistryTLS: tlsconfig.Options{CAFile: reg.caFile},
			Keychain:    anonymousKeychain{},
		},
		Logger:     slog.New(slog.DiscardHandler),
		DiskSHA256: true,
	}
}

// testContext returns a context that ends with the test or after
// testTimeout.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}
