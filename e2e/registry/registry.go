// Package registry runs a real CNCF distribution registry (v3.1.2) on the
// loopback interface for end-to-end tests and benchmarks of diskimporter.
//
// Start generates a throwaway ECDSA P-256 CA and a server certificate for
// 127.0.0.1, ::1 and localhost, an htpasswd file with a random user (bcrypt
// cost 4, because the registry checks it on every request), a registry
// config file, and then runs "registry serve CONFIG" as a child process
// listening on 127.0.0.1 only. It returns once GET https://ADDR/v2/ answers
// 401 without credentials and 200 with them, which proves that TLS, auth
// and storage are up.
//
// The registry binary is located or built by Binary. It is cached in
// <repo root>/.cache/bin/registry, so only the first run pays for the build.
//
// Test code normally calls StartT; benchmark programs call Start and Stop.
package registry

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

const (
	// readyTimeout bounds how long Start waits for one registry process to
	// become ready.
	readyTimeout = 30 * time.Second
	// portAttempts is how many times Start picks a new port when the chosen
	// one was taken between choosing and binding it.
	portAttempts = 5
	// termGrace is how long Stop waits after SIGTERM before SIGKILL.
	termGrace = 5 * time.Second
	// killGrace is how long Stop waits for the process to be reaped after
	// SIGKILL before giving up.
	killGrace = 5 * time.Second
	// bcryptCost is the htpasswd hash cost; the minimum, since the registry
	// verifies the password on every request.
	bcryptCost = bcrypt.MinCost
	// Realm is the HTTP basic-auth realm the registry announces.
	Realm = "diskimporter-e2e"
)

// Options configures Start. The zero value is a usable default.
type Options struct {
	// HTTP1Only disables HTTP/2 in the registry (config
	// http.http2.disabled: true): its TLS listener then offers only
	// "http/1.1" in ALPN.
	HTTP1Only bool
	// CPUs, if non-empty, runs the registry under "taskset -c CPUs"
	// (e.g. "1" or "2-3"), which also makes the Go runtime inside it size
	// GOMAXPROCS to that set. Requires taskset(1) (util-linux).
	CPUs string
	// Dir is the working directory for the config, certificates,
	// htpasswd file and the storage root (Dir/data). It is created if
	// missing and left in place by Stop. If empty, a fresh directory is
	// created with os.MkdirTemp and removed by Stop.
	Dir string
	// LogOutput receives the registry's stdout and stderr (logrus logs and
	// the access log). If nil the output is discarded. Either way the last
	// 64 KiB are kept in memory and included in startup errors.
	LogOutput io.Writer
	// S3, if set, keeps the registry's data in a real S3 store started
	// beside it, with blob GETs redirected to presigned URLs.
	S3 *S3Options
}

// Registry is a running registry process started by Start. Its exported
// fields must be treated as read-only.
type Registry struct {
	// Addr is the listen address, "127.0.0.1:PORT".
	Addr string
	// Host is the registry host as used in image references; the same as
	// Addr.
	Host string
	// CAFile is the path of the PEM file holding the CA certificate that
	// signed the server certificate.
	CAFile string
	// CAPEM is the content of CAFile.
	CAPEM []byte
	// Username and Password are valid basic-auth credentials.
	Username, Password string
	// DataDir is the registry's filesystem storage root.
	DataDir string
	// Dir is the working directory holding config.yml, ca.pem, cert.pem,
	// key.pem, htpasswd and DataDir.
	Dir string
	// ConfigFile is the path of the registry's YAML configuration.
	ConfigFile string
	// Store is the S3 store holding the registry's data, with Options.S3;
	// nil otherwise (the data is in DataDir).
	Store *Store

	p         *proc // the current (last started) process
	removeDir bool

	stopOnce sync.Once
	stopErr  error
}

// errPortInUse reports that the registry could not bind its port.
var errPortInUse = errors.New("registry: address already in use")

// Start launches a registry configured by o and waits (at most 30s per
// attempt) until it serves authenticated HTTPS on 127.0.0.1. ctx bounds
// only the startup (including a possible build of the binary, see Binary);
// the returned registry keeps running until Stop is called or the calling
// process exits.
func Start(ctx context.Context, o Options) (_ *Registry, retErr error) {
	bin, err := Binary(ctx)
	if err != nil {
		return nil, err
	}
	var prefix []string
	if o.CPUs != "" {
		ts, err := exec.LookPath("taskset")
		if err != nil {
			return nil, fmt.Errorf("registry: Options.CPUs=%q needs taskset: %w", o.CPUs, err)
		}
		prefix = []string{ts, "-c", o.CPUs}
	}

	r := &Registry{}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "diskimporter-registry-")
		if err != nil {
			return nil, fmt.Errorf("registry: %w", err)
		}
		r.Dir, r.removeDir = d, true
	} else {
		d, err := filepath.Abs(o.Dir)
		if err != nil {
			return nil, fmt.Errorf("registry: %w", err)
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("registry: %w", err)
		}
		r.Dir = d
	}
	defer func() {
		if retErr != nil && r.removeDir {
			os.RemoveAll(r.Dir)
		}
	}()

	if err := r.writeFiles(); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	if o.S3 != nil {
		if err := r.startStore(ctx, o); err != nil {
			r.stopStore()
			return nil, err
		}
		defer func() {
			if retErr != nil {
				r.stopStore()
			}
		}()
	}

	var lastErr error
	for attempt := 0; attempt < portAttempts; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("registry: start: %w", err)
		}
		err := r.launch(ctx, bin, prefix, o)
		if err == nil {
			return r, nil
		}
		lastErr = err
		if !errors.Is(err, errPortInUse) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("registry: gave up after %d attempts: %w", portAttempts, lastErr)
}

// StartT is Start for tests and benchmarks: it fails t on error and
// registers Stop with t.Cleanup (reporting a Stop error with t.Error).
func StartT(t testing.TB, o Options) *Registry {
	t.Helper()
	r, err := Start(t.Context(), o)
	if err != nil {
		t.Fatalf("starting registry: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Errorf("stopping registry: %v", err)
		}
	})
	return r
}

// writeFiles creates the certificates, htpasswd file and data directory in
// r.Dir and fills in the corresponding fields.
func (r *Registry) writeFiles() error {
	p, err := newPKI()
	if err != nil {
		return fmt.Errorf("generating certificates: %w", err)
	}
	r.CAPEM = p.caPEM
	if !x509.NewCertPool().AppendCertsFromPEM(p.caPEM) {
		return errors.New("parsing generated CA certificate")
	}
	r.CAFile = filepath.Join(r.Dir, "ca.pem")

	r.Username = "di-" + randomHex(4)
	r.Password = randomToken(24)
	hash, err := bcrypt.GenerateFromPassword([]byte(r.Password), bcryptCost)
	if err != nil {
		return fmt.Errorf("hashing password: %w", err)
	}

	type file struct {
		name string
		data []byte
		mode os.FileMode
	}
	files := []file{
		{"ca.pem", p.caPEM, 0o644},
		{"cert.pem", p.certPEM, 0o644},
		{"key.pem", p.keyPEM, 0o600},
		{"htpasswd", []byte(r.Username + ":" + string(hash) + "\n"), 0o600},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(r.Dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	r.DataDir = filepath.Join(r.Dir, "data")
	if err := os.MkdirAll(r.DataDir, 0o755); err != nil {
		return err
	}
	r.ConfigFile = filepath.Join(r.Dir, "config.yml")
	return nil
}

// launch picks a port, writes the config, starts the process and waits
// until it is ready. On failure the process is killed and reaped.
func (r *Registry) launch(ctx context.Context, bin string, prefix []string, o Options) error {
	port, err := pickPort()
	if err != nil {
		return fmt.Errorf("registry: picking a port: %w", err)
	}
	r.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	r.Host = r.Addr

	cfg := renderConfig(configParams{
		addr:        r.Addr,
		secret:      randomHex(32),
		rootDir:     r.DataDir,
		certFile:    filepath.Join(r.Dir, "cert.pem"),
		keyFile:     filepath.Join(r.Dir, "key.pem"),
		htpasswd:    filepath.Join(r.Dir, "htpasswd"),
		realm:       Realm,
		http2Off:    o.HTTP1Only,
		logLevel:    "info",
		accessLogOn: true,
		s3:          r.s3Params(o.S3),
	})
	if err := os.WriteFile(r.ConfigFile, []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("registry: writing config: %w", err)
	}

	args := append(append([]string(nil), prefix...), bin, "serve", r.ConfigFile)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = r.Dir
	cmd.Env = childEnv()
	p := &proc{cmd: cmd, logs: &tailWriter{out: o.LogOutput}, done: make(chan struct{})}
	cmd.Stdout = p.logs
	cmd.Stderr = p.logs
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("registry: starting %s: %w", bin, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	r.p = p

	if err := r.waitReady(ctx); err != nil {
		if kerr := p.kill(); kerr != nil {
			// %v, not %w: a process we cannot reap is not worth a retry.
			return fmt.Errorf("%v (and %v)", err, kerr)
		}
		return err
	}
	return nil
}

// proc is one started registry process.
type proc struct {
	cmd  *exec.Cmd
	logs *tailWriter
	done chan struct{} // closed once the process has been reaped
	err  error         // cmd.Wait's result; valid after done is closed
}

// waitReady polls GET /v2/ until it answers 401 without and 200 with
// credentials, the process exits, readyTimeout passes or ctx is done.
func (r *Registry) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	p := r.p
	// Abort in-flight probes as soon as the process exits: if another
	// program owns the port, a probe may otherwise hang in its handshake.
	probeCtx, cancelProbes := context.WithCancel(ctx)
	defer cancelProbes()
	go func() {
		select {
		case <-p.done:
			cancelProbes()
		case <-probeCtx.Done():
		}
	}()
	client := &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   r.TLSConfig(),
			DisableKeepAlives: true,
			Proxy:             nil,
		},
	}
	defer client.CloseIdleConnections()
	url := "https://" + r.Addr + "/v2/"
	var lastErr error
	for {
		select {
		case <-p.done:
			tail := p.logs.tail()
			if bytes.Contains(tail, []byte("address already in use")) {
				return fmt.Errorf("%w: %s", errPortInUse, r.Addr)
			}
			return fmt.Errorf("registry: process exited during startup (%v); log tail:\n%s", p.err, tail)
		case <-ctx.Done():
			return fmt.Errorf("registry: not ready on %s: %w (last probe: %v); log tail:\n%s",
				r.Addr, ctx.Err(), lastErr, p.logs.tail())
		default:
		}

		code, hdr, err := probe(probeCtx, client, url, "", "")
		switch {
		case err != nil:
			// Not listening yet, or some other process owns the port
			// (its certificate will not verify against our CA).
			lastErr = err
		case code != http.StatusUnauthorized:
			return fmt.Errorf("registry: GET %s without credentials: got HTTP %d, want 401; log tail:\n%s",
				url, code, p.logs.tail())
		case !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Basic "):
			return fmt.Errorf("registry: GET %s: unexpected WWW-Authenticate %q", url, hdr.Get("WWW-Authenticate"))
		default:
			code, _, err := probe(probeCtx, client, url, r.Username, r.Password)
			if err != nil {
				return fmt.Errorf("registry: GET %s with credentials: %w", url, err)
			}
			if code != http.StatusOK {
				return fmt.Errorf("registry: GET %s with credentials: got HTTP %d, want 200; log tail:\n%s",
					url, code, p.logs.tail())
			}
			return nil
		}

		select {
		case <-p.done:
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func probe(ctx context.Context, c *http.Client, url, user, pass string) (int, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode, resp.Header, nil
}

// Pid returns the process id of the registry (with Options.CPUs set this
// is still the registry itself, since taskset execs it).
func (r *Registry) Pid() int {
	return r.p.cmd.Process.Pid
}

// TLSConfig returns a new client TLS configuration that trusts only the
// registry's CA and requires TLS 1.2 or later.
func (r *Registry) TLSConfig() *tls.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.CAPEM)
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

// LogTail returns (up to) the last 64 KiB of the registry's output.
func (r *Registry) LogTail() []byte {
	return r.p.logs.tail()
}

// Stop terminates the registry: SIGTERM to its process group, then SIGKILL
// if it has not exited within 5s. It removes the working directory if
// Start created it. Stop is idempotent; it returns an error if the registry
// had already exited on its own (i.e. crashed) before Stop was called, or
// could not be stopped or cleaned up.
func (r *Registry) Stop() error {
	r.stopOnce.Do(func() { r.stopErr = r.stop() })
	return r.stopErr
}

func (r *Registry) stop() error {
	p := r.p
	var errs []error
	select {
	case <-p.done:
		errs = append(errs, fmt.Errorf("registry: process %d exited before Stop (%v); log tail:\n%s",
			p.cmd.Process.Pid, p.err, p.logs.tail()))
	default:
		p.signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(termGrace):
			if err := p.kill(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	r.stopStore()
	if r.removeDir {
		if err := os.RemoveAll(r.Dir); err != nil {
			errs = append(errs, fmt.Errorf("registry: removing %s: %w", r.Dir, err))
		}
	}
	return errors.Join(errs...)
}

// signal sends sig to the process group the registry leads.
func (p *proc) signal(sig syscall.Signal) {
	if err := syscall.Kill(-p.cmd.Process.Pid, sig); err != nil {
		// Fall back to the process itself (e.g. group already gone).
		_ = p.cmd.Process.Signal(sig)
	}
}

// kill SIGKILLs the process group and waits (bounded) for it to be reaped.
func (p *proc) kill() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	p.signal(syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(killGrace):
		return fmt.Errorf("registry: process %d still not reaped %v after SIGKILL", p.cmd.Process.Pid, killGrace)
	}
}

// pickPort chooses the registry's port; a variable so tests can force a
// port collision.
var pickPort = FreePort

// FreePort asks the kernel for an unused loopback TCP port. The port is
// released before returning, so it can be taken by someone else before the
// process given it binds it; Start retries in that case, for the registry
// and its S3 store.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// childEnv is the registry's environment: ours without REGISTRY_* (which
// would override config keys) and OTEL_* variables, plus OpenTelemetry
// exporters set to "none" (the default OTLP trace exporter would try to
// send every request's span to localhost:4318).
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "REGISTRY_") || strings.HasPrefix(kv, "OTEL_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"OTEL_TRACES_EXPORTER=none",
		"OTEL_METRICS_EXPORTER=none",
		"OTEL_LOGS_EXPORTER=none",
	)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never returns an error
	return hex.EncodeToString(b)
}

func randomToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
