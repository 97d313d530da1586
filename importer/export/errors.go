package export

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

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

// NewTransport returns a base transport for Options.Transport: TLS 1.2 or
// later, trusting the PEM bundle caFile besides the system roots (none
// when empty), or no certificate at all with insecureSkipVerify; HTTP/1.1,
// so that parallel Range requests get a TCP connection each (HTTP/2 would
// put them all on one); proxies from the environment; bodies asked for as
// stored.
func NewTransport(caFile string, insecureSkipVerify bool) (*http.Transport, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: insecureSkipVerify}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("%w: source CA file: %w", importer.ErrInvalidOptions, err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: no PEM certificate in source CA file %s", importer.ErrInvalidOptions, caFile)
		}
		tc.RootCAs = pool
	}
	t := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   30 * time.Second,
		ResponseHeaderTimeout: 2 * time.Minute,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   65, // up to 64 connections, and the registry's
		ReadBufferSize:        64 << 10,
		Protocols:             new(http.Protocols),
		DisableCompression:    true,
	}
	t.Protocols.SetHTTP1(true)
	return t, nil
}
