package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/diskimporter/diskimporter/e2e/registry"
	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/testdisk"
)

// Sizes of the generated source images.
const (
	rawSize  = 8 << 20     // the raw disk served over http and written to files
	isoSize  = 1 << 20     // the generated ISO image
	slowSize = 32 << 20    // the throttled source of the pprof test
	slowRate = 8 << 20     // bytes per second of the throttled source
	oddSize  = 3<<20 + 123 // not a multiple of the 512-byte tar block

	// cliTimeout bounds one run of the binary.
	cliTimeout = 60 * time.Second
)

// Contract values checked in the pulled image. They are spelled out here
// rather than taken from the packages under test.
const (
	ociManifest    = "application/vnd.oci.image.manifest.v1+json"
	ociConfig      = "application/vnd.oci.image.config.v1+json"
	ociLayer       = "application/vnd.oci.image.layer.v1.tar"
	dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	dockerConfig   = "application/vnd.docker.container.image.v1+json"
	dockerLayer    = "application/vnd.docker.image.rootfs.diff.tar"

	diskOwnerID   = 107
	diskFileMode  = 0o440
	diskDirInTar  = "disk/"
	exitImportErr = 1
)

// Shared fixtures, set up by TestMain unless -short is given.
var (
	binPath string             // the diskimporter binary built for this run
	reg     *registry.Registry // the registry shared by the package
	regLog  = &logSink{}       // everything reg wrote (incl. its access log)
	src     *sourceServer      // the http source of disk images
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// Every test skips itself via needE2E.
		os.Exit(m.Run())
	}
	os.Exit(setupAndRun(m))
}

func setupAndRun(m *testing.M) int {
	start := time.Now()
	tmp, err := os.MkdirTemp("", "diskimporter-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(tmp)

	root, err := repoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	binPath = filepath.Join(tmp, "diskimporter")
	if err := buildBinary(root, binPath); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	built := time.Since(start)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	reg, err = registry.Start(ctx, registry.Options{LogOutput: regLog})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: starting registry:", err)
		return 1
	}
	defer func() {
		if err := reg.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: stopping registry:", err)
		}
	}()

	src, err = newSourceServer(tmp)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: source server:", err)
		return 1
	}
	defer src.Close()

	if testing.Verbose() {
		fmt.Printf("e2e setup: binary built in %v, registry %s ready after %v\n",
			built.Round(time.Millisecond), reg.Addr, time.Since(start).Round(time.Millisecond))
	}
	return m.Run()
}

func needE2E(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: builds the binary and runs a real registry; skipped with -short")
	}
}

// repoRoot is the nearest directory at or above the working directory that
// holds go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if fi, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil && fi.Mode().IsRegular() {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

func buildBinary(root, out string) error {
	goTool := "go"
	if goroot := os.Getenv("GOROOT"); goroot != "" {
		if p := filepath.Join(goroot, "bin", "go"); fileExists(p) {
			goTool = p
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", out, "./cmd/diskimporter")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/diskimporter: %w\n%s", err, b)
	}
	return nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// logSink is a concurrency-safe in-memory log of a registry's output.
type logSink struct{ registry.LockedBuffer }

// writeLines returns the access-log lines of write requests (POST, PATCH,
// PUT) to repository repo: those of the import, never of the pull-back
// checks, which only read.
func (s *logSink) writeLines(repo string) []string {
	var out []string
	for line := range strings.Lines(string(s.Bytes())) {
		for _, m := range []string{"POST", "PATCH", "PUT"} {
			if strings.Contains(line, `"`+m+" /v2/"+repo+"/") {
				out = append(out, strings.TrimSpace(line))
			}
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// Source server.

// sourceServer serves the disk images the tests import, over http (URL)
// and over https (TLS.URL, certificate in CAFile).
type sourceServer struct {
	*httptest.Server
	TLS    *httptest.Server
	CAFile string
	raw8   *testdisk.Disk
	iso    []byte
	qcow2  []byte
	slow   *testdisk.Disk
	odd    *testdisk.Disk

	// sha256 of raw8, iso and slow, "sha256:<hex>"
	rawSum, isoSum, slowSum, oddSum string

	mu       sync.Mutex
	requests map[string]int // requests by path and query
}

// gets returns how many requests uri (path and query) has had. Tests give
// their source URLs a unique query to count their own requests.
func (s *sourceServer) gets(uri string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[uri]
}

func newSourceServer(dir string) (*sourceServer, error) {
	s := &sourceServer{
		raw8:  testdisk.New(rawSize),
		iso:   makeISO(),
		qcow2: append([]byte("QFI\xfb\x00\x00\x00\x03"), make([]byte, 64<<10)...),
		slow:  testdisk.New(slowSize),
		odd:   testdisk.New(oddSize),

		requests: map[string]int{},
	}
	s.rawSum = sha256Of(s.raw8, rawSize)
	s.isoSum = sha256Of(bytes.NewReader(s.iso), isoSize)
	s.slowSum = sha256Of(s.slow, slowSize)
	s.oddSum = sha256Of(s.odd, oddSize)
	epoch := time.Unix(0, 0)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /raw8.img", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"raw8"`) // a validator: it may be read in parallel pieces
		http.ServeContent(w, r, "raw8.img", epoch, s.raw8.Reader())
	})
	mux.HandleFunc("GET /disk.iso", func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "disk.iso", epoch, bytes.NewReader(s.iso))
	})
	mux.HandleFunc("GET /odd.img", func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "odd.img", epoch, s.odd.Reader())
	})
	mux.HandleFunc("GET /disk.qcow2", func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "disk.qcow2", epoch, bytes.NewReader(s.qcow2))
	})
	mux.HandleFunc("GET /status/{code}", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.PathValue("code"))
		if err != nil || code < 100 || code > 599 {
			code = http.StatusBadRequest
		}
		http.Error(w, http.StatusText(code), code)
	})
	mux.HandleFunc("GET /disk.img.gz", func(w http.ResponseWriter, r *http.Request) {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		_, _ = io.Copy(zw, io.NewSectionReader(s.raw8, 0, 1<<20))
		_ = zw.Close()
		http.ServeContent(w, r, "disk.img.gz", epoch, bytes.NewReader(buf.Bytes()))
	})
	mux.HandleFunc("GET /chunked.img", func(w http.ResponseWriter, r *http.Request) {
		// Flushing before the end makes net/http use chunked encoding:
		// no Content-Length.
		_, _ = io.Copy(w, io.NewSectionReader(s.raw8, 0, 64<<10))
		_ = http.NewResponseController(w).Flush()
		_, _ = io.Copy(w, io.NewSectionReader(s.raw8, 64<<10, 64<<10))
	})
	mux.HandleFunc("GET /redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/raw8.img?X-Amz-Signature=redirsecret", http.StatusFound)
	})
	mux.HandleFunc("GET /truncated.img", s.serveTruncated)
	mux.HandleFunc("GET /slow.img", s.serveSlow)
	mux.HandleFunc("GET /slow-cancel.img", s.serveSlow)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests[r.URL.RequestURI()]++
		s.mu.Unlock()
		mux.ServeHTTP(w, r)
	})
	s.Server = httptest.NewServer(h) // listens on 127.0.0.1
	s.TLS = httptest.NewUnstartedServer(h)
	// The "untrusted https source" case makes handshakes fail on purpose.
	s.TLS.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.TLS.StartTLS()
	s.CAFile = filepath.Join(dir, "source-ca.pem")
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.TLS.Certificate().Raw})
	if err := os.WriteFile(s.CAFile, caPEM, 0o644); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Close stops both listeners.
func (s *sourceServer) Close() {
	s.Server.Close()
	s.TLS.Close()
}

// makeISO returns an isoSize image with the ISO 9660 signature "CD001" at
// offset 0x8001 (in the first volume descriptor).
func makeISO() []byte {
	b := make([]byte, isoSize)
	if _, err := testdisk.New(isoSize).ReadAt(b, 0); err != nil && err != io.EOF {
		panic(err)
	}
	clear(b[:512]) // no partition table: a plain ISO
	b[0x8000] = 1  // primary volume descriptor
	copy(b[0x8001:], "CD001")
	b[0x8006] = 1
	return b
}

// serveTruncated announces rawSize bytes, sends 1 MiB of them and closes the
// connection.
func (s *sourceServer) serveTruncated(w http.ResponseWriter, r *http.Request) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "no hijacking", http.StatusInternalServerError)
		return
	}
	conn, bw, err := hj.Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", rawSize)
	_, _ = io.Copy(bw, io.NewSectionReader(s.raw8, 0, 1<<20))
	_ = bw.Flush()
}

// serveSlow serves slowSize bytes at about slowRate bytes per second.
func (s *sourceServer) serveSlow(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(slowSize))
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	const piece = 128 << 10
	buf := make([]byte, piece)
	start := time.Now()
	for off := int64(0); off < slowSize; off += piece {
		n, _ := s.slow.ReadAt(buf, off)
		if _, err := w.Write(buf[:n]); err != nil {
			return
		}
		_ = rc.Flush()
		due := start.Add(time.Duration(float64(off+int64(n)) / slowRate * float64(time.Second)))
		select {
		case <-r.Context().Done():
			return
		case <-time.After(time.Until(due)):
		}
	}
}

// closedAddr returns a 127.0.0.1 address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	return freeAddr(t) // released when freeAddr returns
}

// freeAddr returns a 127.0.0.1 address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// writeDiskFile writes the first size bytes of d to a new file in a temporary
// directory and returns its path.
func writeDiskFile(t *testing.T, d io.ReaderAt, size int64, name string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(f, io.NewSectionReader(d, 0, size)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// sha256Of returns "sha256:<hex>" of the first size bytes of d.
func sha256Of(d io.ReaderAt, size int64) string {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(d, 0, size)); err != nil {
		panic(err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// ---------------------------------------------------------------------------
// Running the binary.

// result mirrors importer.Result (TestResultMirror keeps them in step).
// result is what a successful import prints; stdout is decoded strictly into
// it, so a field the binary adds or drops fails the tests.
type result = importer.Result

// failureResult is what --result-file holds after a failed import.
type failureResult struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// run is one finished run of the binary.
type run struct {
	args           []string
	code           int
	stdout, stderr []byte
	took           time.Duration
}

func (r *run) String() string {
	return fmt.Sprintf("diskimporter %s\nexit %d after %v\nstdout:\n%s\nstderr:\n%s",
		strings.Join(r.args, " "), r.code, r.took.Round(time.Millisecond), r.stdout, r.stderr)
}

// childEnv is the environment of the binary: ours without anything that
// could configure it from outside the test (DISKIMPORTER_*, Docker config,
// proxies), HOME in a fresh temporary directory, plus extra.
func childEnv(t *testing.T, extra ...string) []string {
	t.Helper()
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch up := strings.ToUpper(k); {
		case strings.HasPrefix(up, "DISKIMPORTER_"), up == "HOME", up == "DOCKER_CONFIG",
			up == "HTTP_PROXY", up == "HTTPS_PROXY", up == "NO_PROXY", up == "ALL_PROXY",
			up == "REGISTRY_AUTH_FILE", strings.HasPrefix(up, "XDG_"):
			continue
		}
		env = append(env, kv)
	}
	return append(append(env, "HOME="+t.TempDir()), extra...)
}

// credsEnv passes r's credentials the way the brief asks: through the
// environment, never on the command line.
func credsEnv(r *registry.Registry) []string {
	return []string{"DISKIMPORTER_USERNAME=" + r.Username, "DISKIMPORTER_PASSWORD=" + r.Password}
}

// command returns the command for "diskimporter import ARGS" with env.
func command(ctx context.Context, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, binPath, append([]string{"import"}, args...)...)
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// runImport runs "diskimporter import ARGS" with env and waits for it.
func runImport(t *testing.T, env []string, args ...string) *run {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), cliTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := command(ctx, env, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := &run{args: args, stdout: stdout.Bytes(), stderr: stderr.Bytes(), took: time.Since(start)}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr) && exitErr.Exited():
		r.code = exitErr.ExitCode()
	default:
		t.Fatalf("running diskimporter: %v (ctx: %v)\n%s", err, ctx.Err(), r)
	}
	return r
}

// importArgs are the flags every import in these tests uses.
func importArgs(r *registry.Registry, source, dest string, extra ...string) []string {
	return append([]string{"--source", source, "--destination", dest,
		"--ca-file", r.CAFile, "--log-format", "json"}, extra...)
}

// parseSuccess checks that run succeeded with one JSON line on stdout and
// JSON logs on stderr, and returns the result.
func parseSuccess(t *testing.T, r *run) *result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("import failed:\n%s", r)
	}
	out := string(r.stdout)
	if !strings.HasSuffix(out, "\n") || strings.Count(out, "\n") != 1 {
		t.Fatalf("stdout is not exactly one line:\n%s", r)
	}
	var res result
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&res); err != nil {
		t.Fatalf("stdout is not a result: %v\n%s", err, r)
	}
	checkJSONLogs(t, r, 0)
	return &res
}

// checkJSONLogs checks that every stderr line but the last skipLast ones is
// a slog JSON record, and returns the records.
func checkJSONLogs(t *testing.T, r *run, skipLast int) []map[string]any {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(string(r.stderr), "\n"), "\n")
	if len(lines) == 1 && lines[0] == "" {
		lines = nil
	}
	if len(lines) < skipLast {
		t.Fatalf("stderr has %d lines, want at least %d:\n%s", len(lines), skipLast, r)
	}
	var recs []map[string]any
	for _, line := range lines[:len(lines)-skipLast] {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("stderr line is not JSON with --log-format json: %q", line)
			continue
		}
		if rec["level"] == nil || rec["msg"] == nil || rec["time"] == nil {
			t.Errorf("stderr record lacks level/msg/time: %q", line)
		}
		recs = append(recs, rec)
	}
	return recs
}

// checkFailure checks that run failed with reason: exit 1, nothing on
// stdout, JSON logs none of which repeats the failure,
// and a last stderr line "diskimporter import: REASON: ...".
func checkFailure(t *testing.T, r *run, reason string) {
	t.Helper()
	if r.code != exitImportErr {
		t.Errorf("exit code %d, want %d", r.code, exitImportErr)
	}
	if len(r.stdout) != 0 {
		t.Errorf("stdout not empty on failure: %q", r.stdout)
	}
	recs := checkJSONLogs(t, r, 1)
	lines := strings.Split(strings.TrimSuffix(string(r.stderr), "\n"), "\n")
	last := lines[len(lines)-1]
	prefix := "diskimporter import: " + reason + ": "
	if !strings.HasPrefix(last, prefix) || len(last) == len(prefix) {
		t.Errorf("last stderr line = %q, want a one-line reason starting with %q", last, prefix)
	}
	// The failure is said once, on that line: no log record repeats it.
	for _, rec := range recs {
		if rec["level"] == "ERROR" && strings.Contains(last, fmt.Sprint(rec["error"])) {
			t.Errorf("log record %v repeats the failure line", rec)
		}
	}
	if t.Failed() {
		t.Logf("run:\n%s", r)
	}
}

// readResultFile decodes path strictly into v.
func readResultFile(t *testing.T, path string, v any) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("result file: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("result file %s: %v\n%s", path, err, b)
	}
	return b
}

// ---------------------------------------------------------------------------
// Destinations and registry checks.

var repoSeq atomic.Int64

var nonRepoChars = regexp.MustCompile(`[^a-z0-9]+`)

// newRepo returns a repository name that no other test uses.
func newRepo(t *testing.T) string {
	n := strings.Trim(nonRepoChars.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(n) > 60 {
		n = strings.Trim(n[len(n)-60:], "-")
	}
	return fmt.Sprintf("e2e/%s-%d", n, repoSeq.Add(1))
}

// regTransport is an HTTP transport that trusts only r's CA.
func regTransport(r *registry.Registry) *http.Transport {
	return &http.Transport{TLSClientConfig: r.TLSConfig(), ForceAttemptHTTP2: true}
}

func remoteOpts(t *testing.T, r *registry.Registry) []remote.Option {
	return []remote.Option{
		remote.WithContext(t.Context()),
		remote.WithTransport(regTransport(r)),
		remote.WithAuth(&authn.Basic{Username: r.Username, Password: r.Password}),
	}
}

// tags lists repo's tags; found is false when the registry does not know
// the repository (404).
func tags(t *testing.T, r *registry.Registry, repo string) (list []string, found bool) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+r.Addr+"/v2/"+repo+"/tags/list", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(r.Username, r.Password)
	c := &http.Client{Transport: regTransport(r), Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET tags/list: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	switch resp.StatusCode {
	case http.StatusNotFound:
		return nil, false
	case http.StatusOK:
	default:
		t.Fatalf("GET %s: %s\n%s", req.URL, resp.Status, body)
	}
	var tl struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}
	if err := json.Unmarshal(body, &tl); err != nil {
		t.Fatalf("tags/list: %v\n%s", err, body)
	}
	return tl.Tags, true
}

// checkNoTag asserts that repo has no tag tag in r.
func checkNoTag(t *testing.T, r *registry.Registry, repo, tag string) {
	t.Helper()
	list, found := tags(t, r, repo)
	if found && slices.Contains(list, tag) {
		t.Errorf("failed import left tag %s:%s (tags %v)", repo, tag, list)
	}
}

// want describes the image an import must have written.
type want struct {
	reg    *registry.Registry
	dest   string
	source string // expected Result.Source and source annotation
	sha256 string // "sha256:<hex>" of the source bytes
	// hashed: the import ran with --disk-sha256, so the result and the
	// annotations record sha256; otherwise they must not.
	hashed    bool
	size      int64
	format    string
	diskName  string
	docker    bool
	os, arch  string
	variant   string
	tlsVer    string // expected TLS version ("" = TLS 1.2)
	redacted  bool   // the source URL had credentials and a query
	forbidden []string
}

// verify pulls the image res describes and checks it against w.
func verify(t *testing.T, res *result, w want) {
	t.Helper()
	if w.reg == nil {
		w.reg = reg
	}
	if w.os == "" {
		w.os, w.arch = "linux", "amd64"
	}
	if w.tlsVer == "" {
		w.tlsVer = "TLS 1.2"
	}
	diskPath := diskDirInTar + w.diskName

	// The result line.
	tag, err := name.NewTag(w.dest)
	if err != nil {
		t.Fatal(err)
	}
	if res.Destination != tag.String() {
		t.Errorf("destination = %q, want %q", res.Destination, tag.String())
	}
	if want := tag.Context().String() + "@" + res.ManifestDigest; res.Reference != want {
		t.Errorf("reference = %q, want %q", res.Reference, want)
	}
	if res.Source != w.source {
		t.Errorf("source = %q, want %q", res.Source, w.source)
	}
	recorded := ""
	if w.hashed {
		recorded = w.sha256
	}
	if res.SourceSHA256 != recorded || res.DiskSHA256 != recorded {
		t.Errorf("source_sha256, disk_sha256 = %q, %q; want %q", res.SourceSHA256, res.DiskSHA256, recorded)
	}
	if res.Size != w.size || res.Format != w.format || res.DiskPath != diskPath {
		t.Errorf("size/format/disk_path = %d/%q/%q, want %d/%q/%q",
			res.Size, res.Format, res.DiskPath, w.size, w.format, diskPath)
	}
	if !strings.Contains(res.TLSCipherSuite, "AES_") || !strings.Contains(res.TLSCipherSuite, "GCM") {
		t.Errorf("tls_cipher_suite = %q, want an AES-GCM suite", res.TLSCipherSuite)
	}
	if res.TLSVersion != w.tlsVer {
		t.Errorf("tls_version = %q, want %q", res.TLSVersion, w.tlsVer)
	}
	if res.Seconds < 0 || res.MBPerSecond < 0 {
		t.Errorf("seconds %v, mb_per_second %v", res.Seconds, res.MBPerSecond)
	}

	// The tag resolves to the manifest the result names.
	opts := remoteOpts(t, w.reg)
	head, err := remote.Head(tag, opts...)
	if err != nil {
		t.Fatalf("HEAD %s: %v", tag, err)
	}
	if head.Digest.String() != res.ManifestDigest {
		t.Errorf("HEAD %s = %s, result manifest_digest %s", tag, head.Digest, res.ManifestDigest)
	}
	wantManifest, wantConfig, wantLayer := ociManifest, ociConfig, ociLayer
	if w.docker {
		wantManifest, wantConfig, wantLayer = dockerManifest, dockerConfig, dockerLayer
	}
	if string(head.MediaType) != wantManifest {
		t.Errorf("manifest media type (HEAD) = %s, want %s", head.MediaType, wantManifest)
	}

	ref, err := name.ParseReference(res.Reference)
	if err != nil {
		t.Fatalf("reference %q: %v", res.Reference, err)
	}
	img, err := remote.Image(ref, opts...)
	if err != nil {
		t.Fatalf("pulling %s: %v", ref, err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if string(m.MediaType) != wantManifest || string(m.Config.MediaType) != wantConfig {
		t.Errorf("manifest %s, config %s; want %s, %s", m.MediaType, m.Config.MediaType, wantManifest, wantConfig)
	}
	if len(m.Layers) != 1 {
		t.Fatalf("manifest has %d layers, want 1", len(m.Layers))
	}
	ld := m.Layers[0]
	if string(ld.MediaType) != wantLayer {
		t.Errorf("layer media type %s, want %s", ld.MediaType, wantLayer)
	}
	if ld.Digest.String() != res.LayerDigest || ld.Size != res.LayerSize {
		t.Errorf("manifest layer %s (%d bytes), result %s (%d bytes)", ld.Digest, ld.Size, res.LayerDigest, res.LayerSize)
	}

	wantAnn := map[string]string{
		importer.AnnotationSource:       w.source,
		importer.AnnotationFormat:       w.format,
		importer.AnnotationSize:         strconv.FormatInt(w.size, 10),
		importer.AnnotationDiskPath:     diskPath,
		importer.AnnotationSourceSHA256: recorded,
		importer.AnnotationDiskSHA256:   recorded,
	}
	if w.redacted {
		// The source had user:pass@ and a query: neither may show.
		for _, s := range []string{res.Source, m.Annotations[importer.AnnotationSource], cf0(img).Config.Labels[importer.AnnotationSource]} {
			if !strings.HasSuffix(s, "?REDACTED") || strings.Contains(s, "pass") || strings.Contains(s, "@") {
				t.Errorf("recorded source %q: want the query replaced by REDACTED and no credentials", s)
			}
		}
	}
	if w.docker {
		if len(m.Annotations) != 0 {
			t.Errorf("docker manifest has annotations %v", m.Annotations)
		}
	} else {
		for k, v := range wantAnn {
			// An empty value is an annotation that must be absent.
			if got, ok := m.Annotations[k]; ok != (v != "") || got != v {
				t.Errorf("manifest annotation %s = %q (present %t), want %q", k, got, ok, v)
			}
		}
	}

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != w.os || cf.Architecture != w.arch || cf.Variant != w.variant {
		t.Errorf("config platform %s/%s/%s, want %s/%s/%s", cf.OS, cf.Architecture, cf.Variant, w.os, w.arch, w.variant)
	}
	for k, v := range wantAnn {
		if got, ok := cf.Config.Labels[k]; ok != (v != "") || got != v {
			t.Errorf("config label %s = %q (present %t), want %q", k, got, ok, v)
		}
	}
	if len(cf.RootFS.DiffIDs) != 1 || cf.RootFS.DiffIDs[0].String() != res.LayerDigest {
		t.Errorf("config diff IDs %v, want [%s]", cf.RootFS.DiffIDs, res.LayerDigest)
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("image has %d layers, want 1", len(layers))
	}
	l := layers[0]
	digest, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	diffID, err := l.DiffID()
	if err != nil {
		t.Fatal(err)
	}
	if digest.String() != res.LayerDigest || diffID != digest {
		t.Errorf("layer digest %s, diff ID %s, result layer_digest %s", digest, diffID, res.LayerDigest)
	}
	if mt, err := l.MediaType(); err != nil || string(mt) != wantLayer {
		t.Errorf("layer media type %s (%v), want %s", mt, err, wantLayer)
	}
	checkLayerBlob(t, l, res, diskPath, w)

	// Nothing secret ended up in the image's metadata.
	rawManifest, _ := img.RawManifest()
	rawConfig, _ := img.RawConfigFile()
	for _, s := range append(w.forbidden, w.reg.Password) {
		if bytes.Contains(rawManifest, []byte(s)) || bytes.Contains(rawConfig, []byte(s)) {
			t.Errorf("manifest or config contains %q", s)
		}
	}
}

// checkLayerBlob reads the layer blob: its sha256 must be its digest, and it
// must hold disk/ then disk/<name> with the source's bytes, nothing else.
func checkLayerBlob(t *testing.T, l v1.Layer, res *result, diskPath string, w want) {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	blobHash := sha256.New()
	counted := &countingWriter{}
	tee := io.TeeReader(bufio.NewReaderSize(rc, 1<<20), io.MultiWriter(blobHash, counted))
	tr := tar.NewReader(tee)

	h, err := tr.Next()
	if err != nil {
		t.Fatalf("layer tar: %v", err)
	}
	if h.Name != diskDirInTar || h.Typeflag != tar.TypeDir || h.Uid != diskOwnerID || h.Gid != diskOwnerID {
		t.Errorf("first entry %q type %c uid %d gid %d, want directory %q owned by %d:%d",
			h.Name, h.Typeflag, h.Uid, h.Gid, diskDirInTar, diskOwnerID, diskOwnerID)
	}
	h, err = tr.Next()
	if err != nil {
		t.Fatalf("layer tar, second entry: %v", err)
	}
	if h.Name != diskPath || h.Typeflag != tar.TypeReg || h.Uid != diskOwnerID || h.Gid != diskOwnerID ||
		h.Mode != diskFileMode || h.Size != w.size {
		t.Errorf("disk entry %q type %c uid %d gid %d mode %#o size %d; want regular %q %d:%d %#o %d bytes",
			h.Name, h.Typeflag, h.Uid, h.Gid, h.Mode, h.Size, diskPath, diskOwnerID, diskOwnerID, diskFileMode, w.size)
	}
	content := sha256.New()
	if _, err := io.Copy(content, tr); err != nil {
		t.Fatalf("reading the disk from the layer: %v", err)
	}
	if got := "sha256:" + hex.EncodeToString(content.Sum(nil)); got != w.sha256 {
		t.Errorf("disk content %s, source %s", got, w.sha256)
	}
	if h, err := tr.Next(); err != io.EOF {
		t.Errorf("after the disk: entry %v, error %v; want the end of the archive", h, err)
	}
	// Drain the rest of the trailer (ggcr also verifies the digest at EOF).
	if _, err := io.Copy(io.Discard, tee); err != nil {
		t.Fatalf("draining the layer: %v", err)
	}
	if got := "sha256:" + hex.EncodeToString(blobHash.Sum(nil)); got != res.LayerDigest {
		t.Errorf("layer blob sha256 %s, result layer_digest %s", got, res.LayerDigest)
	}
	if counted.n != res.LayerSize {
		t.Errorf("layer blob %d bytes, result layer_size %d", counted.n, res.LayerSize)
	}
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// cf0 returns img's config file, or an empty one (the caller reports the
// error elsewhere).
func cf0(img v1.Image) *v1.ConfigFile {
	if cf, err := img.ConfigFile(); err == nil {
		return cf
	}
	return &v1.ConfigFile{}
}
