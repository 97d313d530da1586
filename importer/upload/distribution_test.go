package upload_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	e2eregistry "github.com/diskimporter/diskimporter/e2e/registry"
	"github.com/diskimporter/diskimporter/importer/redact"
	"github.com/diskimporter/diskimporter/importer/upload"
)

// dropWait bounds how long a test waits for the registry to finish with a
// dropped request; only a broken test waits that long.
const dropWait = 30 * time.Second

// distribution is a running CNCF distribution v3.1.2 with TLS and basic
// auth, reached through a proxy that can cut a connection.
type distribution struct {
	proxy  *cutProxy
	client *http.Client // authenticated, for the proxy's address
	base   *url.URL     // https://PROXY/v2/test/disk/
}

// startDistribution starts the registry and its proxy, or skips t when
// the registry's binary has not been built.
func startDistribution(t *testing.T) *distribution {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a registry process; skipped with -short")
	}
	if !registryBuilt() {
		t.Skipf("the distribution registry binary is not built (.cache/bin/registry or $%s): "+
			"run .ci/run or go install %s@%s", e2eregistry.BinaryEnv, e2eregistry.Module, e2eregistry.Version)
	}
	reg := e2eregistry.StartT(t, e2eregistry.Options{})
	p := newCutProxy(t, reg.Addr)
	repo, err := name.NewRepository(p.addr() + "/test/disk")
	if err != nil {
		t.Fatal(err)
	}
	logged := &logAnswers{t: t, next: &http.Transport{TLSClientConfig: reg.TLSConfig()}}
	rt, err := transport.NewWithContext(t.Context(), repo.Registry, &authn.Basic{Username: reg.Username, Password: reg.Password},
		logged, []string{repo.Scope(transport.PushScope)})
	if err != nil {
		t.Fatal(err)
	}
	return &distribution{proxy: p, client: &http.Client{Transport: rt},
		base: &url.URL{Scheme: "https", Host: p.addr(), Path: "/v2/test/disk/"}}
}

// registryBuilt tells whether e2e/registry finds a built binary without
// building one (which takes minutes).
func registryBuilt() bool {
	if p := os.Getenv(e2eregistry.BinaryEnv); p != "" {
		return true
	}
	dir, err := os.Getwd()
	for err == nil {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			_, err := os.Stat(filepath.Join(dir, ".cache", "bin", "registry"))
			return err == nil
		}
		if parent := filepath.Dir(dir); parent != dir {
			dir = parent
			continue
		}
		break
	}
	return false
}

// logAnswers logs the status line and upload headers of every answer.
type logAnswers struct {
	t    *testing.T
	next http.RoundTripper
}

func (l *logAnswers) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := l.next.RoundTrip(req)
	if err != nil {
		l.t.Logf("%s %s: %v", req.Method, redact.URL(req.URL.String()), redact.Text(err.Error()))
		return nil, err
	}
	l.t.Logf("%s %s (Content-Range %q) → %s; Range %q, Location %s, Docker-Upload-UUID %q",
		req.Method, redact.URL(req.URL.String()), req.Header.Get("Content-Range"), resp.Status,
		resp.Header.Get("Range"), redact.URL(resp.Header.Get("Location")), resp.Header.Get("Docker-Upload-UUID"))
	return resp, nil
}

func TestDistribution(t *testing.T) {
	d := startDistribution(t)
	tests := []struct {
		name string
		run  func(t *testing.T, s *upload.Session)
	}{
		{"nothing stored: 0-0", func(t *testing.T, s *upload.Session) {
			if _, err := s.Stored(t.Context()); !errors.Is(err, upload.ErrOffsetUnknown) {
				t.Errorf("Stored of an empty upload: %v, want ErrOffsetUnknown", err)
			}
		}},
		{"one byte stored: 0-0 too", func(t *testing.T, s *upload.Session) {
			if n, err := s.Send(t.Context(), bytes.NewReader([]byte{1}), 0, 1); n != -1 || err != nil {
				t.Errorf("Send of one byte = %d, %v; want -1 (0-0 says nothing)", n, err)
			}
			if _, err := s.Stored(t.Context()); !errors.Is(err, upload.ErrOffsetUnknown) {
				t.Errorf("Stored after one byte: %v, want ErrOffsetUnknown", err)
			}
		}},
		{"PATCH at a wrong offset", func(t *testing.T, s *upload.Session) {
			if _, err := s.Send(t.Context(), bytes.NewReader(payload(10)), 5, 10); !errors.Is(err, upload.ErrOffsetMismatch) {
				t.Errorf("Send at 5 of an empty upload: %v, want ErrOffsetMismatch", err)
			}
		}},
		{"forgotten upload", func(t *testing.T, s *upload.Session) {
			s.Cancel(t.Context())
			if _, err := s.Stored(t.Context()); !errors.Is(err, upload.ErrUploadUnknown) {
				t.Errorf("Stored after DELETE: %v, want ErrUploadUnknown", err)
			}
			if _, err := s.Send(t.Context(), bytes.NewReader(payload(10)), 0, 10); !errors.Is(err, upload.ErrUploadUnknown) {
				t.Errorf("Send after DELETE: %v, want ErrUploadUnknown", err)
			}
		}},
		{"made-up location", func(t *testing.T, _ *upload.Session) {
			s, err := upload.Attach(d.client, d.base.JoinPath("blobs/uploads", "4f2b7e0c-9d1a-4c3e-8b5f-6a7d8e9f0a1b").String())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Stored(t.Context()); !errors.Is(err, upload.ErrUploadUnknown) {
				t.Errorf("Stored of a made-up upload: %v, want ErrUploadUnknown", err)
			}
		}},
		{"stale location, as a checkpoint may hold", func(t *testing.T, s *upload.Session) {
			stale := s.Location()
			if _, err := s.Send(t.Context(), bytes.NewReader(payload(10)), 0, 10); err != nil {
				t.Fatal(err)
			}
			old, err := upload.Attach(d.client, stale)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := old.Send(t.Context(), bytes.NewReader(payload(20)[10:]), 10, 10); !errors.Is(err, upload.ErrOffsetMismatch) {
				t.Errorf("Send on the stale location: %v, want ErrOffsetMismatch", err)
			}
			if n, err := old.Stored(t.Context()); n != 10 || err != nil {
				t.Fatalf("Stored on the stale location = %d, %v; want 10", n, err)
			}
			if n, err := old.Send(t.Context(), bytes.NewReader(payload(20)[10:]), 10, 10); n != 20 || err != nil {
				t.Errorf("Send on the location Stored adopted = %d, %v; want 20", n, err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := upload.Start(t.Context(), d.client, d.base)
			if err != nil {
				t.Fatal(err)
			}
			tt.run(t, s)
		})
	}
}

// TestDistributionResume drops the PATCH of a blob part-way, asks the
// registry what it stored, sends the rest from there and commits: the
// blob is complete, and the only bytes sent twice are those that were in
// flight when the connection dropped.
func TestDistributionResume(t *testing.T) {
	d := startDistribution(t)
	blob := make([]byte, 8<<20)
	rand.Read(blob)
	size := int64(len(blob))
	digest := fmt.Sprintf("sha256:%x", sha256.Sum256(blob))

	s, err := upload.Start(t.Context(), d.client, d.base)
	if err != nil {
		t.Fatal(err)
	}
	d.proxy.arm(3 << 20)
	first := &countingReader{r: bytes.NewReader(blob)}
	if _, err := s.Send(t.Context(), first, 0, size); !upload.Transient(err) {
		t.Fatalf("Send through a dropped connection: %v, want a Transient error", err)
	}
	d.proxy.waitDropped(t)
	stored, err := s.Stored(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	sent := first.n.Load()
	if err := upload.Consistent(stored, 0, sent); err != nil || stored == 0 {
		t.Fatalf("after the drop: stored %d, sent %d: %v", stored, sent, err)
	}
	rest := &countingReader{r: bytes.NewReader(blob[stored:])}
	if n, err := s.Send(t.Context(), rest, stored, size-stored); n != size || err != nil {
		t.Fatalf("Send of the rest = %d, %v; want %d", n, err, size)
	}
	if err := s.Commit(t.Context(), digest); err != nil {
		t.Fatal(err)
	}
	if err := checkBlob(t, d.client, d.base.JoinPath("blobs", digest), size); err != nil {
		t.Fatal(err)
	}
	if got := rest.n.Load(); got != size-stored {
		t.Errorf("the second PATCH read %d bytes, want %d", got, size-stored)
	}
	t.Logf("blob %d bytes; first PATCH handed out %d, the registry stored %d, so %d were in flight and sent again",
		size, sent, stored, sent-stored)
}

// countingReader counts the bytes it hands out.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// cutProxy forwards loopback TCP connections to a target. Once armed with
// n, it forwards n more bytes from clients, then closes that client's
// connection and half-closes the target's, so that the target reads the
// end of a cut request; once the target has closed the connection (it is
// done with the request), the drop is reported.
type cutProxy struct {
	ln      net.Listener
	target  string
	dropped chan struct{}

	mu     sync.Mutex
	budget int64 // -1 while not armed
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, dropped: make(chan struct{}), budget: -1}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { p.serve(c) })
		}
	})
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

// arm makes the proxy cut after n more bytes from clients.
func (p *cutProxy) arm(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.budget = n
}

// take returns how many of n bytes may be forwarded, and whether the
// connection is to be cut after them.
func (p *cutProxy) take(n int) (int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.budget < 0 {
		return n, false
	}
	m := min(int64(n), p.budget)
	p.budget -= m
	if p.budget > 0 {
		return int(m), false
	}
	p.budget = -1
	return int(m), true
}

// waitDropped waits until the target is done with the cut request.
func (p *cutProxy) waitDropped(t *testing.T) {
	t.Helper()
	select {
	case <-p.dropped:
	case <-time.After(dropWait):
		t.Fatalf("the registry did not finish the dropped request within %v", dropWait)
	}
}

func (p *cutProxy) serve(c net.Conn) {
	defer c.Close()
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer u.Close()
	p.mu.Lock()
	p.conns = append(p.conns, c, u)
	p.mu.Unlock()
	var cut atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(anyway{c}, u) // read the target to its end, whatever becomes of c
		if cut.Load() {
			close(p.dropped)
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		m, last := p.take(n)
		if _, werr := u.Write(buf[:m]); werr != nil || err != nil || last {
			cut.Store(last)
			break
		}
	}
	if cut.Load() {
		c.Close()
	}
	u.(*net.TCPConn).CloseWrite()
	<-done
}

// anyway writes to a connection and ignores its failures.
type anyway struct{ c net.Conn }

func (a anyway) Write(p []byte) (int, error) {
	a.c.Write(p)
	return len(p), nil
}
