package tlsconfig

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestTLS13AgainstOpenSSL: Go's TLS server cannot be limited to one TLS 1.3
// suite, OpenSSL's can. A TLS-1.3-only server that offers AES-GCM is
// reached under --tls-max-version 1.3; one that offers only
// ChaCha20-Poly1305 fails the handshake with an error that names the suite.
func TestTLS13AgainstOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not found (Debian: apt-get install openssl)")
	}
	dir := t.TempDir()
	certFile, keyFile := serverCert(t, dir)
	for _, tc := range []struct {
		suite   string
		wantErr bool
	}{
		{"TLS_AES_128_GCM_SHA256", false},
		{"TLS_AES_256_GCM_SHA384", false},
		{"TLS_CHACHA20_POLY1305_SHA256", true},
	} {
		t.Run(tc.suite, func(t *testing.T) {
			addr := startOpenSSL(t, openssl, certFile, keyFile, tc.suite)
			cfg := mustNew(t, Options{CAFile: certFile, MaxVersion: tls.VersionTLS13})
			cfg.ServerName = "127.0.0.1"
			conn, err := (&tls.Dialer{Config: cfg}).DialContext(context.Background(), "tcp", addr)
			if tc.wantErr {
				if err == nil {
					conn.Close()
					t.Fatalf("handshake with a %s-only server succeeded", tc.suite)
				}
				if !errors.Is(err, ErrCipherNotPinned) || !strings.Contains(err.Error(), tc.suite) {
					t.Errorf("error %q does not wrap ErrCipherNotPinned and name %s", err, tc.suite)
				}
				return
			}
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			defer conn.Close()
			cs := conn.(*tls.Conn).ConnectionState()
			if cs.Version != tls.VersionTLS13 || tls.CipherSuiteName(cs.CipherSuite) != tc.suite {
				t.Errorf("negotiated %s %s, want TLS 1.3 %s", tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite), tc.suite)
			}
		})
	}
}

// startOpenSSL runs openssl s_server on a free loopback port, TLS 1.3 with
// only suite, until the test ends, and returns its address.
func startOpenSSL(t *testing.T, openssl, certFile, keyFile, suite string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, openssl, "s_server", "-quiet", "-accept", addr, "-cert", certFile, "-key", keyFile,
		"-tls1_3", "-ciphersuites", suite, "-www")
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	for range 100 {
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			c.Close()
			return addr
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("openssl s_server did not listen on %s", addr)
	return ""
}

// serverCert writes a self-signed certificate for 127.0.0.1 and its key.
func serverCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "openssl-test-server"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, dir, "cert.pem", "CERTIFICATE", der), writePEM(t, dir, "key.pem", "PRIVATE KEY", keyDER)
}
