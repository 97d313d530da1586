package redact

import (
	"net/url"
	"strings"
	"testing"
)

func TestURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"https://example.com/disk.img", "https://example.com/disk.img"},
		{"http://127.0.0.1:8080/disks/f41.raw", "http://127.0.0.1:8080/disks/f41.raw"},
		{"https://user:secret@example.com/disk.img", "https://example.com/disk.img"},
		{"https://user@example.com/disk.img", "https://example.com/disk.img"},
		{"https://example.com/disk.img?X-Amz-Signature=secret&X-Amz-Expires=60", "https://example.com/disk.img?REDACTED"},
		{"https://user:secret@example.com:8443/a/b.iso?token=secret", "https://example.com:8443/a/b.iso?REDACTED"},
		{"https://example.com/disk.img#secret", "https://example.com/disk.img"},
		{"https://example.com/disk.img?sig=secret#frag", "https://example.com/disk.img?REDACTED"},
		{"docker://user:secret@registry.example/disks/f:41", "docker://registry.example/disks/f:41"},
		// URLs that do not parse: cut by hand, never echoed whole.
		{"http://u:secret@host:22x01/d.img?X-Amz-Signature=secret", "http://host:22x01/d.img?REDACTED"},
		{"https://example.com/%zz/d.img?sig=secret", "https://example.com/%zz/d.img?REDACTED"},
		{"https://u:secret@[::1/d.img?sig=secret", "https://[::1/d.img?REDACTED"},
		{"https://a@b:secret@c/x#secret", "https://c/x"},
		// Not URLs: as they are.
		{"/var/lib/images/disk.img", "/var/lib/images/disk.img"},
		{"./images/disk with spaces.img", "./images/disk with spaces.img"},
		{"file:///var/lib/images/disk.img", "file:///var/lib/images/disk.img"},
		{`C:\images\disk.img`, `C:\images\disk.img`},
		{"", ""},
	} {
		got := URL(tc.in)
		if got != tc.want {
			t.Errorf("URL(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if strings.Contains(got, "secret") {
			t.Errorf("URL(%q) = %q still holds a secret", tc.in, got)
		}
	}
}

func TestText(t *testing.T) {
	t.Parallel()
	in := `GET "https://u:secret@h:1x/d?sig=secret": failed; source docker://me:secret@r.example/a:1 and (http://h/p?q=secret)`
	got := Text(in)
	want := `GET "https://h:1x/d?REDACTED": failed; source docker://r.example/a:1 and (http://h/p?REDACTED`
	if got != want {
		t.Errorf("Text = %q\nwant   %q", got, want)
	}
}

// TestTextInJSON: redacting the JSON of a message keeps it JSON.
func TestTextInJSON(t *testing.T) {
	t.Parallel()
	in := `{"message":"Get \"https://u:pw@h:1/v2/?sig=abc&x=1\": refused"}`
	want := `{"message":"Get \"https://h:1/v2/?REDACTED\": refused"}`
	if got := Text(in); got != want {
		t.Errorf("Text = %s\nwant   %s", got, want)
	}
}

func TestRedactor(t *testing.T) {
	t.Parallel()
	var r Redactor
	r.Add("hunter2-password")
	r.Add("Bearer tok/en+x")
	r.Add("abc") // too short to hide
	got := r.String("auth hunter2-password, header Bearer+tok%2Fen%2Bx, Bearer tok/en+x, abc")
	want := "auth REDACTED, header REDACTED, REDACTED, abc"
	if got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	var none *Redactor
	if got := none.String("https://u:p@h/"); got != "https://h/" {
		t.Errorf("nil Redactor: %q", got)
	}
}

// FuzzRedact checks that URL and Text never panic and are idempotent;
// that URL returns a string without "://" that is not a URL with a host as
// it is; that of a URL with a host it keeps the scheme, host and path and
// drops the user info, the fragment and the query (replaced by REDACTED);
// and that neither shows the password, user name or query of a URL, unless
// they are also part of what is kept.
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
		"http://u:p@host:22x01/d?X-Amz-Signature=abc",
		"https://example.com/%zz?sig=abc",
		"https://u:p@[::1/x?sig=abc",
		"https://example.com/path with space?q=1",
		"http:opaque?query",
		"//example.com/disk.img?sig=1",
		"file:///var/lib/images/disk.img",
		"docker://user:pw@registry.example/disks/fedora:41",
		"/var/lib/images/disk.img", "./images/disk with spaces.img", `C:\images\disk.img`, "",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := URL(s)
		if again := URL(out); again != out {
			t.Fatalf("URL(%q) = %q, but URL(%q) = %q", s, out, out, again)
		}
		if txt := Text(s); Text(txt) != txt {
			t.Fatalf("Text(%q) = %q is not idempotent", s, txt)
		}
		u, err := url.Parse(s)
		if err != nil || u.Scheme == "" || u.Host == "" {
			if !strings.Contains(s, "://") && out != s {
				t.Fatalf("URL(%q) = %q; want it unchanged, not being a URL", s, out)
			}
			if strings.Contains(s, "://") {
				checkCut(t, s, out)
			}
			return
		}
		r, err := url.Parse(out)
		if err != nil {
			t.Fatalf("URL(%q) = %q, which does not parse: %v", s, out, err)
		}
		wantQuery := ""
		if u.RawQuery != "" {
			wantQuery = Mark
		}
		if r.User != nil || r.Fragment != "" || r.RawQuery != wantQuery {
			t.Fatalf("URL(%q) = %q: user info %v, fragment %q, query %q", s, out, r.User, r.Fragment, r.RawQuery)
		}
		if r.Scheme != u.Scheme || r.Host != u.Host || r.Path != u.Path {
			t.Fatalf("URL(%q) = %q: scheme, host and path %q %q %q; want %q %q %q",
				s, out, r.Scheme, r.Host, r.Path, u.Scheme, u.Host, u.Path)
		}
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
			for _, part := range []string{u.Scheme, u.Host, u.Path, u.EscapedPath(), Mark} {
				kept = kept || strings.Contains(part, secret)
			}
			if !kept && strings.Contains(out, secret) {
				t.Fatalf("URL(%q) = %q, which shows %q", s, out, secret)
			}
		}
	})
}

// checkCut checks the redaction of a string with "://" that does not
// parse: no '@' in what follows "://" up to the path, nothing after a '?'
// but REDACTED, no '#'.
func checkCut(t *testing.T, s, out string) {
	t.Helper()
	rest := out[strings.Index(out, "://")+3:]
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	if strings.Contains(rest[:end], "@") {
		t.Fatalf("URL(%q) = %q keeps user info", s, out)
	}
	if q := strings.IndexByte(rest, '?'); q >= 0 && rest[q:] != "?"+Mark {
		t.Fatalf("URL(%q) = %q keeps a query", s, out)
	}
	if strings.Contains(rest, "#") {
		t.Fatalf("URL(%q) = %q keeps a fragment", s, out)
	}
}
