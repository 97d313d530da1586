package upload_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/diskimporter/diskimporter/importer/reason"
	"github.com/diskimporter/diskimporter/importer/upload"
)

func TestStored(t *testing.T) {
	fresh := uploadPath + "?_state=fresh"
	other := newFake(t, reply(http.StatusNoContent, "", "Range", "0-9"))
	tests := []struct {
		name      string
		answer    answer
		want      int64
		wantErr   error
		transient bool
		wantLoc   string // the Location afterwards, relative to the fake; "" for unchanged
	}{
		{"distribution", reply(http.StatusNoContent, "", "Range", "0-99", "Location", fresh), 100, nil, false, fresh},
		{"Quay bytes= prefix", reply(http.StatusNoContent, "", "Range", "bytes=0-100"), 101, nil, false, ""},
		{"0-0: empty or one byte", reply(http.StatusNoContent, "", "Range", "0-0", "Location", fresh), -1, upload.ErrOffsetUnknown, false, fresh},
		{"Quay bytes=0-0", reply(http.StatusNoContent, "", "Range", "bytes=0-0"), -1, upload.ErrOffsetUnknown, false, ""},
		{"no Range", reply(http.StatusNoContent, ""), -1, upload.ErrOffsetUnknown, false, ""},
		{"Range not from 0", reply(http.StatusNoContent, "", "Range", "5-10"), -1, upload.ErrOffsetUnknown, false, ""},
		{"malformed Range", reply(http.StatusNoContent, "", "Range", "0-x"), -1, upload.ErrOffsetUnknown, false, ""},
		{"forgotten: 404", reply(http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN"), -1, upload.ErrUploadUnknown, false, ""},
		{"401", reply(http.StatusUnauthorized, "UNAUTHORIZED"), -1, reason.ErrRegistryUnauthorized, false, ""},
		{"403", reply(http.StatusForbidden, "DENIED"), -1, reason.ErrRegistryUnauthorized, false, ""},
		{"503", reply(http.StatusServiceUnavailable, ""), -1, reason.ErrRegistry, true, ""},
		{"200 is not the spec's 204", reply(http.StatusOK, "", "Range", "0-9"), -1, reason.ErrRegistry, false, ""},
		{"connection dropped", drop, -1, reason.ErrRegistry, true, ""},
		{"Location on another host", reply(http.StatusNoContent, "", "Range", "0-9", "Location", other.URL+fresh), 10, nil, false, other.URL + fresh},
		{"Location at a link-local address", reply(http.StatusNoContent, "", "Range", "0-9", "Location", "http://169.254.169.254/x"), -1, reason.ErrRegistry, false, ""},
		{"Location not http", reply(http.StatusNoContent, "", "Range", "0-9", "Location", "file:///etc/passwd"), -1, reason.ErrRegistry, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, tt.answer)
			s := attach(t, f)
			n, err := s.Stored(t.Context())
			checkErr(t, err, tt.wantErr, tt.transient)
			if n != tt.want {
				t.Errorf("Stored = %d, want %d", n, tt.want)
			}
			checkLocation(t, s, f, tt.wantLoc)
			if reqs := f.requests(); len(reqs) != 1 || reqs[0].Method != http.MethodGet || reqs[0].RawQuery != "_state="+secret {
				t.Errorf("the registry received %+v, want one GET on the location", reqs)
			}
		})
	}
}

// checkLocation fails t unless s's location is want (relative to f, or
// absolute), or f's original location when want is empty.
func checkLocation(t *testing.T, s *upload.Session, f *fake, want string) {
	t.Helper()
	switch {
	case want == "":
		want = f.location()
	case strings.HasPrefix(want, "/"):
		want = f.URL + want
	}
	if got := s.Location(); got != want {
		t.Errorf("Location() = %s, want %s", got, want)
	}
}

func TestSend(t *testing.T) {
	const from, length = 10, 20
	data := payload(from + length + 5)
	srcErr := errors.New("the source broke")
	fresh := uploadPath + "?_state=fresh"
	target := newFake(t, reply(http.StatusAccepted, "", "Range", "0-29"))
	tests := []struct {
		name      string
		answer    answer
		body      func() io.Reader // positioned at from; nil for data[from:]
		want      int64
		wantErr   error
		transient bool
		wantLoc   string
	}{
		{"accepted", reply(http.StatusAccepted, "", "Range", "0-29", "Location", fresh), nil, 30, nil, false, fresh},
		{"ECR: 201", reply(http.StatusCreated, "", "Range", "0-29"), nil, 30, nil, false, ""},
		{"ECR: Range does not advance", reply(http.StatusAccepted, "", "Range", "0-9", "Location", fresh), nil, 10, upload.ErrOffsetInconsistent, false, fresh},
		{"Range past what was sent", reply(http.StatusAccepted, "", "Range", "0-30"), nil, 31, upload.ErrOffsetInconsistent, false, ""},
		{"no Range", reply(http.StatusAccepted, "", "Location", fresh), nil, -1, nil, false, fresh},
		{"Range 0-0", reply(http.StatusAccepted, "", "Range", "0-0"), nil, -1, nil, false, ""},
		{"416", reply(http.StatusRequestedRangeNotSatisfiable, "", "Range", "0-4"), nil, -1, upload.ErrOffsetMismatch, false, ""},
		{"RANGE_INVALID", reply(http.StatusBadRequest, "RANGE_INVALID"), nil, -1, upload.ErrOffsetMismatch, false, ""},
		{"forgotten: 404", reply(http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN"), nil, -1, upload.ErrUploadUnknown, false, ""},
		{"401", reply(http.StatusUnauthorized, "UNAUTHORIZED"), nil, -1, reason.ErrRegistryUnauthorized, false, ""},
		{"408", reply(http.StatusRequestTimeout, ""), nil, -1, reason.ErrRegistry, true, ""},
		{"429", reply(http.StatusTooManyRequests, "TOOMANYREQUESTS"), nil, -1, reason.ErrRegistry, true, ""},
		{"502", reply(http.StatusBadGateway, ""), nil, -1, reason.ErrRegistry, true, ""},
		{"400", reply(http.StatusBadRequest, "SIZE_INVALID"), nil, -1, reason.ErrRegistry, false, ""},
		{"connection dropped", drop, nil, -1, reason.ErrRegistry, true, ""},
		{"302 is not followed", redirectTo(target, http.StatusFound), nil, -1, reason.ErrRegistry, false, ""},
		{"307: the location moves, the bytes go again", redirectTo(target, http.StatusTemporaryRedirect), nil, -1, upload.ErrRedirected, false, target.URL + uploadPath},
		{"308: the same", redirectTo(target, http.StatusPermanentRedirect), nil, -1, upload.ErrRedirected, false, target.URL + uploadPath},
		{"body ends early", reply(http.StatusAccepted, "", "Range", "0-29"),
			func() io.Reader { return bytes.NewReader(data[from : from+length-1]) }, -1, errAny, false, ""},
		{"body fails", reply(http.StatusAccepted, "", "Range", "0-29"),
			func() io.Reader { return &failingReader{bytes.NewReader(data[from : from+5]), srcErr} }, -1, srcErr, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, tt.answer)
			s := attach(t, f)
			var body io.Reader = bytes.NewReader(data[from:]) // longer than length: Send reads length bytes
			if tt.body != nil {
				body = tt.body()
			}
			n, err := s.Send(t.Context(), body, from, length)
			checkErr(t, err, tt.wantErr, tt.transient)
			if n != tt.want {
				t.Errorf("Send = %d, want %d", n, tt.want)
			}
			checkLocation(t, s, f, tt.wantLoc)
			if tt.body == nil {
				checkPatch(t, f.requests(), data[from:from+length], fmt.Sprintf("%d-%d", from, from+length-1))
			}
			if reqs := target.requests(); len(reqs) != 0 {
				t.Errorf("the redirect's target received %+v", reqs)
			}
		})
	}
}

// checkPatch fails t unless reqs is one PATCH on the location with
// Content-Range cr, a Content-Length (not chunked) and body want.
func checkPatch(t *testing.T, reqs []request, want []byte, cr string) {
	t.Helper()
	if len(reqs) != 1 {
		t.Fatalf("the registry received %d requests, want 1 PATCH", len(reqs))
	}
	r := reqs[0]
	if r.Method != http.MethodPatch || r.RawQuery != "_state="+secret || r.ContentRange != cr ||
		r.ContentLength != int64(len(want)) || len(r.TransferEncoding) != 0 || !bytes.Equal(r.Body, want) {
		t.Errorf("the registry received %s ?%s Content-Range %q Content-Length %d Transfer-Encoding %v and %d bytes; "+
			"want PATCH ?_state=%s Content-Range %q Content-Length %d and those bytes",
			r.Method, r.RawQuery, r.ContentRange, r.ContentLength, r.TransferEncoding, len(r.Body), secret, cr, len(want))
	}
}

func TestSendArguments(t *testing.T) {
	f := newFake(t, reply(http.StatusAccepted, ""))
	s := attach(t, f)
	for _, a := range [][2]int64{{0, 0}, {-1, 5}, {5, -1}, {1 << 62, 1 << 62}} {
		if _, err := s.Send(t.Context(), bytes.NewReader(nil), a[0], a[1]); err == nil {
			t.Errorf("Send from %d length %d: no error", a[0], a[1])
		}
	}
	if reqs := f.requests(); len(reqs) != 0 {
		t.Errorf("the registry received %d requests", len(reqs))
	}
}

func TestCommit(t *testing.T) {
	const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	target := newFake(t, reply(http.StatusCreated, ""))
	tests := []struct {
		name    string
		answer  answer
		wantErr error
	}{
		{"created", reply(http.StatusCreated, "", "Location", "/v2/r/blobs/"+digest), nil},
		{"digest refused", reply(http.StatusBadRequest, "DIGEST_INVALID"), reason.ErrRegistry},
		{"forgotten: 404", reply(http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN"), upload.ErrUploadUnknown},
		{"stale offset", reply(http.StatusRequestedRangeNotSatisfiable, "RANGE_INVALID"), upload.ErrOffsetMismatch},
		{"202 is not the spec's 201", reply(http.StatusAccepted, ""), reason.ErrRegistry},
		{"302 is not followed", redirectTo(target, http.StatusFound), reason.ErrRegistry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, tt.answer)
			s := attach(t, f)
			checkErr(t, s.Commit(t.Context(), digest), tt.wantErr, false)
			reqs := f.requests()
			want := "_state=" + secret + "&digest=" + url.QueryEscape(digest)
			if len(reqs) != 1 || reqs[0].Method != http.MethodPut || reqs[0].RawQuery != want || reqs[0].ContentLength != 0 {
				t.Errorf("the registry received %+v, want one PUT ?%s with no body", reqs, want)
			}
			if reqs := target.requests(); len(reqs) != 0 {
				t.Errorf("the redirect's target received %+v", reqs)
			}
			checkLocation(t, s, f, "")
		})
	}
}

func TestStart(t *testing.T) {
	tlsSrv := httptest.NewUnstartedServer(http.NotFoundHandler())
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)
	tests := []struct {
		name    string
		answer  answer
		wantErr error
	}{
		{"accepted", reply(http.StatusAccepted, "", "Location", uploadPath+"?_state="+secret, "Range", "0-0"), nil},
		{"no Location", reply(http.StatusAccepted, ""), reason.ErrRegistry},
		{"401", reply(http.StatusUnauthorized, "UNAUTHORIZED"), reason.ErrRegistryUnauthorized},
		{"unknown repository", reply(http.StatusNotFound, "NAME_UNKNOWN"), reason.ErrRegistry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, tt.answer)
			base, _ := url.Parse(f.URL + "/v2/r/")
			s, err := upload.Start(t.Context(), f.Client(), base)
			checkErr(t, err, tt.wantErr, false)
			if errors.Is(err, upload.ErrUploadUnknown) {
				t.Errorf("Start: %v: an unknown repository is not a forgotten upload", err)
			}
			if err == nil {
				checkLocation(t, s, f, "")
			}
			reqs := f.requests()
			if len(reqs) != 1 || reqs[0].Method != http.MethodPost || reqs[0].Path != "/v2/r/blobs/uploads/" {
				t.Errorf("the registry received %+v, want one POST /v2/r/blobs/uploads/", reqs)
			}
		})
	}
	t.Run("untrusted certificate", func(t *testing.T) {
		base, _ := url.Parse(tlsSrv.URL + "/v2/r/")
		_, err := upload.Start(t.Context(), &http.Client{}, base)
		checkErr(t, err, reason.ErrRegistryTLS, false)
	})
	t.Run("https to http", func(t *testing.T) {
		f := httptest.NewTLSServer(http.HandlerFunc(reply(http.StatusAccepted, "", "Location", "http://"+strings.TrimPrefix(tlsSrv.URL, "https://")+uploadPath)))
		t.Cleanup(f.Close)
		base, _ := url.Parse(f.URL + "/v2/r/")
		_, err := upload.Start(t.Context(), f.Client(), base)
		checkErr(t, err, reason.ErrRegistry, false)
	})
}

// TestFreshLocation shows that every answer's Location is adopted, the
// status answer's included: the fake registry refuses any request that
// does not carry the newest _state it handed out, as distribution does.
func TestFreshLocation(t *testing.T) {
	var state atomic.Int64
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/r/blobs/uploads/" {
			w.Header().Set("Location", uploadPath+"?_state=0")
			w.WriteHeader(http.StatusAccepted)
			return
		}
		if got := r.URL.Query().Get("_state"); got != fmt.Sprint(state.Load()) {
			reply(http.StatusRequestedRangeNotSatisfiable, "RANGE_INVALID")(w, r)
			return
		}
		w.Header().Set("Location", fmt.Sprintf("%s?_state=%d", uploadPath, state.Add(1)))
		if r.Method == http.MethodGet {
			w.Header().Set("Range", "0-4")
		}
		status := map[string]int{http.MethodGet: http.StatusNoContent, http.MethodPatch: http.StatusAccepted,
			http.MethodPut: http.StatusCreated}
		w.WriteHeader(status[r.Method])
	})
	base, _ := url.Parse(f.URL + "/v2/r/")
	s, err := upload.Start(t.Context(), f.Client(), base)
	if err != nil {
		t.Fatal(err)
	}
	steps := []func() error{
		func() error { _, err := s.Send(t.Context(), bytes.NewReader(payload(5)), 0, 5); return err },
		func() error { _, err := s.Stored(t.Context()); return err },
		func() error { _, err := s.Stored(t.Context()); return err },
		func() error { _, err := s.Send(t.Context(), bytes.NewReader(payload(5)), 5, 5); return err },
		func() error { return s.Commit(t.Context(), "sha256:x") },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if got := state.Load(); got != int64(len(steps)) {
		t.Errorf("the registry saw %d requests with the newest _state, want %d", got, len(steps))
	}
}

func TestCancel(t *testing.T) {
	f := newFake(t, reply(http.StatusNoContent, ""))
	attach(t, f).Cancel(t.Context())
	if reqs := f.requests(); len(reqs) != 1 || reqs[0].Method != http.MethodDelete || reqs[0].RawQuery != "_state="+secret {
		t.Errorf("the registry received %+v, want one DELETE on the location", reqs)
	}
}

func TestAttach(t *testing.T) {
	for _, loc := range []string{"", "/v2/r/blobs/uploads/u", "ftp://h/x", "https:///x", "https://h/%zz?_state=" + secret} {
		_, err := upload.Attach(http.DefaultClient, loc)
		if err == nil {
			t.Errorf("Attach(%q): no error", loc)
		} else if strings.Contains(err.Error(), secret) {
			t.Errorf("Attach: error %q shows the _state token", err)
		}
	}
}

// TestCancelled shows that a cancelled context is not Transient: the
// caller gave up, no re-sync can help.
func TestCancelled(t *testing.T) {
	f := newFake(t, reply(http.StatusNoContent, "", "Range", "0-9"))
	s := attach(t, f)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := s.Stored(ctx)
	checkErr(t, err, context.Canceled, false)
	_, err = s.Send(ctx, bytes.NewReader(payload(5)), 0, 5)
	checkErr(t, err, context.Canceled, false)
}
