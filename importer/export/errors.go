package export

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/blob"
	"github.com/diskimporter/diskimporter/importer/fetch"
)

// sourceError classifies a failure to find or read the disk of the image
// display, with the importer's error classes, so that importer.Reason
// names it.
func sourceError(display string, err error) error {
	var terr *transport.Error
	var se *fetch.StatusError
	switch {
	case err == nil, err == io.EOF:
		return err
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.Is(err, blob.ErrDigest):
		return fmt.Errorf("%w: %s: %w", importer.ErrCorruptSource, display, err)
	case errors.As(err, &terr) && (terr.StatusCode == http.StatusUnauthorized || terr.StatusCode == http.StatusForbidden),
		errors.As(err, &se) && (se.Code == http.StatusUnauthorized || se.Code == http.StatusForbidden):
		return fmt.Errorf("%w: %s: %w; check --source-username/--source-password or the Docker config", importer.ErrSourceUnauthorized, display, err)
	case errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound,
		errors.As(err, &se) && (se.Code == http.StatusNotFound || se.Code == http.StatusGone),
		errors.Is(err, blob.ErrPlatform):
		return fmt.Errorf("%w: %s: %w", importer.ErrSourceNotFound, display, err)
	case errors.Is(err, blob.ErrNoDisk), errors.Is(err, blob.ErrLayer):
		return fmt.Errorf("%w: %s: %w", importer.ErrUnsupportedFormat, display, err)
	case errors.Is(err, fetch.ErrChanged):
		return fmt.Errorf("%w: %s: %w", importer.ErrSourceChanged, display, err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: %s: %w", importer.ErrShortSource, display, err)
	}
	return fmt.Errorf("%w: %s: %w", importer.ErrSourceUnavailable, display, err)
}

// NewTransport returns a base transport for Options.Transport: the
// importer's source transport (importer.SourceTransport), with room for up
// to 64 connections.
func NewTransport(caFile string, insecureSkipVerify bool) (*http.Transport, error) {
	return importer.SourceTransport(caFile, insecureSkipVerify, 64)
}
