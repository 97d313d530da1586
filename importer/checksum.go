package importer

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"strings"
)

// Checksum is an expected digest of the source bytes as downloaded (before
// any decompression).
type Checksum struct {
	// Algorithm is one of sha256, sha512, sha1, md5.
	Algorithm string
	// Hex is the digest in lower-case hexadecimal.
	Hex string
}

func (c Checksum) String() string { return c.Algorithm + ":" + c.Hex }

var checksumAlgorithms = map[string]struct {
	new  func() hash.Hash
	size int
}{
	"sha256": {sha256.New, sha256.Size},
	"sha512": {sha512.New, sha512.Size},
	"sha1":   {sha1.New, sha1.Size},
	"md5":    {md5.New, md5.Size},
}

// ParseChecksum parses ALGORITHM:HEX, such as sha256:9f86d0…, checking the
// algorithm and the digest's length.
func ParseChecksum(s string) (Checksum, error) {
	alg, hexDigest, ok := strings.Cut(s, ":")
	if !ok {
		return Checksum{}, fmt.Errorf("%w: checksum %q: want ALGORITHM:HEX, such as sha256:<64 hex digits>", ErrInvalidOptions, s)
	}
	alg = strings.ToLower(alg)
	a, known := checksumAlgorithms[alg]
	if !known {
		return Checksum{}, fmt.Errorf("%w: checksum %q: unknown algorithm %q (want sha256, sha512, sha1 or md5)", ErrInvalidOptions, s, alg)
	}
	hexDigest = strings.ToLower(hexDigest)
	if b, err := hex.DecodeString(hexDigest); err != nil || len(b) != a.size {
		return Checksum{}, fmt.Errorf("%w: checksum %q: a %s digest is %d hex digits", ErrInvalidOptions, s, alg, 2*a.size)
	}
	return Checksum{Algorithm: alg, Hex: hexDigest}, nil
}

// checksummer hashes the source bytes with every algorithm that an
// expected checksum names.
type checksummer struct {
	want   []Checksum
	hashes []hash.Hash
	w      io.Writer
}

func newChecksummer(want []Checksum) *checksummer {
	c := &checksummer{want: want}
	ws := make([]io.Writer, 0, len(want))
	for _, w := range want {
		h := checksumAlgorithms[w.Algorithm].new()
		c.hashes = append(c.hashes, h)
		ws = append(ws, h)
	}
	c.w = io.MultiWriter(ws...)
	return c
}

// Write hashes p.
func (c *checksummer) Write(p []byte) (int, error) { return c.w.Write(p) }

// verify compares the digests with the expected ones.
func (c *checksummer) verify(display string) error {
	for i, w := range c.want {
		if got := hex.EncodeToString(c.hashes[i].Sum(nil)); got != w.Hex {
			return fmt.Errorf("%w: %s has %s:%s, expected %s; the download is corrupt or the checksum is of another file",
				ErrChecksumMismatch, display, w.Algorithm, got, w)
		}
	}
	return nil
}
