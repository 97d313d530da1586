package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// signalBound is how long the binary may take to exit after SIGTERM.
const signalBound = 5 * time.Second

// stallPoint holds requests that stall until the client goes away or
// release is closed, and tells the test when the first one arrived.
type stallPoint struct {
	reached chan struct{}
	release chan struct{}
}

func newStallPoint() *stallPoint {
	return &stallPoint{reached: make(chan struct{}, 1), release: make(chan struct{})}
}

// hold signals reached and waits for the client to go away or the test to
// end.
func (sp *stallPoint) hold(r *http.Request) {
	select {
	case sp.reached <- struct{}{}:
	default:
	}
	select {
	case <-r.Context().Done():
	case <-sp.release:
	}
}

// faultProxy is a TLS reverse proxy on loopback in front of the shared
// registry: stall decides which requests it holds (by answering them
// itself and returning true). Its certificate is in caFile.
type faultProxy struct {
	addr, caFile string
}

func newFaultProxy(t *testing.T, stall func(w http.ResponseWriter, r *http.Request) bool) *faultProxy {
	t.Helper()
	target := &url.URL{Scheme: "https", Host: reg.Addr}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = regTransport(reg)
	rp.ErrorLog = log.New(io.Discard, "", 0)
	var self string // the proxy's address, once it listens
	rp.ModifyResponse = func(resp *http.Response) error {
		// Upload locations name the registry: keep the client on the
		// proxy.
		if loc := resp.Header.Get("Location"); loc != "" {
			resp.Header.Set("Location", strings.Replace(loc, reg.Addr, self, 1))
		}
		return nil
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !stall(w, r) {
			r.Host = reg.Addr
			rp.ServeHTTP(w, r)
		}
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = &tls.Config{NextProtos: []string{"http/1.1"}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	self = srv.Listener.Addr().String()
	p := &faultProxy{addr: self, caFile: filepath.Join(t.TempDir(), "proxy-ca.pem")}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(p.caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSignalEveryPhase stalls an import in each phase in turn (the
// registry's ping, token request, layer upload and manifest PUT, through a
// fault proxy in front of the real registry; the source's headers and
// body; the spool of a source without a length), sends SIGTERM once the
// stall is reached, and wants the binary gone within 5 s: exit code 1,
// reason Cancelled in --result-file, no spool file left in --scratch-dir,
// and no tag.
func TestSignalEveryPhase(t *testing.T) {
	needE2E(t)
	t.Parallel()
	for _, tc := range []struct {
		name string
		// registry stalls a registry request (true) or lets the proxy
		// forward it; nil: the registry is reached directly.
		registry func(sp *stallPoint, w http.ResponseWriter, r *http.Request) bool
		// source stalls the source; nil: the shared source's raw8.img.
		source http.HandlerFunc
	}{
		{name: "registry ping", registry: func(sp *stallPoint, w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != "/v2/" {
				return false
			}
			sp.hold(r)
			return true
		}},
		{name: "registry token", registry: func(sp *stallPoint, w http.ResponseWriter, r *http.Request) bool {
			switch r.URL.Path {
			case "/v2/":
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="https://%s/token",service="signal"`, r.Host))
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			case "/token":
				sp.hold(r)
			default:
				return false
			}
			return true
		}},
		{name: "registry upload", registry: func(sp *stallPoint, w http.ResponseWriter, r *http.Request) bool {
			if r.Method != http.MethodPatch {
				return false
			}
			sp.hold(r) // the layer's body is not read
			return true
		}},
		{name: "registry manifest", registry: func(sp *stallPoint, w http.ResponseWriter, r *http.Request) bool {
			if r.Method != http.MethodPut || !strings.Contains(r.URL.Path, "/manifests/") {
				return false
			}
			io.Copy(io.Discard, r.Body)
			sp.hold(r)
			return true
		}},
		{name: "source headers"},
		{name: "source body"},
		{name: "spool"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sp := newStallPoint()
			host, caFile := reg.Addr, reg.CAFile
			if tc.registry != nil {
				p := newFaultProxy(t, func(w http.ResponseWriter, r *http.Request) bool { return tc.registry(sp, w, r) })
				host, caFile = p.addr, p.caFile
			}
			source := src.URL + "/raw8.img"
			if tc.registry == nil {
				source = stallingSourceURL(t, sp, tc.name)
			}
			// Before the servers close (cleanups run last first): a
			// handler that never read its request body does not see
			// the client go away.
			t.Cleanup(func() { close(sp.release) })
			repo := newRepo(t)
			scratch := t.TempDir()
			resultFile := filepath.Join(t.TempDir(), "result.json")
			args := []string{"--source", source, "--destination", host + "/" + repo + ":v1",
				"--ca-file", caFile, "--log-format", "json", "--result-file", resultFile, "--scratch-dir", scratch}
			r := runUntilSignal(t, sp, args)
			var fail failureResult
			readResultFile(t, resultFile, &fail)
			if r.code != exitImportErr || fail.Reason != "Cancelled" {
				t.Errorf("exit %d, result reason %q; want exit %d, reason Cancelled\n%s", r.code, fail.Reason, exitImportErr, r)
			}
			if entries, _ := os.ReadDir(scratch); len(entries) != 0 {
				t.Errorf("%d files left in --scratch-dir, want none", len(entries))
			}
			checkNoTag(t, reg, repo, "v1")
		})
	}
}

// stallingSourceURL returns the URL of a source that stalls as phase
// says: before its headers, in the middle of a body of known length, or in
// the middle of a body without a length (which the import spools).
func stallingSourceURL(t *testing.T, sp *stallPoint, phase string) string {
	t.Helper()
	half := make([]byte, rawSize/2)
	if _, err := src.raw8.ReadAt(half, 0); err != nil {
		t.Fatal(err)
	}
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch phase {
		case "source body":
			w.Header().Set("Content-Length", strconv.Itoa(rawSize))
		case "spool":
			// No length: the body is spooled to --scratch-dir.
		default:
			sp.hold(r)
			return
		}
		w.Write(half)
		w.(http.Flusher).Flush()
		sp.hold(r)
	}))
	s.Config.ErrorLog = log.New(io.Discard, "", 0)
	t.Cleanup(s.Close)
	return s.URL + "/disk.img"
}

// runUntilSignal runs "diskimporter import ARGS", sends it SIGTERM once
// sp is reached, and waits up to signalBound for it to exit.
func runUntilSignal(t *testing.T, sp *stallPoint, args []string) *run {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), cliTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := command(ctx, childEnv(t, credsEnv(reg)...), args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	r := &run{args: args}
	select {
	case <-sp.reached:
	case err := <-exited:
		r.stdout, r.stderr = stdout.Bytes(), stderr.Bytes()
		t.Fatalf("the import ended (%v) before the stall:\n%s", err, r)
	case <-ctx.Done():
		t.Fatalf("the import never reached the stall")
	}
	code, took, err := terminate(cmd.Process, exited)
	r.code, r.took, r.stdout, r.stderr = code, took, stdout.Bytes(), stderr.Bytes()
	if err != nil {
		t.Fatalf("%v\n%s", err, r)
	}
	t.Logf("exited %v after SIGTERM", r.took.Round(time.Millisecond))
	return r
}

// terminate sends SIGTERM to p, whose Wait reports on exited, and waits up
// to signalBound for it to exit; past that it kills it and fails. It
// returns the exit code and how long the exit took after the signal.
func terminate(p *os.Process, exited <-chan error) (code int, took time.Duration, err error) {
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return 0, 0, err
	}
	start := time.Now()
	select {
	case err = <-exited:
	case <-time.After(signalBound):
		p.Kill()
		<-exited
		return 0, time.Since(start), fmt.Errorf("still running %v after SIGTERM (killed)", signalBound)
	}
	took = time.Since(start)
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return 0, took, nil
	case errors.As(err, &exitErr) && exitErr.Exited():
		return exitErr.ExitCode(), took, nil
	}
	return 0, took, fmt.Errorf("running diskimporter: %w", err)
}
