package upload

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"

	"github.com/diskimporter/diskimporter/importer/reason"
	"github.com/diskimporter/diskimporter/importer/redact"
)

// location checks the upload Location loc a registry answered to a
// request for base and returns it as an absolute URL. It refuses a
// Location that does not parse, is not http(s), drops https for http, or
// names a private, loopback or link-local IP address on another host than
// the registry's (a hostile registry must not point the disk's bytes at a
// metadata service).
func location(base *url.URL, registry, loc string) (*url.URL, error) {
	u, err := base.Parse(loc)
	if err != nil {
		return nil, fmt.Errorf("%w: the upload Location %s does not parse", reason.ErrRegistry, redact.URL(loc))
	}
	why := ""
	switch {
	case u.Scheme != "https" && u.Scheme != "http":
		why = "is not an http or https URL"
	case base.Scheme == "https" && u.Scheme == "http":
		why = "drops https for http"
	case privateElsewhere(u.Hostname(), registry):
		why = "names a private address on another host than the registry " + registry
	default:
		return u, nil
	}
	return nil, fmt.Errorf("%w: refusing the upload Location %s: it %s", reason.ErrRegistry, redact.URL(u.String()), why)
}

// privateElsewhere tells whether host is an IP literal of a private,
// loopback, link-local or unspecified address and differs from registry.
func privateElsewhere(host, registry string) bool {
	ip, err := netip.ParseAddr(host)
	return err == nil && !strings.EqualFold(host, registry) &&
		(ip.IsPrivate() || ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsUnspecified())
}

// adopt makes the Location of resp, if any, the session's location.
func (s *Session) adopt(resp *http.Response) error {
	loc := resp.Header.Get("Location")
	if loc == "" {
		return nil
	}
	u, err := location(resp.Request.URL, s.host, loc)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loc = u
	return nil
}

// Checkpointable tells whether location, an upload's Location, may be
// written to a checkpoint file, which must hold no credential: it returns
// an error saying why not if location is not an absolute URL, carries
// user info, names another host than registryHost (the registry's
// host[:port] as in image references), or carries query parameters other
// than distribution's _state.
func Checkpointable(location, registryHost string) error {
	u, err := url.Parse(location)
	if err != nil || !u.IsAbs() || u.Host == "" {
		return errors.New("the upload location is not an absolute URL")
	}
	if u.User != nil {
		return errors.New("the upload location carries user info")
	}
	if !strings.EqualFold(u.Host, registryHost) {
		return fmt.Errorf("the upload location names the host %s, not the registry %s", u.Host, registryHost)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return errors.New("the upload location's query string does not parse")
	}
	var other []string
	for k := range q {
		if k != "_state" {
			other = append(other, k)
		}
	}
	if len(other) > 0 {
		slices.Sort(other)
		return fmt.Errorf("the upload location carries query parameters other than _state (%s), which may hold a credential",
			strings.Join(other, ", "))
	}
	return nil
}
