package tlsconfig

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// startServer starts a loopback TLS server with the given config (nil for
// the httptest default). The handler records the server-side connection
// state of every request.
func startServer(t *testing.T, cfg *tls.Config) (*httptest.Server, *atomic.Pointer[tls.ConnectionState]) {
	t.Helper()
	var seen atomic.Pointer[tls.ConnectionState]
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.TLS)
		w.WriteHeader(http.StatusNoContent)
	}))
	srv.TLS = cfg
	// Handshake failures are expected in some tests; keep them off stderr.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, &seen
}

// writePEM writes der as a PEM block of the given type into a new file in
// dir and returns its path.
func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// serverCAFile writes the certificate of srv to a CA file.
func serverCAFile(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	return writePEM(t, t.TempDir(), "ca.pem", "CERTIFICATE", srv.Certificate().Raw)
}

// get does one GET to srv with a client using cfg.
func get(t *testing.T, srv *httptest.Server, cfg *tls.Config) error {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: cfg}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := client.Get(srv.URL)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("status %s", resp.Status)
	}
	return nil
}

func mustNew(t *testing.T, o Options) *tls.Config {
	t.Helper()
	cfg, err := New(o)
	if err != nil {
		t.Fatalf("New(%+v): %v", o, err)
	}
	return cfg
}

func TestNegotiatesPinnedSuite(t *testing.T) {
	tests := []struct {
		name        string
		server      *tls.Config
		maxVersion  uint16
		wantVersion uint16
	}{
		{"default server, TLS 1.2", nil, 0, tls.VersionTLS12},
		{"default server, explicit TLS 1.2", nil, tls.VersionTLS12, tls.VersionTLS12},
		{"TLS 1.3 only server", &tls.Config{MinVersion: tls.VersionTLS13}, tls.VersionTLS13, tls.VersionTLS13},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, seen := startServer(t, tt.server)
			cfg := mustNew(t, Options{CAFile: serverCAFile(t, srv), MaxVersion: tt.maxVersion})
			if err := get(t, srv, cfg); err != nil {
				t.Fatalf("GET: %v", err)
			}
			cs := seen.Load()
			if cs == nil {
				t.Fatal("handler did not run")
			}
			if cs.Version != tt.wantVersion {
				t.Errorf("server saw %s, want %s", tls.VersionName(cs.Version), tls.VersionName(tt.wantVersion))
			}
			if !IsAESGCM(cs.CipherSuite) {
				t.Errorf("server saw suite %s, want AES-GCM", tls.CipherSuiteName(cs.CipherSuite))
			}
		})
	}
}

func TestRejectsChaCha20Server(t *testing.T) {
	srv, seen := startServer(t, &tls.Config{
		MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305,
		},
	})
	cfg := mustNew(t, Options{CAFile: serverCAFile(t, srv)})
	err := get(t, srv, cfg)
	if err == nil {
		t.Fatal("GET succeeded against a ChaCha20-only server")
	}
	// The client never offers ChaCha20, so the server aborts the handshake
	// with a handshake_failure alert before any suite is negotiated.
	var opErr *net.OpError
	if !errors.As(err, &opErr) || opErr.Op != "remote error" {
		t.Errorf("GET = %v, want a remote TLS alert", err)
	}
	if seen.Load() != nil {
		t.Error("handler ran")
	}
}

func TestVerifyConnection(t *testing.T) {
	cfg := mustNew(t, Options{MaxVersion: tls.VersionTLS13})
	tests := []struct {
		suite   uint16
		version uint16
		ok      bool
	}{
		{tls.TLS_AES_128_GCM_SHA256, tls.VersionTLS13, true},
		{tls.TLS_AES_256_GCM_SHA384, tls.VersionTLS13, true},
		{tls.TLS_CHACHA20_POLY1305_SHA256, tls.VersionTLS13, false},
		{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.VersionTLS12, true},
		{tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.VersionTLS12, true},
		{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.VersionTLS12, true},
		{tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, tls.VersionTLS12, true},
		{tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, tls.VersionTLS12, false},
		{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.VersionTLS12, false},
		{tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.VersionTLS12, false},
		{tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA, tls.VersionTLS12, false},
	}
	for _, tt := range tests {
		name := tls.CipherSuiteName(tt.suite)
		t.Run(name, func(t *testing.T) {
			err := cfg.VerifyConnection(tls.ConnectionState{CipherSuite: tt.suite, Version: tt.version})
			if tt.ok {
				if err != nil {
					t.Fatalf("VerifyConnection: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrCipherNotPinned) {
				t.Fatalf("VerifyConnection = %v, want ErrCipherNotPinned", err)
			}
			if !strings.Contains(err.Error(), name) {
				t.Errorf("error %q does not name %s", err, name)
			}
		})
	}
}

func TestUntrustedServer(t *testing.T) {
	srv, seen := startServer(t, nil)

	err := get(t, srv, mustNew(t, Options{}))
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &verr) {
		t.Fatalf("GET = %v, want *tls.CertificateVerificationError", err)
	}
	var uerr x509.UnknownAuthorityError
	if !errors.As(err, &uerr) {
		t.Fatalf("GET = %v, want x509.UnknownAuthorityError", err)
	}
	if seen.Load() != nil {
		t.Error("handler ran")
	}

	// InsecureSkipVerify skips the chain check but keeps the pin.
	if err := get(t, srv, mustNew(t, Options{InsecureSkipVerify: true})); err != nil {
		t.Fatalf("GET with InsecureSkipVerify: %v", err)
	}
	if cs := seen.Load(); cs == nil || !IsAESGCM(cs.CipherSuite) {
		t.Errorf("server saw %+v, want an AES-GCM connection", cs)
	}
}

func TestNewBadInputs(t *testing.T) {
	dir := t.TempDir()
	noPEM := filepath.Join(dir, "nopem.pem")
	if err := os.WriteFile(noPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	caCert, caKey := newCA(t)
	certFile, keyFile := newClientCert(t, dir, caCert, caKey)
	_, otherKey := newCA(t)
	otherKeyDER, err := x509.MarshalPKCS8PrivateKey(otherKey)
	if err != nil {
		t.Fatal(err)
	}
	otherKeyFile := writePEM(t, dir, "other.key", "PRIVATE KEY", otherKeyDER)
	missing := filepath.Join(dir, "missing.pem")

	tests := []struct {
		name string
		o    Options
		want string // substring of the error
	}{
		{"missing CA file", Options{CAFile: missing}, "missing.pem"},
		{"CA file without PEM", Options{CAFile: noPEM}, "no PEM certificates found in CA file " + noPEM},
		{"cert without key", Options{ClientCertFile: certFile}, "without a key"},
		{"key without cert", Options{ClientKeyFile: keyFile}, "without a certificate"},
		{"missing client cert", Options{ClientCertFile: missing, ClientKeyFile: keyFile}, "missing.pem"},
		{"mismatched key", Options{ClientCertFile: certFile, ClientKeyFile: otherKeyFile}, "other.key"},
		{"TLS 1.1", Options{MaxVersion: tls.VersionTLS11}, "MaxVersion"},
		{"garbage version", Options{MaxVersion: 0x1234}, "MaxVersion"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := New(tt.o)
			if err == nil {
				t.Fatalf("New(%+v) = %v, want error", tt.o, cfg)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}

	_, err = New(Options{CAFile: missing})
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing CA file: %v does not wrap os.ErrNotExist", err)
	}
}

func TestClientCertificate(t *testing.T) {
	dir := t.TempDir()
	caCert, caKey := newCA(t)
	certFile, keyFile := newClientCert(t, dir, caCert, caKey)
	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(caCert)

	srv, seen := startServer(t, &tls.Config{
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  clientCAs,
	})
	caFile := serverCAFile(t, srv)

	// Without a client certificate the server refuses.
	if err := get(t, srv, mustNew(t, Options{CAFile: caFile})); err == nil {
		t.Fatal("GET without client certificate succeeded")
	}
	if seen.Load() != nil {
		t.Fatal("handler ran without client certificate")
	}

	cfg := mustNew(t, Options{CAFile: caFile, ClientCertFile: certFile, ClientKeyFile: keyFile})
	if err := get(t, srv, cfg); err != nil {
		t.Fatalf("GET with client certificate: %v", err)
	}
	cs := seen.Load()
	if cs == nil || len(cs.PeerCertificates) == 0 {
		t.Fatal("server saw no client certificate")
	}
	if got := cs.PeerCertificates[0].Subject.CommonName; got != "diskimporter-test-client" {
		t.Errorf("server saw client %q", got)
	}
}

// newCA returns a self-signed ECDSA CA certificate and its key.
func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "diskimporter-test-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// newClientCert writes a client certificate signed by ca and its key into
// dir and returns their paths.
func newClientCert(t *testing.T, dir string, ca *x509.Certificate, caKey *ecdsa.PrivateKey) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "diskimporter-test-client"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, dir, "client.pem", "CERTIFICATE", der),
		writePEM(t, dir, "client.key", "PRIVATE KEY", keyDER)
}
