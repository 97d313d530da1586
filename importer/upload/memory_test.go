package upload_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/diskimporter/diskimporter/importer/reason"
	"github.com/diskimporter/diskimporter/importer/upload"
)

// TestInMemoryRegistry runs the simple path against go-containerregistry's
// in-memory registry, and records what it does not support: it takes
// PATCHes with Content-Range (416 at another start), but has no upload
// status (a GET on the location is read as a blob GET: 400 NAME_INVALID),
// so resuming is tested against distribution and fakes instead.
func TestInMemoryRegistry(t *testing.T) {
	blob := payload(1<<20 + 3)
	digest := fmt.Sprintf("sha256:%x", sha256.Sum256(blob))
	half := int64(len(blob) / 2)
	size := int64(len(blob))
	tests := []struct {
		name string
		run  func(t *testing.T, s *upload.Session) error
	}{
		{"one PATCH", func(t *testing.T, s *upload.Session) error {
			return sendAll(t, s, blob, [][2]int64{{0, size}}, digest)
		}},
		{"two PATCHes", func(t *testing.T, s *upload.Session) error {
			return sendAll(t, s, blob, [][2]int64{{0, half}, {half, size - half}}, digest)
		}},
		{"PATCH at another offset: 416", func(t *testing.T, s *upload.Session) error {
			_, err := s.Send(t.Context(), bytes.NewReader(blob), 1, 10)
			if !errors.Is(err, upload.ErrOffsetMismatch) {
				t.Errorf("Send at 1 of an empty upload: %v, want ErrOffsetMismatch", err)
			}
			return nil
		}},
		{"no upload status", func(t *testing.T, s *upload.Session) error {
			_, err := s.Stored(t.Context())
			var se *upload.StatusError
			if !errors.As(err, &se) || se.StatusCode != http.StatusBadRequest || !errors.Is(err, reason.ErrRegistry) {
				t.Errorf("Stored: %v, want the in-memory registry's 400", err)
			}
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
			t.Cleanup(srv.Close)
			base, _ := url.Parse(srv.URL + "/v2/test/disk/")
			s, err := upload.Start(t.Context(), srv.Client(), base)
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.run(t, s); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// sendAll sends the parts (from, length) of blob in turn and commits it,
// checking each answer's Range and that the registry then holds blob
// under digest.
func sendAll(t *testing.T, s *upload.Session, blob []byte, parts [][2]int64, digest string) error {
	t.Helper()
	for _, p := range parts {
		n, err := s.Send(t.Context(), bytes.NewReader(blob[p[0]:]), p[0], p[1])
		if err != nil {
			return err
		}
		if n != p[0]+p[1] {
			t.Errorf("Send %d+%d: the registry reports %d bytes stored", p[0], p[1], n)
		}
	}
	if err := s.Commit(t.Context(), digest); err != nil {
		return err
	}
	loc, _ := url.Parse(s.Location())
	return checkBlob(t, http.DefaultClient, loc.ResolveReference(&url.URL{Path: "/v2/test/disk/blobs/" + digest}), int64(len(blob)))
}

// checkBlob fails t unless HEAD u answers 200 with Content-Length size.
func checkBlob(t *testing.T, c *http.Client, u *url.URL, size int64) error {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodHead, u.String(), nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Length") != strconv.FormatInt(size, 10) {
		t.Errorf("HEAD %s: %s, Content-Length %s; want 200 and %d", u.Path, resp.Status, resp.Header.Get("Content-Length"), size)
	}
	return nil
}
