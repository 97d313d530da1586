package importer

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

// FuzzParseChecksum checks that ParseChecksum accepts exactly
// ALGORITHM:HEX with a known algorithm and a digest of its length, in
// either case, and that what it returns prints as the input in lower case
// and parses back to itself. Anything else is an error wrapping
// ErrInvalidOptions.
func FuzzParseChecksum(f *testing.F) {
	for _, seed := range []string{
		fmt.Sprintf("sha256:%x", sha256.Sum256(nil)),
		fmt.Sprintf("SHA512:%X", sha512.Sum512(nil)),
		fmt.Sprintf("sha1:%x", sha1.Sum(nil)),
		fmt.Sprintf("Md5:%X", md5.Sum(nil)),
		fmt.Sprintf("sha256:%x", sha256.Sum256(nil))[:70],
		fmt.Sprintf("md5:%x:", md5.Sum(nil)),
		"sha256", "sha256:", ":", "", "crc32:00000000", "md5:" + strings.Repeat("g", 32),
		"sha256:" + strings.Repeat("\u00e9", 32), "sha256 :" + strings.Repeat("a", 64),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseChecksum(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidOptions) || c != (Checksum{}) {
				t.Fatalf("ParseChecksum(%q) = %+v, %v; want an error wrapping ErrInvalidOptions alone", s, c, err)
			}
			return
		}
		a, known := checksumAlgorithms[c.Algorithm]
		if !known {
			t.Fatalf("ParseChecksum(%q) = %+v: unknown algorithm", s, c)
		}
		if b, err := hex.DecodeString(c.Hex); err != nil || len(b) != a.size || c.Hex != strings.ToLower(c.Hex) {
			t.Fatalf("ParseChecksum(%q) = %+v: not %d bytes in lower-case hex", s, c, a.size)
		}
		if c.String() != strings.ToLower(s) {
			t.Fatalf("ParseChecksum(%q).String() = %q; want the input in lower case", s, c)
		}
		for _, again := range []string{c.String(), strings.ToUpper(c.String())} {
			if c2, err := ParseChecksum(again); err != nil || c2 != c {
				t.Fatalf("ParseChecksum(%q) = %+v, but ParseChecksum(%q) = %+v, %v", s, c, again, c2, err)
			}
		}
	})
}

// FuzzDestination checks the destination reference as Run's option
// checking sees it: settings either fails with an error wrapping
// ErrInvalidDestination (ErrInvalidOptions for an empty destination; every
// other option is valid here), or returns a tag reference with a registry,
// a repository and a tag, which prints as a reference that parses back to
// the same one, whose scheme is http when PlainHTTP says so, and which is
// never a digest reference.
func FuzzDestination(f *testing.F) {
	for _, seed := range []string{
		"registry.example:5000/disks/fedora:41",
		"registry.example/disks/fedora",
		"localhost/disk", "localhost:5000/disk:v1", "127.0.0.1:5000/a/b/c/d:e",
		"[::1]:5000/disk:tag", "[fe80::1%25eth0]:5000/disk:tag",
		"ubuntu", "library/ubuntu:24.04", "docker.io/library/ubuntu:latest", "index.docker.io/x:y",
		"Registry.Example/disks/fedora:41", "registry.example/Disks/fedora:41",
		"registry.example/disks/fedora@sha256:" + strings.Repeat("a", 64),
		"registry.example/disks/fedora:41@sha256:" + strings.Repeat("a", 64),
		"registry.example/disks/fedora:" + strings.Repeat("t", 128),
		"registry.example/disks/fedora:" + strings.Repeat("t", 129),
		"registry.example/disks/fedora:", "registry.example:/d:t", "registry.example:notaport/d:t",
		"host/a__b:t", "host/a..b:t", "host/-a:t", "http://registry.example/d:t", "not a ref!!", "",
	} {
		f.Add(seed, false)
		f.Add(seed, true)
	}
	f.Fuzz(func(t *testing.T, dest string, plainHTTP bool) {
		o := Options{SourceOptions: SourceOptions{Source: "https://example.com/disk.img"}, Destination: dest, RegistryOptions: RegistryOptions{PlainHTTP: plainHTTP}}
		s, err := o.settings()
		if err != nil {
			want := ErrInvalidDestination
			if dest == "" {
				want = ErrInvalidOptions
			}
			if s != nil || !errors.Is(err, want) {
				t.Fatalf("settings with destination %q = %v, %v; want an error wrapping %v", dest, s, err, want)
			}
			return
		}
		ref := s.ref
		switch {
		case s.Destination != dest:
			t.Fatalf("destination %q became %q", dest, s.Destination)
		case strings.Contains(dest, "@"):
			t.Fatalf("digest reference %q accepted as %q", dest, ref)
		case ref.RegistryStr() == "" || ref.RepositoryStr() == "" || ref.TagStr() == "":
			t.Fatalf("destination %q: registry %q, repository %q, tag %q", dest, ref.RegistryStr(), ref.RepositoryStr(), ref.TagStr())
		case plainHTTP && ref.Scheme() != "http":
			t.Fatalf("destination %q with PlainHTTP: scheme %q", dest, ref.Scheme())
		}
		var opts []name.Option
		if plainHTTP {
			opts = append(opts, name.Insecure)
		}
		again, err := name.NewTag(ref.String(), opts...)
		if err != nil {
			t.Fatalf("destination %q is the reference %q, which does not parse: %v", dest, ref, err)
		}
		if again.Name() != ref.Name() || again.String() != ref.String() || again.Scheme() != ref.Scheme() {
			t.Fatalf("destination %q is the reference %q (%s), which parses as %q (%s)", dest, ref, ref.Scheme(), again, again.Scheme())
		}
	})
}
