package importer_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/layer"
	"github.com/diskimporter/diskimporter/tlsconfig"
)

func TestRedact(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in, want string
	}{
		{"https://example.com/disk.img", "https://example.com/disk.img"},
		{"http://127.0.0.1:8080/disks/f41.raw", "http://127.0.0.1:8080/disks/f41.raw"},
		{"https://user:secret@example.com/disk.img", "https://example.com/disk.img"},
		{"https://user@example.com/disk.img", "https://example.com/disk.img"},
		{"https://example.com/disk.img?X-Amz-Signature=secret&X-Amz-Expires=60", "https://example.com/disk.img?REDACTED"},
		{"https://user:secret@example.com:8443/a/b.iso?token=secret", "https://example.com:8443/a/b.iso?REDACTED"},
		{"https://example.com/disk.img#secret", "https://example.com/disk.img"},
		{"https://example.com/disk.img?sig=secret#frag", "https://example.com/disk.img?REDACTED"},
		// Not URLs with a host: returned as they are.
		{"/var/lib/images/disk.img", "/var/lib/images/disk.img"},
		{"disk.img", "disk.img"},
		{"./images/disk with spaces.img", "./images/disk with spaces.img"},
		{"file:///var/lib/images/disk.img", "file:///var/lib/images/disk.img"},
		{`C:\images\disk.img`, `C:\images\disk.img`},
		{"", ""},
	} {
		got := importer.Redact(tc.in)
		if got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if strings.Contains(got, "secret") {
			t.Errorf("Redact(%q) = %q still holds a secret", tc.in, got)
		}
	}
}

func TestReason(t *testing.T) {
	t.Parallel()
	wrap := func(err error) error { return fmt.Errorf("stage: %w", fmt.Errorf("detail: %w", err)) }
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"invalid options", wrap(importer.ErrInvalidOptions), "InvalidOptions"},
		{"invalid destination", wrap(importer.ErrInvalidDestination), "InvalidDestination"},
		{"source not found", wrap(importer.ErrSourceNotFound), "SourceNotFound"},
		{"source unauthorized", wrap(importer.ErrSourceUnauthorized), "SourceUnauthorized"},
		{"source unavailable", wrap(importer.ErrSourceUnavailable), "SourceUnavailable"},
		{"source changed", wrap(importer.ErrSourceChanged), "SourceChanged"},
		{"short source", wrap(importer.ErrShortSource), "SourceTruncated"},
		{"layer size mismatch", wrap(layer.ErrSizeMismatch), "SourceTruncated"},
		{"unsupported format", wrap(importer.ErrUnsupportedFormat), "UnsupportedFormat"},
		{"format mismatch", wrap(importer.ErrFormatMismatch), "FormatMismatch"},
		{"corrupt source", wrap(importer.ErrCorruptSource), "CorruptSource"},
		{"backing file", wrap(importer.ErrBackingFile), "BackingFileRejected"},
		{"too large", wrap(importer.ErrTooLarge), "TooLarge"},
		{"checksum", wrap(importer.ErrChecksumMismatch), "ChecksumMismatch"},
		{"scratch space", wrap(importer.ErrScratchSpace), "ScratchSpace"},
		{"registry failure", wrap(importer.ErrRegistry), "RegistryError"},
		{"registry unauthorized", wrap(importer.ErrRegistryUnauthorized), "Unauthorized"},
		{"registry TLS", wrap(importer.ErrRegistryTLS), "RegistryTLS"},
		{"registry TLS around the cipher pin", fmt.Errorf("x: %w: %w", importer.ErrRegistryTLS, tlsconfig.ErrCipherNotPinned), "RegistryTLS"},
		{"cancelled", wrap(context.Canceled), "Cancelled"},
		{"timeout", wrap(context.DeadlineExceeded), "Timeout"},
		{"registry error", wrap(&transport.Error{StatusCode: http.StatusInternalServerError}), "RegistryError"},
		{"registry error by value chain", fmt.Errorf("uploading: %w", &transport.Error{StatusCode: http.StatusBadRequest}), "RegistryError"},
		{"joined: the first class in the table wins", errors.Join(errors.New("x"), importer.ErrShortSource, importer.ErrSourceChanged), "SourceChanged"},
		{"anything else", errors.New("boom"), "Failed"},
		{"bare pin error", tlsconfig.ErrCipherNotPinned, "Failed"},
	} {
		if got := importer.Reason(tc.err); got != tc.want {
			t.Errorf("%s: Reason(%q) = %q, want %q", tc.name, tc.err, got, tc.want)
		}
	}
}
