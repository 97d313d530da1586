package importer_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/reason"
	"github.com/diskimporter/diskimporter/layer"
	"github.com/diskimporter/diskimporter/tlsconfig"
)

func TestReason(t *testing.T) {
	t.Parallel()
	wrap := func(err error) error { return fmt.Errorf("stage: %w", fmt.Errorf("detail: %w", err)) }
	for _, tc := range []struct {
		name string
		err  error
		want reason.Reason
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
		if got := reason.Of(tc.err); got != tc.want {
			t.Errorf("%s: Reason(%q) = %q, want %q", tc.name, tc.err, got, tc.want)
		}
	}
}
