package importer

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
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

// FuzzRedact checks that Redact never panics and is idempotent; that it
// returns a string that is not a URL with a scheme and a host as it is;
// and that of a URL with a host it keeps the scheme, host and path and
// drops the user info, the fragment and the query (which it replaces with
// REDACTED): the password, user name and query of the input do not show in
// the result, unless they are also part of what is kept.
func FuzzRedact(f *testing.F) {
	for _, seed := range []string{
		"https://example.com/disk.img",
		"https://user:secret@example.com:8443/a/b.iso?token=secret#frag",
		"https://token@example.com/disk.img",
		"https://:secret@example.com/",
		"https://user:p%40ss%3Aw0rd@example.com/",
		"HTTPS://User:Secret@EXAMPLE.com/a%2Fb/c%20d.img?X-Amz-Signature=abc&X-Amz-Expires=60",
		"http://a@b@example.com/x",
		"https://[::1]:8443/disk.img?sig=s3cr3t",
		"https://example.com?",
		"https://example.com/p;a=b?#",
		"https://example.com/disk.img?REDACTED",
		"s3://bucket/key?X-Amz-Signature=abc",
		"https://example.com/path with space?q=1",
		"https://exa mple.com/",
		"https://user:pa ss@example.com/",
		"http:opaque?query",
		"//example.com/disk.img?sig=1",
		"file:///var/lib/images/disk.img",
		"docker://registry.example/disks/fedora:41",
		"/var/lib/images/disk.img", "./images/disk with spaces.img", `C:\images\disk.img`, "",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := Redact(s)
		if again := Redact(out); again != out {
			t.Fatalf("Redact(%q) = %q, but Redact(%q) = %q", s, out, out, again)
		}
		u, err := url.Parse(s)
		if err != nil || u.Scheme == "" || u.Host == "" {
			if out != s {
				t.Fatalf("Redact(%q) = %q; want it unchanged, not being a URL with a host", s, out)
			}
			return
		}
		r, err := url.Parse(out)
		if err != nil {
			t.Fatalf("Redact(%q) = %q, which does not parse: %v", s, out, err)
		}
		wantQuery := ""
		if u.RawQuery != "" {
			wantQuery = "REDACTED"
		}
		if r.User != nil || r.Fragment != "" || r.RawQuery != wantQuery {
			t.Fatalf("Redact(%q) = %q: user info %v, fragment %q, query %q", s, out, r.User, r.Fragment, r.RawQuery)
		}
		if r.Scheme != u.Scheme || r.Host != u.Host || r.Path != u.Path {
			t.Fatalf("Redact(%q) = %q: scheme, host and path %q %q %q; want %q %q %q",
				s, out, r.Scheme, r.Host, r.Path, u.Scheme, u.Host, u.Path)
		}
		// What was dropped does not show. A secret with ':', '/' or '?'
		// could straddle the parts kept, such as "s://h" in
		// "https://host"; the structural checks above cover those.
		secrets := []string{u.RawQuery}
		if u.User != nil {
			pw, _ := u.User.Password()
			secrets = append(secrets, pw, u.User.Username(), u.User.String())
		}
		for _, secret := range secrets {
			if secret == "" || strings.ContainsAny(secret, ":/?") {
				continue
			}
			kept := false
			for _, part := range []string{u.Scheme, u.Host, u.Path, u.EscapedPath(), "REDACTED"} {
				kept = kept || strings.Contains(part, secret)
			}
			if !kept && strings.Contains(out, secret) {
				t.Fatalf("Redact(%q) = %q, which shows %q", s, out, secret)
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
		o := Options{Source: "https://example.com/disk.img", Destination: dest, PlainHTTP: plainHTTP}
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
