// Package tlsconfig builds the TLS client configuration used to talk to the
// OCI registry.
//
// The configuration pins the cipher to AES-GCM: a software cipher negotiated
// by default once ate most of the CPU during large pushes, while AES-GCM runs
// on the AES-NI/ARMv8 crypto instructions. Go ignores tls.Config.CipherSuites
// for TLS 1.3, so by default the connection is capped at TLS 1.2, where the
// list applies. Whatever the version, a VerifyConnection hook checks the
// negotiated suite and aborts the handshake if it is not AES-GCM.
package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// ErrCipherNotPinned is wrapped by the handshake error returned when the
// negotiated cipher suite is not AES-GCM.
var ErrCipherNotPinned = errors.New("cipher suite outside the AES-GCM pin")

// cipherSuites are the TLS 1.2 suites offered to the server: ECDHE key
// exchange with AES-GCM only.
var cipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
}

// Options configures the registry TLS client. The zero value trusts the
// system roots, presents no client certificate and uses TLS 1.2.
type Options struct {
	// CAFile is a PEM bundle of certificates trusted in addition to the
	// system cert pool. Empty means the system pool only.
	CAFile string

	// InsecureSkipVerify disables verification of the server's certificate
	// chain and host name. False (the default) verifies normally. The
	// AES-GCM pin is enforced either way.
	InsecureSkipVerify bool

	// ClientCertFile and ClientKeyFile are the PEM certificate and private
	// key presented to servers that ask for a client certificate. Set both
	// or neither; empty means no client certificate.
	ClientCertFile, ClientKeyFile string

	// MaxVersion is the highest TLS version offered: tls.VersionTLS12 or
	// tls.VersionTLS13. Zero means tls.VersionTLS12, where the cipher suite
	// list applies. With tls.VersionTLS13 Go chooses the TLS 1.3 suite
	// itself and the pin is enforced only by rejecting a non-AES-GCM suite
	// after negotiation.
	MaxVersion uint16
}

// New returns a client TLS configuration for the registry: TLS 1.2 at
// least, only ECDHE AES-GCM suites offered, and a VerifyConnection hook that
// fails the handshake with an error wrapping ErrCipherNotPinned if any other
// suite is negotiated.
func New(o Options) (*tls.Config, error) {
	maxVersion := o.MaxVersion
	switch maxVersion {
	case 0:
		maxVersion = tls.VersionTLS12
	case tls.VersionTLS12, tls.VersionTLS13:
	default:
		return nil, fmt.Errorf("unsupported TLS MaxVersion %#04x: use tls.VersionTLS12 (or 0) or tls.VersionTLS13", o.MaxVersion)
	}

	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		MaxVersion:         maxVersion,
		CipherSuites:       append([]uint16(nil), cipherSuites...),
		InsecureSkipVerify: o.InsecureSkipVerify,
		// Go has already verified the chain (unless InsecureSkipVerify)
		// when this runs; it only adds the cipher check.
		VerifyConnection: verifyCipher,
	}

	if o.CAFile != "" {
		pool, err := loadCAFile(o.CAFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}

	switch {
	case o.ClientCertFile != "" && o.ClientKeyFile != "":
		cert, err := tls.LoadX509KeyPair(o.ClientCertFile, o.ClientKeyFile)
		if err != nil {
			return nil, fmt.Errorf("load client certificate %s with key %s (both must be PEM and match): %w", o.ClientCertFile, o.ClientKeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	case o.ClientCertFile != "":
		return nil, fmt.Errorf("client certificate %s given without a key: set the client key file too", o.ClientCertFile)
	case o.ClientKeyFile != "":
		return nil, fmt.Errorf("client key %s given without a certificate: set the client certificate file too", o.ClientKeyFile)
	}

	return cfg, nil
}

// loadCAFile returns a copy of the system cert pool with the PEM
// certificates of path added.
func loadCAFile(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CA file must be a readable PEM bundle: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		// No system roots available: trust the CA file alone.
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no PEM certificates found in CA file %s: give a file with one or more \"BEGIN CERTIFICATE\" blocks", path)
	}
	return pool, nil
}

// verifyCipher is the tls.Config.VerifyConnection hook enforcing the pin.
func verifyCipher(cs tls.ConnectionState) error {
	if IsAESGCM(cs.CipherSuite) {
		return nil
	}
	return fmt.Errorf("registry TLS negotiated %s, not AES-GCM: %w", tls.CipherSuiteName(cs.CipherSuite), ErrCipherNotPinned)
}

// IsAESGCM reports whether suite uses AES-GCM for bulk encryption,
// including the TLS 1.3 suites TLS_AES_128_GCM_SHA256 and
// TLS_AES_256_GCM_SHA384.
func IsAESGCM(suite uint16) bool {
	switch suite {
	case tls.TLS_AES_128_GCM_SHA256,
		tls.TLS_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_RSA_WITH_AES_256_GCM_SHA384:
		return true
	}
	return false
}
