package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real registry process; skipped in -short mode")
	}
}

// client returns an HTTP client that trusts r's CA. forceH2 mirrors
// http.Transport.ForceAttemptHTTP2 (needed for HTTP/2 with a custom
// TLSClientConfig).
func client(r *Registry, forceH2 bool) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   r.TLSConfig(),
			ForceAttemptHTTP2: forceH2,
		},
	}
}

func get(t *testing.T, c *http.Client, url string, auth *Registry) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != nil {
		req.SetBasicAuth(auth.Username, auth.Password)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func assertGone(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("kill(%d, 0) after Stop = %v, want ESRCH", pid, err)
	}
}

func TestStartStop(t *testing.T) {
	skipShort(t)
	t.Parallel()

	start := time.Now()
	r, err := Start(t.Context(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("registry ready on %s after %v (pid %d)", r.Addr, time.Since(start).Round(time.Millisecond), r.Pid())
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = r.Stop()
		}
	})

	if !strings.HasPrefix(r.Addr, "127.0.0.1:") || r.Host != r.Addr {
		t.Errorf("Addr=%q Host=%q, want 127.0.0.1:PORT twice", r.Addr, r.Host)
	}
	if ca, err := os.ReadFile(r.CAFile); err != nil || !bytes.Equal(ca, r.CAPEM) {
		t.Errorf("CAFile %s does not hold CAPEM (err %v)", r.CAFile, err)
	}

	base := "https://" + r.Addr + "/v2/"
	c := client(r, true)

	resp := get(t, c, base, nil)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /v2/ without credentials: %s, want 401", resp.Status)
	}
	if got := resp.Header.Get("WWW-Authenticate"); got != `Basic realm="`+Realm+`"` {
		t.Errorf("WWW-Authenticate = %q", got)
	}

	resp = get(t, c, base, r)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /v2/ with credentials: %s, want 200", resp.Status)
	}
	if resp.TLS == nil || resp.TLS.Version < tls.VersionTLS12 {
		t.Errorf("TLS state %+v, want TLS >= 1.2", resp.TLS)
	} else {
		t.Logf("negotiated %s, %s, ALPN %q, %s", tls.VersionName(resp.TLS.Version),
			tls.CipherSuiteName(resp.TLS.CipherSuite), resp.TLS.NegotiatedProtocol, resp.Proto)
	}
	if resp.Proto != "HTTP/2.0" {
		t.Errorf("default registry with ForceAttemptHTTP2 client: Proto %q, want HTTP/2.0", resp.Proto)
	}

	// The password is checked, not just its presence.
	bad := &Registry{Username: r.Username, Password: r.Password + "x"}
	if resp := get(t, c, base, bad); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /v2/ with wrong password: %s, want 401", resp.Status)
	}

	// A client without the CA must not be able to connect.
	plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{}}
	if _, err := plain.Get(base); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("GET without trusting the CA: err = %v, want a certificate error", err)
	}

	// Storage and http.secret work: monolithic blob upload and read-back.
	uploadBlob(t, c, r, "e2e/smoke", []byte("hello diskimporter"))

	dir, pid := r.Dir, r.Pid()
	stopped = true
	t0 := time.Now()
	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	t.Logf("Stop took %v", time.Since(t0).Round(time.Millisecond))
	assertGone(t, pid)
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp dir %s still exists after Stop (err %v)", dir, err)
	}
	if err := r.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func uploadBlob(t *testing.T, c *http.Client, r *Registry, repo string, data []byte) {
	t.Helper()
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])

	do := func(method, url string, body []byte) *http.Response {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, url, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.SetBasicAuth(r.Username, r.Password)
		if body != nil {
			req.Header.Set("Content-Type", "application/octet-stream")
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		return resp
	}

	resp := do(http.MethodPost, "https://"+r.Addr+"/v2/"+repo+"/blobs/uploads/", nil)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST blob upload: %s, want 202", resp.Status)
	}
	loc, err := resp.Location()
	if err != nil {
		t.Fatalf("upload Location: %v", err)
	}
	q := loc.Query()
	q.Set("digest", digest)
	loc.RawQuery = q.Encode()
	resp = do(http.MethodPut, loc.String(), data)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT blob: %s, want 201", resp.Status)
	}
	resp = do(http.MethodGet, "https://"+r.Addr+"/v2/"+repo+"/blobs/"+digest, nil)
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, data) {
		t.Fatalf("GET blob: %s, %q; want 200, %q", resp.Status, got, data)
	}
}

func TestHTTP1Only(t *testing.T) {
	skipShort(t)
	t.Parallel()

	r := StartT(t, Options{HTTP1Only: true})
	resp := get(t, client(r, true), "https://"+r.Addr+"/v2/", r)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /v2/: %s, want 200", resp.Status)
	}
	if resp.Proto != "HTTP/1.1" {
		t.Errorf("Proto = %q, want HTTP/1.1", resp.Proto)
	}
	if resp.TLS == nil || resp.TLS.NegotiatedProtocol == "h2" {
		t.Errorf("negotiated ALPN %q, want not h2", resp.TLS.NegotiatedProtocol)
	}
}

func TestCPUsAndDir(t *testing.T) {
	skipShort(t)
	if runtime.GOOS != "linux" {
		t.Skip("checks /proc")
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		t.Skip("taskset not installed")
	}
	t.Parallel()

	dir := filepath.Join(t.TempDir(), "reg")
	var logs LockedBuffer
	r, err := Start(t.Context(), Options{CPUs: "0", Dir: dir, LogOutput: &logs})
	if err != nil {
		t.Fatal(err)
	}
	pid := r.Pid()
	comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	if got := strings.TrimSpace(string(comm)); got != "registry" {
		t.Errorf("Pid %d is %q, want the registry itself", pid, got)
	}
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(status, []byte("Cpus_allowed_list:\t0\n")) {
		t.Errorf("registry not pinned to CPU 0:\n%s", status)
	}
	uploadBlob(t, client(r, false), r, "e2e/pinned", []byte("pinned"))
	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	assertGone(t, pid)

	if r.DataDir != filepath.Join(dir, "data") {
		t.Errorf("DataDir = %q", r.DataDir)
	}
	if _, err := os.Stat(filepath.Join(r.DataDir, "docker", "registry", "v2", "repositories", "e2e", "pinned")); err != nil {
		t.Errorf("caller-owned Dir not preserved after Stop: %v", err)
	}
	if !bytes.Contains(logs.Bytes(), []byte("listening on 127.0.0.1:")) {
		t.Errorf("LogOutput did not receive the registry log; got:\n%s", logs.Bytes())
	}
}

// TestStartFailure checks that a registry that dies during startup is
// reported promptly with its output.
func TestStartFailure(t *testing.T) {
	skipShort(t)
	fake := filepath.Join(t.TempDir(), "registry")
	script := "#!/bin/sh\necho 'fake registry: boom-marker' >&2\nexit 3\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(BinaryEnv, fake)

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	start := time.Now()
	r, err := Start(ctx, Options{})
	if err == nil {
		r.Stop()
		t.Fatal("Start with a failing binary succeeded")
	}
	if !strings.Contains(err.Error(), "boom-marker") || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("error lacks the process output/status: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("failure took %v to report, want early exit", d)
	}
}

// takenFirst makes pickPort give a port that is taken, then free ones,
// until the test ends. It returns the taken address and pickPort's calls.
func takenFirst(t *testing.T) (string, *int) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Close() })
	calls := 0
	pickPort = func() (int, error) {
		calls++
		if calls == 1 {
			return busy.Addr().(*net.TCPAddr).Port, nil
		}
		return FreePort()
	}
	t.Cleanup(func() { pickPort = FreePort })
	return busy.Addr().String(), &calls
}

// TestPortRetry: the registry's first port is taken; Start retries with
// another one, for the registry and for its S3 store (MinIO says so and
// exits), and the registry answers.
func TestPortRetry(t *testing.T) {
	skipShort(t)
	for _, tc := range []struct {
		name  string
		s3    bool
		calls int // the store's two, then the registry's
	}{{"registry", false, 2}, {"S3 store", true, 3}} {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{}
			if tc.s3 {
				dir, err := CacheBinDir()
				if err != nil {
					t.Fatal(err)
				}
				if !isExecutableFile(filepath.Join(dir, "minio-"+MinIOVersion)) {
					t.Skip("MinIO is not built: go run ./e2e/setup")
				}
				o.S3 = &S3Options{}
			}
			busy, calls := takenFirst(t)
			r := StartT(t, o)
			got := r.Addr
			if tc.s3 {
				got = r.Store.Addr
			}
			if got == busy || *calls != tc.calls {
				t.Errorf("at %s (busy: %s), pickPort called %d times; want another address and %d calls", got, busy, *calls, tc.calls)
			}
			if resp := get(t, client(r, false), "https://"+r.Addr+"/v2/", r); resp.StatusCode != http.StatusOK {
				t.Errorf("GET /v2/: %s", resp.Status)
			}
		})
	}
}
