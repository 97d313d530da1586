package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/e2e/registry"
	"github.com/diskimporter/diskimporter/importer/export"
	"github.com/diskimporter/diskimporter/importer/testdisk"
)

// exportDisk is a disk of size bytes: the start of a generated disk (a
// third of it zeros), then zeros with a few bytes set.
func exportDisk(size, head int) []byte {
	b := make([]byte, size)
	if _, err := testdisk.New(int64(head)).ReadAt(b[:head], 0); err != nil && err != io.EOF {
		panic(err)
	}
	for _, at := range []int{size / 3, size / 2, size - 1} {
		b[at] = 0x5a
	}
	return b
}

// importForExport imports disk, served over http, into a new repository
// of reg with the binary, and returns the destination tag and the result.
func importForExport(t *testing.T, disk []byte) (string, *result) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"export-disk"`)
		http.ServeContent(w, r, "disk.img", time.Unix(0, 0), bytes.NewReader(disk))
	}))
	defer srv.Close()
	dest := reg.Addr + "/" + newRepo(t) + ":v1"
	res := parseSuccess(t, runImport(t, childEnv(t, credsEnv(reg)...), importArgs(reg, srv.URL+"/disk.img", dest)...))
	return dest, res
}

// exportEnv gives the binary r's credentials as a source's.
func exportEnv(t *testing.T, r *registry.Registry, extra ...string) []string {
	return childEnv(t, append([]string{"DISKIMPORTER_SOURCE_USERNAME=" + r.Username, "DISKIMPORTER_SOURCE_PASSWORD=" + r.Password}, extra...)...)
}

// exportCommand is "diskimporter export ARGS" with env.
func exportCommand(ctx context.Context, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, binPath, append([]string{"export"}, args...)...)
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// runExport runs "diskimporter export ARGS" to its end.
func runExport(t *testing.T, env []string, args ...string) *run {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), cliTimeout)
	defer cancel()
	// Stdout is a file, not a pipe: --output - writes the whole disk there,
	// and a pipe drained by a goroutine of this (race-instrumented, busy)
	// process can miss exec's WaitDelay.
	stdout, err := os.CreateTemp(t.TempDir(), "stdout")
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	var stderr bytes.Buffer
	cmd := exportCommand(ctx, env, args...)
	cmd.Stdout, cmd.Stderr = stdout, &stderr
	start := time.Now()
	err = cmd.Run()
	out, rerr := os.ReadFile(stdout.Name())
	if rerr != nil {
		t.Fatal(rerr)
	}
	r := &run{args: append([]string{"export"}, args...), stdout: out, stderr: stderr.Bytes(), took: time.Since(start)}
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

// exportSuccess checks that an export succeeded with one JSON result line
// on stdout, decoded strictly.
func exportSuccess(t *testing.T, r *run) *export.Result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("export failed:\n%s", r)
	}
	out := string(r.stdout)
	if !strings.HasSuffix(out, "\n") || strings.Count(out, "\n") != 1 {
		t.Fatalf("stdout is not exactly one line:\n%s", r)
	}
	var res export.Result
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&res); err != nil {
		t.Fatalf("stdout is not a result: %v\n%s", err, r)
	}
	checkJSONLogs(t, r, 0)
	return &res
}

// exportFailure checks that an export failed with reason.
func exportFailure(t *testing.T, r *run, reason string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(string(r.stderr), "\n"), "\n")
	prefix := "diskimporter export: " + reason + ": "
	if r.code != 1 || len(r.stdout) != 0 || !strings.HasPrefix(lines[len(lines)-1], prefix) {
		t.Errorf("want exit 1, nothing on stdout and a last stderr line starting %q:\n%s", prefix, r)
	}
	checkJSONLogs(t, r, 1)
}

// sameFile checks that path holds disk and nothing else is in its
// directory.
func sameFile(t *testing.T, path string, disk []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, disk) {
		t.Errorf("%s: %d bytes, not the %d of the disk", path, len(got), len(disk))
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("the output directory holds %q", names)
	}
}

// TestExportRoundTrip imports a mostly-zero disk with the binary, then
// exports it with the binary: sparse, dense, and to stdout, and checks the
// failures a user meets first.
func TestExportRoundTrip(t *testing.T) {
	needE2E(t)
	t.Parallel()
	const size = 64 << 20
	disk := exportDisk(size, 2<<20)
	dest, imported := importForExport(t, disk)
	common := []string{"--source-ca-file", reg.CAFile, "--log-format", "json"}

	t.Run("sparse", func(t *testing.T) {
		t.Parallel()
		out := filepath.Join(t.TempDir(), "disk.img")
		r := runExport(t, exportEnv(t, reg), append([]string{"--source", "docker://" + dest, "--output", out}, common...)...)
		res := exportSuccess(t, r)
		sameFile(t, out, disk)
		if res.Reference != imported.Reference || res.LayerDigest != imported.LayerDigest || res.DiskPath != imported.DiskPath ||
			res.Size != size || res.Output != out || res.ResumedFrom != 0 || res.AllocatedBytes == nil {
			t.Errorf("result %+v; the import's %+v", res, imported)
		}
		if res.AllocatedBytes != nil && *res.AllocatedBytes > 8<<20 {
			t.Errorf("a %d-byte disk with 2 MiB of data takes %d bytes", size, *res.AllocatedBytes)
		}
		t.Logf("result: %s", bytes.TrimSpace(r.stdout))
	})
	t.Run("dense, pinned by digest, flags from the environment", func(t *testing.T) {
		t.Parallel()
		out := filepath.Join(t.TempDir(), "disk.img")
		env := exportEnv(t, reg, "DISKIMPORTER_SPARSE=false", "DISKIMPORTER_SOURCE="+imported.Reference, "DISKIMPORTER_OUTPUT="+out)
		res := exportSuccess(t, runExport(t, env, common...))
		sameFile(t, out, disk)
		if res.AllocatedBytes == nil || *res.AllocatedBytes < size*9/10 {
			t.Errorf("dense export: allocated %v of %d", res.AllocatedBytes, size)
		}
	})
	t.Run("stdout", func(t *testing.T) {
		t.Parallel()
		r := runExport(t, exportEnv(t, reg), append([]string{"--source", dest, "--output", "-"}, common...)...)
		if r.code != 0 || !bytes.Equal(r.stdout, disk) {
			t.Errorf("exit %d, %d bytes on stdout, want the %d of the disk:\n%s", r.code, len(r.stdout), len(disk), r.stderr)
		}
		if !bytes.Contains(r.stderr, []byte(`"layer_digest":"`+imported.LayerDigest)) {
			t.Errorf("no result in the log:\n%s", r.stderr)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		t.Parallel()
		out := filepath.Join(t.TempDir(), "disk.img")
		env := childEnv(t, "DISKIMPORTER_SOURCE_USERNAME="+reg.Username, "DISKIMPORTER_SOURCE_PASSWORD=wrong")
		exportFailure(t, runExport(t, env, append([]string{"--source", dest, "--output", out}, common...)...), "SourceUnauthorized")
		if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 0 {
			t.Errorf("a failed export left %d files", len(entries))
		}
	})
	t.Run("no such tag", func(t *testing.T) {
		t.Parallel()
		out := filepath.Join(t.TempDir(), "disk.img")
		exportFailure(t, runExport(t, exportEnv(t, reg), append([]string{"--source", dest + "-nope", "--output", out}, common...)...), "SourceNotFound")
	})
	t.Run("usage", func(t *testing.T) {
		t.Parallel()
		for _, args := range [][]string{{"--output", "x"}, {"--source", dest}, {"--source", dest, "--output", "x", "--connections", "0"}, {"--bogus"}} {
			if r := runExport(t, childEnv(t), args...); r.code != 2 {
				t.Errorf("exit %d, want 2:\n%s", r.code, r)
			}
		}
	})
}

// TestExportKilled SIGKILLs an export after its first checkpoints, through a
// throttled proxy to the registry that counts the bytes it passes, then
// runs the same command again: the rerun goes on from the partial file,
// reads only the rest of the disk, and the output is the disk.
func TestExportKilled(t *testing.T) {
	needE2E(t)
	t.Parallel()
	const size = 32 << 20
	disk := exportDisk(size, size)
	dest, _ := importForExport(t, disk)
	p := newExportProxy(t, reg.Addr, 8<<20)
	source := p.addr + strings.TrimPrefix(dest, reg.Addr)

	out := filepath.Join(t.TempDir(), "disk.img")
	args := []string{"--source", source, "--output", out, "--source-ca-file", reg.CAFile, "--log-format", "json",
		"--connections", "4", "--chunk-size", "1MiB", "--checkpoint-interval", "2MiB"}
	env := exportEnv(t, reg)
	ctx, cancel := context.WithTimeout(t.Context(), cliTimeout)
	defer cancel()

	first := exportCommand(ctx, env, args...)
	stderr := &logSink{}
	first.Stdout, first.Stderr = io.Discard, stderr
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- first.Wait() }()
	stateFile := out + ".partial.state"
	var done int64
	for done < 6<<20 {
		select {
		case err := <-exited:
			t.Fatalf("the export exited before it was killed (%v):\n%s", err, stderr.Bytes())
		case <-ctx.Done():
			first.Process.Kill()
			t.Fatalf("no checkpoint past 6 MiB:\n%s", stderr.Bytes())
		case <-time.After(20 * time.Millisecond):
		}
		var st struct{ Done int64 }
		if b, err := os.ReadFile(stateFile); err == nil && json.Unmarshal(b, &st) == nil {
			done = st.Done
		}
	}
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := <-exited
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != -1 {
		t.Errorf("killed export ended with %v, want death by signal", err)
	}
	firstServed := p.served.Load()
	var st struct{ Done int64 }
	b, err := os.ReadFile(stateFile)
	if err != nil || json.Unmarshal(b, &st) != nil || st.Done < done {
		t.Fatalf("state file after the kill: %v %s", err, b)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the output exists after the kill: %v", err)
	}

	// The rerun, unthrottled.
	p.rate.Store(0)
	p.served.Store(0)
	res := exportSuccess(t, runExport(t, env, args...))
	second := p.served.Load()
	sameFile(t, out, disk)
	t.Logf("killed after the proxy passed %d bytes, with %d saved; the rerun resumed from %d and was passed %d bytes (disk %d)",
		firstServed, st.Done, res.ResumedFrom, second, size)
	if res.ResumedFrom != st.Done {
		t.Errorf("resumed_from %d, the state file said %d", res.ResumedFrom, st.Done)
	}
	// The rest of the disk, the first GET's piece (1 MiB), the manifest,
	// handshakes and TLS framing.
	if rest := size - res.ResumedFrom; second < rest || second > rest+2<<20 {
		t.Errorf("the rerun was passed %d bytes; %d were left to read", second, rest)
	}
}

// exportProxy passes TCP connections to target, the bytes from target at
// most rate bytes per second in all (0: no limit), and counts them.
type exportProxy struct {
	addr   string
	target string
	rate   atomic.Int64
	served atomic.Int64

	mu   sync.Mutex
	next time.Time // when the next byte may go, under the rate
}

func newExportProxy(t *testing.T, target string, rate int64) *exportProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &exportProxy{addr: ln.Addr().String(), target: target}
	p.rate.Store(rate)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.serve(c)
			}()
		}
	}()
	return p
}

func (p *exportProxy) serve(c net.Conn) {
	defer c.Close()
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer u.Close()
	go func() {
		io.Copy(u, c)
		u.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := u.Read(buf)
		if n > 0 {
			p.wait(n)
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
			p.served.Add(int64(n))
		}
		if err != nil {
			return
		}
	}
}

// wait sleeps until n more bytes fit under the rate.
func (p *exportProxy) wait(n int) {
	rate := p.rate.Load()
	if rate <= 0 {
		return
	}
	p.mu.Lock()
	now := time.Now()
	at := p.next
	if at.Before(now) {
		at = now
	}
	p.next = at.Add(time.Duration(float64(n) / float64(rate) * float64(time.Second)))
	p.mu.Unlock()
	time.Sleep(time.Until(at))
}
