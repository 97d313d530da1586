package importer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/diskimporter/diskimporter/importer/blob"
	"github.com/diskimporter/diskimporter/importer/fetch"
	"github.com/diskimporter/diskimporter/importer/reason"
	"github.com/diskimporter/diskimporter/tlsconfig"
)

// Errors returned by Run, Inspect and export.Export, wrapped with the
// details of the failure: the sentinels of package reason, which every
// stage wraps its failures with, named here for the importer's callers.
// Test them with errors.Is; reason.Of names their Reason.
var (
	ErrInvalidOptions       = reason.ErrInvalidOptions
	ErrInvalidDestination   = reason.ErrInvalidDestination
	ErrSourceNotFound       = reason.ErrSourceNotFound
	ErrSourceUnauthorized   = reason.ErrSourceUnauthorized
	ErrSourceUnavailable    = reason.ErrSourceUnavailable
	ErrSourceChanged        = reason.ErrSourceChanged
	ErrShortSource          = reason.ErrSourceTruncated
	ErrUnsupportedFormat    = reason.ErrUnsupportedFormat
	ErrCorruptSource        = reason.ErrCorruptSource
	ErrBackingFile          = reason.ErrBackingFile
	ErrTooLarge             = reason.ErrTooLarge
	ErrFormatMismatch       = reason.ErrFormatMismatch
	ErrChecksumMismatch     = reason.ErrChecksumMismatch
	ErrScratchSpace         = reason.ErrScratchSpace
	ErrRegistryUnauthorized = reason.ErrRegistryUnauthorized
	ErrRegistryTLS          = reason.ErrRegistryTLS
	ErrRegistry             = reason.ErrRegistry
	// ErrPlainHTTP: a registry speaks plain http, and PlainHTTP (or
	// SourcePlainHTTP) does not allow it. It comes with ErrRegistry, or
	// ErrSourceUnavailable for a registry read from.
	ErrPlainHTTP = errors.New("the registry answers plain http, not https")
)

// registryError adds to err, a failure of stage against the registry, the
// class and the hint a user needs to act on it.
func registryError(stage, registry string, err error) error {
	var terr *transport.Error
	var unknownCA x509.UnknownAuthorityError
	var verr *tls.CertificateVerificationError
	var opErr *net.OpError
	switch {
	case errors.As(err, &terr) && (terr.StatusCode == http.StatusUnauthorized || terr.StatusCode == http.StatusForbidden):
		return fmt.Errorf("%s: %w: registry %s answered %d; check Username/Password or the Keychain: %w",
			stage, ErrRegistryUnauthorized, registry, terr.StatusCode, err)
	case errors.Is(err, tlsconfig.ErrCipherNotPinned):
		return fmt.Errorf("%s: %w: %w", stage, ErrRegistryTLS, err)
	case errors.Is(err, http.ErrSchemeMismatch):
		return fmt.Errorf("%s: %w: %w: registry %s; allow it with PlainHTTP if that is meant: %w",
			stage, ErrRegistry, ErrPlainHTTP, registry, err)
	case errors.As(err, &unknownCA), errors.As(err, &verr):
		return fmt.Errorf("%s: %w: the certificate of registry %s is not trusted; give its CA in RegistryTLS.CAFile: %w",
			stage, ErrRegistryTLS, registry, err)
	case errors.As(err, &opErr) && opErr.Op == "remote error" && strings.HasSuffix(opErr.Err.Error(), "handshake failure"):
		// crypto/tls reports a received alert as an unexported type.
		return fmt.Errorf("%s: %w: registry %s accepted none of the offered TLS 1.2 ECDHE AES-GCM cipher suites: %w",
			stage, ErrRegistryTLS, registry, err)
	}
	return fmt.Errorf("%s: %w: registry %s: %w", stage, ErrRegistry, registry, err)
}

// retryable reports whether go-containerregistry should retry a failed
// registry request: its own rule (temporary errors, dropped connections),
// except for failures of the source, which a retry would only download
// again from byte zero, and for a cancelled import.
func retryable(err error) bool {
	for _, final := range []error{ErrShortSource, ErrSourceUnavailable, ErrSourceChanged, ErrCorruptSource, ErrTooLarge, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, final) {
			return false
		}
	}
	if t, ok := err.(interface{ Temporary() bool }); ok && t.Temporary() {
		return true
	}
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

// ClassifySource wraps err, a failure to find or read the source display
// (an http(s) object, or the disk of an image in a registry), with the
// sentinel of its class: the one classification of source failures that
// import, inspect and export share. An error already classified, io.EOF,
// a cancellation and nil are returned as they are.
func ClassifySource(display string, err error) error {
	var terr *transport.Error
	var se *fetch.StatusError
	status := 0
	switch {
	case errors.As(err, &terr):
		status = terr.StatusCode
	case errors.As(err, &se):
		status = se.Code
	}
	var class error
	switch {
	case err == nil, err == io.EOF, reason.Of(err) != reason.Failed && reason.Of(err) != reason.RegistryError:
		return err
	case errors.Is(err, fetch.ErrChanged):
		class = ErrSourceChanged
	case errors.Is(err, blob.ErrDigest), errors.Is(err, blob.ErrCorrupt):
		class = ErrCorruptSource
	case status == http.StatusUnauthorized, status == http.StatusForbidden:
		class = ErrSourceUnauthorized
	case status == http.StatusNotFound, status == http.StatusGone, errors.Is(err, blob.ErrPlatform):
		class = ErrSourceNotFound
	case errors.Is(err, blob.ErrNoDisk), errors.Is(err, blob.ErrLayer):
		class = ErrUnsupportedFormat
	case errors.Is(err, io.ErrUnexpectedEOF):
		class = ErrShortSource
	case errors.Is(err, http.ErrSchemeMismatch):
		class = fmt.Errorf("%w: %w", ErrSourceUnavailable, ErrPlainHTTP)
	default:
		class = ErrSourceUnavailable
	}
	if display == "" || strings.Contains(err.Error(), display) {
		return fmt.Errorf("%w: %w", class, err)
	}
	return fmt.Errorf("%w: %s: %w", class, display, err)
}
