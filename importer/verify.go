package importer

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// sourceSums checks the source bytes as downloaded: it counts them, hashes
// them with what the expected checksums name, and classifies read errors.
// A sha256 costs about as much CPU as the rest of the import, so the
// download's and the disk's sha256 are computed only when asked for (the
// DiskSHA256 option) or needed (an expected sha256 checksum), and once:
// when the disk is the download, the layer's hash of its content serves
// both. Each read of the source (the first, and one per upload retry) gets
// fresh hashes; the sums of the last read that reached the end are kept.
type sourceSums struct {
	display    string
	size       int64
	want       []Checksum
	wantSHA256 bool // DiskSHA256 asked, or a sha256 checksum expected
	diskSHA256 bool // DiskSHA256 asked
	// count, when set, counts the bytes read (while spooling); a
	// decompressor reads on a goroutine of its own, hence the atomic.
	count atomic.Pointer[atomic.Int64]

	mu          sync.Mutex
	diskDiffers bool   // compressed or converted: the download is not the disk
	sha256      string // of the download, when diskDiffers and wantSHA256
	disk        string // sha256 of the disk content, from the layer
	verified    error  // outcome of the last complete read; errNotRead before
	changed     bool   // two complete reads disagreed
}

var errNotRead = errors.New("the source was not read to its end")

func newSourceSums(src *source, want []Checksum, diskSHA256 bool) *sourceSums {
	s := &sourceSums{display: src.display, size: src.size, want: want, diskSHA256: diskSHA256, verified: errNotRead}
	s.wantSHA256 = diskSHA256
	for _, w := range want {
		s.wantSHA256 = s.wantSHA256 || w.Algorithm == "sha256"
	}
	return s
}

// skip is for a source that is not read in order (a qcow2 converted
// through Range requests): it has no download sha256, and no checksum can
// be verified.
func (s *sourceSums) skip() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.diskDiffers, s.wantSHA256, s.verified = true, false, nil
}

// transformed says the disk is not the download (it is decompressed or
// converted): the download's sha256, when wanted, is computed on its own
// by the following reads.
func (s *sourceSums) transformed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.diskDiffers = true
}

// hashDisk tells whether the layer should compute the sha256 of the disk
// content, and give it to recordDisk.
func (s *sourceSums) hashDisk() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.diskSHA256 || s.wantSHA256 && !s.diskDiffers
}

// reader returns r metered, hashed and classified.
func (s *sourceSums) reader(r io.Reader) *meteredReader {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := &meteredReader{r: r, sums: s}
	if s.wantSHA256 && s.diskDiffers {
		m.sha256 = sha256.New()
	}
	if other := otherChecksums(s.want); len(other) > 0 {
		m.check = newChecksummer(other)
	}
	if c := s.count.Load(); c != nil {
		c.Store(0)
	}
	return m
}

// resumed says the disk is read again from the middle, past the download
// checks: allowed only when none needs the download read in order
// (inOrder), and then nothing is left to verify but the disk's sha256,
// which the layer's checkpoints carry.
func (s *sourceSums) resumed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.verified == errNotRead && len(otherChecksums(s.want)) == 0 && !(s.wantSHA256 && s.diskDiffers) {
		s.verified = nil
	}
}

// inOrder tells whether the download must be read whole, in order, for
// its checksums: an expected checksum other than sha256, or a sha256 of a
// download that is not the disk. The layer's checkpoints carry only the
// disk's sha256.
func (s *sourceSums) inOrder() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(otherChecksums(s.want)) > 0 || s.wantSHA256 && s.diskDiffers
}

// otherChecksums are the expected checksums that are not sha256, which is
// computed once for every use.
func otherChecksums(want []Checksum) []Checksum {
	var other []Checksum
	for _, w := range want {
		if w.Algorithm != "sha256" {
			other = append(other, w)
		}
	}
	return other
}

// recordDisk keeps the sha256 of the disk content computed by the layer.
func (s *sourceSums) recordDisk(h v1.Hash) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.disk != "" && s.disk != h.Hex {
		s.changed = true
	}
	s.disk = h.Hex
}

func (s *sourceSums) complete(m *meteredReader) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.sha256 != nil {
		sum := hex.EncodeToString(m.sha256.Sum(nil))
		if s.sha256 != "" && s.sha256 != sum {
			s.changed = true
		}
		s.sha256 = sum
	}
	s.verified = nil
	if m.check != nil {
		s.verified = m.check.verify(s.display)
	}
}

// result returns the sha256 of the download and of the disk (each empty
// when not computed), or an error when the source changed between reads,
// failed an expected checksum, or was never read to its end.
func (s *sourceSums) result() (download, disk string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.changed {
		return "", "", fmt.Errorf("%w: %s gave different bytes on a second read", ErrSourceChanged, s.display)
	}
	if s.verified != nil {
		return "", "", s.verified
	}
	download = s.sha256
	if !s.diskDiffers {
		download = s.disk
	}
	for _, w := range s.want {
		if w.Algorithm == "sha256" && w.Hex != download {
			return "", "", fmt.Errorf("%w: %s has sha256:%s, expected %s; the download is corrupt or the checksum is of another file",
				ErrChecksumMismatch, s.display, download, w)
		}
	}
	return download, s.disk, nil
}

// meteredReader is one read of the source through sourceSums.
type meteredReader struct {
	r      io.Reader
	sums   *sourceSums
	read   int64
	sha256 hash.Hash
	check  *checksummer
	done   bool
}

func (m *meteredReader) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	m.read += int64(n)
	if c := m.sums.count.Load(); c != nil {
		c.Add(int64(n))
	}
	if m.sha256 != nil {
		m.sha256.Write(p[:n])
	}
	if m.check != nil {
		m.check.Write(p[:n])
	}
	switch {
	case err == nil:
	case err == io.EOF:
		if !m.done {
			m.done = true
			m.sums.complete(m)
		}
	case errors.Is(err, io.ErrUnexpectedEOF):
		err = fmt.Errorf("%w: %s ended after %s: %w", ErrShortSource, m.sums.display, progressOf(m.read, m.sums.size), err)
	case errors.Is(err, ErrSourceChanged), errors.Is(err, ErrSourceUnavailable):
		// Classified by the source, which names it and the offset.
	default:
		err = fmt.Errorf("%w: reading %s at byte %d: %w", ErrSourceUnavailable, m.sums.display, m.read, err)
	}
	return n, err
}

// progressOf says how far a read of size bytes (-1: unknown) got.
func progressOf(read, size int64) string {
	if size < 0 {
		return fmt.Sprintf("%d bytes, before its end", read)
	}
	return fmt.Sprintf("%d of %d bytes", read, size)
}
