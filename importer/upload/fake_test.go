package upload_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/diskimporter/diskimporter/importer/upload"
)

// errAny stands for any error in a table.
var errAny = errors.New("any error")

// secret is the _state token of every fake upload location: no error may
// show it.
const secret = "s3cr3t-state-token"

// uploadPath is the path of every fake upload.
const uploadPath = "/v2/r/blobs/uploads/u"

// request is what a fake registry received.
type request struct {
	Method, Path, RawQuery, ContentRange string
	ContentLength                        int64
	TransferEncoding                     []string
	Body                                 []byte
}

// fake is a registry stand-in on loopback: it reads each request's whole
// body, records the request and answers with its answer.
type fake struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []request
}

// answer answers one request to a fake registry.
type answer func(w http.ResponseWriter, r *http.Request)

func newFake(t *testing.T, a answer) *fake {
	t.Helper()
	f := &fake{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.reqs = append(f.reqs, request{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Content-Range"),
			r.ContentLength, r.TransferEncoding, body})
		f.mu.Unlock()
		a(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

// requests returns what f received so far.
func (f *fake) requests() []request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]request(nil), f.reqs...)
}

// location is the upload location of f that the tests attach to.
func (f *fake) location() string {
	return f.URL + uploadPath + "?_state=" + secret
}

// attach returns a session at f's upload location.
func attach(t *testing.T, f *fake) *upload.Session {
	t.Helper()
	s, err := upload.Attach(f.Client(), f.location())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// reply answers status with the header pairs (name, value) and an empty
// body, or the OCI error body of code when code is not empty.
func reply(status int, code string, header ...string) answer {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.WriteHeader(status)
		if code != "" {
			io.WriteString(w, `{"errors":[{"code":"`+code+`","message":"see `+r.URL.String()+`"}]}`)
		}
	}
}

// drop closes the connection without an answer.
func drop(w http.ResponseWriter, r *http.Request) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err == nil {
		conn.Close()
	}
}

// redirectTo answers with a redirect of status to target's upload path.
func redirectTo(target *fake, status int) answer {
	return func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+uploadPath, status)
	}
}

// checkErr fails t unless err is nil exactly when want is, wraps want,
// is Transient as told, and names no secret.
func checkErr(t *testing.T, err, want error, transient bool) {
	t.Helper()
	if (err == nil) != (want == nil) {
		t.Fatalf("error %v, want %v", err, want)
	}
	if err == nil {
		return
	}
	if want != errAny && !errors.Is(err, want) {
		t.Errorf("error %q does not wrap %q", err, want)
	}
	if got := upload.Transient(err); got != transient {
		t.Errorf("Transient(%q) = %v, want %v", err, got, transient)
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("error %q shows the _state token", err)
	}
}

// payload returns n bytes that differ from one offset to the next.
func payload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// failingReader hands out its bytes, then fails with its error.
type failingReader struct {
	r   *bytes.Reader
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	n, _ := f.r.Read(p)
	if n == 0 {
		return 0, f.err
	}
	return n, nil
}
