package upload

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/diskimporter/diskimporter/importer/reason"
	"github.com/diskimporter/diskimporter/importer/redact"
)

// sentinel is an error of this package that is also a registry failure:
// errors.Is(err, reason.ErrRegistry) holds for each.
type sentinel string

func (e sentinel) Error() string { return string(e) }

func (e sentinel) Unwrap() error { return reason.ErrRegistry }

// The errors a Session and Consistent wrap their failures with. Each is
// also a reason.ErrRegistry. On any of them but ErrRedirected the caller
// starts a fresh upload.
var (
	// ErrOffsetUnknown: the registry's answer does not tell how many
	// bytes of the upload it holds (no Range, a malformed one, or "0-0",
	// which distribution sends both for 0 bytes and for 1).
	ErrOffsetUnknown error = sentinel("the registry does not tell how many bytes of the upload it holds")
	// ErrUploadUnknown: the registry does not know the upload (404): it
	// forgot it, or the location was never one of its uploads.
	ErrUploadUnknown error = sentinel("the registry does not know the upload")
	// ErrOffsetMismatch: the registry refused the offset a PATCH started
	// at (416 or RANGE_INVALID).
	ErrOffsetMismatch error = sentinel("the registry refused the upload's offset")
	// ErrOffsetInconsistent: the registry reported an offset that
	// contradicts what it confirmed or what was sent.
	ErrOffsetInconsistent error = sentinel("the registry reported an inconsistent upload offset")
	// ErrRedirected: the registry answered a PATCH with 307 or 308 to
	// another location, which the session now has: the same bytes go
	// there again (a body is never replayed by the transport).
	ErrRedirected error = sentinel("the registry redirected the upload's PATCH")
)

// StatusError is a registry's answer with a status the request does not
// expect. It wraps reason.ErrRegistryUnauthorized for 401 and 403 and
// reason.ErrRegistry otherwise.
type StatusError struct {
	// Method is the request's method.
	Method string
	// URL is the request's URL with its query string redacted.
	URL string
	// StatusCode and Status are the answer's status.
	StatusCode int
	Status     string
	// Codes are the OCI error codes of the answer's body, such as
	// "RANGE_INVALID".
	Codes []string
	// Message is the first error message of the body, redacted.
	Message string
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("%s %s answered %s", e.Method, e.URL, e.Status)
	if len(e.Codes) > 0 {
		msg += " (" + strings.Join(e.Codes, ", ") + ")"
	}
	if e.Message != "" {
		msg += ": " + e.Message
	}
	if e.StatusCode >= 300 && e.StatusCode < 400 {
		msg += "; redirects of an upload's PATCH and PUT are not followed"
	}
	return msg
}

// Unwrap returns the reason the answer is classified as.
func (e *StatusError) Unwrap() error {
	if e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden {
		return reason.ErrRegistryUnauthorized
	}
	return reason.ErrRegistry
}

// maxErrorBody bounds how much of an error answer's body is read.
const maxErrorBody = 64 << 10

// statusError describes resp, reading the OCI error codes of its body.
func statusError(resp *http.Response) *StatusError {
	se := &StatusError{
		Method:     resp.Request.Method,
		URL:        redact.URL(resp.Request.URL.String()),
		StatusCode: resp.StatusCode,
		Status:     resp.Status,
	}
	var body struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.NewDecoder(io.LimitReader(resp.Body, maxErrorBody)).Decode(&body) == nil {
		for _, e := range body.Errors {
			se.Codes = append(se.Codes, e.Code)
		}
		if len(body.Errors) > 0 {
			se.Message = hideQuery(resp.Request.URL, body.Errors[0].Message)
		}
	}
	return se
}

// hideQuery redacts text, a registry's message about a request to u: its
// URLs, and the values of u's query (a _state token), which a registry
// may echo in a relative URL.
func hideQuery(u *url.URL, text string) string {
	var r redact.Redactor
	for _, values := range u.Query() {
		for _, v := range values {
			r.Add(v)
		}
	}
	return r.String(text)
}

// classify wraps the answer of a request to an upload location with this
// package's error that names what it means for the upload.
func classify(se *StatusError) error {
	switch {
	case se.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%w: %w", ErrUploadUnknown, se)
	case se.StatusCode == http.StatusRequestedRangeNotSatisfiable || slices.Contains(se.Codes, "RANGE_INVALID"):
		return fmt.Errorf("%w: %w", ErrOffsetMismatch, se)
	}
	return se
}

// connError is a request that got no answer: the connection failed or
// dropped. It is Transient.
type connError struct{ err error }

func (e *connError) Error() string { return e.err.Error() }

func (e *connError) Unwrap() []error { return []error{e.err, reason.ErrRegistry} }

// requestError wraps the error of a request that got no answer.
func requestError(err error) error {
	var cve *tls.CertificateVerificationError
	var uae x509.UnknownAuthorityError
	var he x509.HostnameError
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.As(err, &cve), errors.As(err, &uae), errors.As(err, &he):
		return fmt.Errorf("%w: %w", reason.ErrRegistryTLS, err)
	}
	return &connError{err}
}

// Transient tells whether err may go away if the caller asks Stored and
// sends again: a connection that failed or dropped, or an answer of 408,
// 429 or 5xx. A cancelled context, a TLS verification failure, a failure
// to read the body given to Send, and any other answer are not.
func Transient(err error) bool {
	var se *StatusError
	var ce *connError
	if errors.As(err, &se) {
		return se.StatusCode == http.StatusRequestTimeout || se.StatusCode == http.StatusTooManyRequests ||
			se.StatusCode >= 500
	}
	return errors.As(err, &ce)
}

// redacted is an error whose text has every URL's query string redacted,
// whatever the errors it wraps say.
type redacted struct{ err error }

func (e *redacted) Error() string { return redact.Text(e.err.Error()) }

func (e *redacted) Unwrap() error { return e.err }

// hide returns err with its URLs redacted, or nil.
func hide(err error) error {
	if err == nil {
		return nil
	}
	return &redacted{err}
}

// Consistent checks the number of bytes a registry reports it holds
// before the client trusts it: never behind confirmed (what the registry
// confirmed before), never past sent (what the client sent). Otherwise
// it returns an error wrapping ErrOffsetInconsistent that names the three
// numbers; the caller then starts a fresh upload.
func Consistent(reported, confirmed, sent int64) error {
	if reported < confirmed || reported > sent {
		return fmt.Errorf("%w: it reports %d bytes stored, having confirmed %d and been sent %d",
			ErrOffsetInconsistent, reported, confirmed, sent)
	}
	return nil
}
