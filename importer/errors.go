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

	"github.com/diskimporter/diskimporter/layer"
	"github.com/diskimporter/diskimporter/tlsconfig"
)

// Errors returned by Run, wrapped with the details of the failure. Test
// them with errors.Is.
var (
	// ErrInvalidOptions: an option is missing, malformed or conflicts with
	// another.
	ErrInvalidOptions = errors.New("invalid options")
	// ErrInvalidDestination: the destination is not a REGISTRY/REPO:TAG
	// reference.
	ErrInvalidDestination = errors.New("invalid destination")
	// ErrSourceNotFound: the source does not exist (HTTP 404 or 410, or no
	// such file).
	ErrSourceNotFound = errors.New("source not found")
	// ErrSourceUnauthorized: the source refused access (HTTP 401 or 403, or
	// file permissions).
	ErrSourceUnauthorized = errors.New("source refused access")
	// ErrSourceUnavailable: the source could not be reached or answered
	// with an unexpected status.
	ErrSourceUnavailable = errors.New("source unavailable")
	// ErrSourceChanged: the source answered with another length or
	// validator when it was read again.
	ErrSourceChanged = errors.New("source changed while it was imported")
	// ErrShortSource: the source ended before, or went on past, the size it
	// announced.
	ErrShortSource = layer.ErrSizeMismatch
	// ErrUnsupportedFormat: the source holds a format this version does not
	// import.
	ErrUnsupportedFormat = errors.New("unsupported format")
	// ErrCorruptSource: the compressed stream or the disk image header is
	// corrupt or truncated.
	ErrCorruptSource = errors.New("corrupt source")
	// ErrBackingFile: a qcow2 image names a backing file or an external data
	// file, which would make its consumer read files of the host.
	ErrBackingFile = errors.New("disk image refers to another file")
	// ErrTooLarge: the disk is larger than --max-size or its virtual size
	// larger than --max-virtual-size.
	ErrTooLarge = errors.New("disk too large")
	// ErrRegistryUnauthorized: the registry refused the credentials (HTTP
	// 401 or 403).
	ErrRegistryUnauthorized = errors.New("registry refused the credentials")
	// ErrRegistryTLS: the TLS handshake with the registry failed.
	ErrRegistryTLS = errors.New("registry TLS handshake failed")
	// ErrRegistry: the registry could not be reached or failed a request
	// for another reason than credentials or TLS.
	ErrRegistry = errors.New("registry request failed")
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
		return fmt.Errorf("%s: %w: registry %s answered %d; check --username/--password or the Docker config for it: %w",
			stage, ErrRegistryUnauthorized, registry, terr.StatusCode, err)
	case errors.Is(err, tlsconfig.ErrCipherNotPinned):
		return fmt.Errorf("%s: %w: %w", stage, ErrRegistryTLS, err)
	case errors.As(err, &unknownCA), errors.As(err, &verr):
		return fmt.Errorf("%s: %w: the certificate of registry %s is not trusted; give its CA with --ca-file: %w",
			stage, ErrRegistryTLS, registry, err)
	case errors.As(err, &opErr) && opErr.Op == "remote error" && strings.HasSuffix(opErr.Err.Error(), "handshake failure"):
		// crypto/tls reports a received alert as an unexported type.
		return fmt.Errorf("%s: %w: registry %s accepted none of the offered TLS 1.2 ECDHE AES-GCM cipher suites: %w",
			stage, ErrRegistryTLS, registry, err)
	}
	return fmt.Errorf("%s: %w: registry %s: %w", stage, ErrRegistry, registry, err)
}

// reasons maps each error class to the short, machine-readable reason a
// controller reads from the result.
var reasons = []struct {
	err    error
	reason string
}{
	// A cancelled import is reported as such whatever stage noticed it.
	{context.Canceled, "Cancelled"},
	{context.DeadlineExceeded, "Timeout"},
	{ErrInvalidOptions, "InvalidOptions"},
	{ErrInvalidDestination, "InvalidDestination"},
	{ErrSourceNotFound, "SourceNotFound"},
	{ErrSourceUnauthorized, "SourceUnauthorized"},
	{ErrSourceChanged, "SourceChanged"},
	{ErrShortSource, "SourceTruncated"},
	{ErrSourceUnavailable, "SourceUnavailable"},
	{ErrUnsupportedFormat, "UnsupportedFormat"},
	{ErrTooLarge, "TooLarge"},
	{ErrCorruptSource, "CorruptSource"},
	{ErrBackingFile, "BackingFileRejected"},
	{ErrFormatMismatch, "FormatMismatch"},
	{ErrChecksumMismatch, "ChecksumMismatch"},
	{ErrScratchSpace, "ScratchSpace"},
	{ErrRegistryUnauthorized, "Unauthorized"},
	{ErrRegistryTLS, "RegistryTLS"},
	{ErrRegistry, "RegistryError"},
}

// Reason returns a short machine-readable reason for an error returned by
// Run, such as "SourceNotFound" or "Unauthorized"; "RegistryError" for
// other registry failures and "Failed" for anything else.
func Reason(err error) string {
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		return "RegistryError"
	}
	return "Failed"
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
