// Package redact keeps secrets out of what diskimporter prints: URLs lose
// their user info, query string (a presigned signature) and fragment,
// whether or not they parse, and a Redactor also hides the values it was
// told are secret (a password, a header value) wherever they appear.
// Every message, log line and result a command writes goes through it.
package redact

import (
	"net/url"
	"slices"
	"strings"
	"sync"
)

// Mark replaces what was removed: a query string becomes ?REDACTED, a
// secret value REDACTED.
const Mark = "REDACTED"

// URL returns rawURL without user info and fragment and with its query
// replaced by REDACTED. A string with "://" that does not parse as a URL
// is cut the same way by hand; any other string that is not a URL with a
// host is returned as is.
func URL(rawURL string) string {
	if out, ok := parsed(rawURL); ok {
		return out
	}
	if !strings.Contains(rawURL, "://") {
		return rawURL
	}
	c := cut(rawURL)
	if out, ok := parsed(c); ok {
		return out // what was cut off may have been all that did not parse
	}
	return c
}

// parsed redacts rawURL when it parses as a URL with a scheme and a host.
func parsed(rawURL string) (string, bool) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return "", false
	}
	u.User = nil
	if u.RawQuery != "" {
		u.RawQuery = Mark
	}
	u.ForceQuery = false
	u.Fragment, u.RawFragment = "", ""
	return u.String(), true
}

// cut redacts a string of the form scheme://authority/rest that need not
// parse: the authority loses everything up to its last '@', the rest
// everything from its first '?' (replaced by ?REDACTED) or '#'.
func cut(s string) string {
	i := strings.Index(s, "://")
	head, rest := s[:i+3], s[i+3:]
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority, path := rest[:end], rest[end:]
	if at := strings.LastIndex(authority, "@"); at >= 0 {
		authority = authority[at+1:]
	}
	if q := strings.IndexAny(path, "?#"); q >= 0 {
		query := path[q] == '?'
		path = path[:q]
		if query {
			path += "?" + Mark
		}
	}
	return head + authority + path
}

// Text redacts every URL in free text (an error message, a log line): each
// run of characters around "://" up to a space, a quote or a bracket is
// redacted as URL redacts it.
func Text(s string) string {
	if !strings.Contains(s, "://") {
		return s
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "://")
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		start := i
		for start > 0 && isSchemeByte(s[start-1]) {
			start--
		}
		end := i + 3
		for end < len(s) && !isDelimiter(s[end]) {
			end++
		}
		b.WriteString(s[:start])
		b.WriteString(URL(s[start:end]))
		s = s[end:]
	}
}

func isSchemeByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'
}

// isDelimiter tells whether c ends a URL in free text. A backslash does:
// it is no URL byte, and in JSON it starts the escape of the quote that
// ends the string.
func isDelimiter(c byte) bool {
	return c <= ' ' || c == '"' || c == '\'' || c == '`' || c == '<' || c == '>' || c == '\\' || c == 0x7f
}

// A Redactor redacts URLs in text, as Text does, and hides every value it
// was told is secret. The zero value knows no secret. It is safe for
// concurrent use.
type Redactor struct {
	mu      sync.RWMutex
	secrets []string
}

// minSecret is the shortest value hidden: a shorter one would hide common
// text and tell little to whoever reads it.
const minSecret = 4

// Add makes r hide secret wherever it appears, and its URL-escaped form.
// Values shorter than 4 bytes are not hidden.
func (r *Redactor) Add(secret string) {
	if len(secret) < minSecret {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.secrets = append(r.secrets, secret, url.QueryEscape(secret), url.PathEscape(secret))
	// The longest first: a secret that holds another is hidden whole.
	slices.SortFunc(r.secrets, func(a, b string) int { return len(b) - len(a) })
}

// String returns s with its URLs redacted and every secret replaced by
// REDACTED.
func (r *Redactor) String(s string) string {
	s = Text(s)
	if r == nil {
		return s
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, v := range r.secrets {
		s = strings.ReplaceAll(s, v, Mark)
	}
	return s
}
