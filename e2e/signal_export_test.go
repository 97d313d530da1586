package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestSignalExportWrite: an export whose output takes no byte (a FIFO with
// no reader, stdout a pipe nobody reads) stops within 5 s of SIGTERM, with
// exit 1 and reason Cancelled in --result-file. The stall is reached when
// the export logs that it started writing.
func TestSignalExportWrite(t *testing.T) {
	needE2E(t)
	t.Parallel()
	dest, _ := importForExport(t, exportDisk(16<<20, 1<<20))
	for _, tc := range []struct {
		name   string
		output func(t *testing.T) (arg string, stdout *os.File)
	}{
		{"FIFO with no reader", func(t *testing.T) (string, *os.File) {
			fifo := filepath.Join(t.TempDir(), "disk.fifo")
			if err := syscall.Mkfifo(fifo, 0o600); err != nil {
				t.Fatal(err)
			}
			return fifo, nil
		}},
		{"stdout a pipe nobody reads", func(t *testing.T) (string, *os.File) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { r.Close() })
			return "-", w
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, stdout := tc.output(t)
			resultFile := filepath.Join(t.TempDir(), "result.json")
			args := []string{dest, out, "--ca-file", reg.CAFile, "--log-format", "json", "--result-file", resultFile}
			code, took := exportUntilSignal(t, stdout, args)
			var fail failureResult
			readResultFile(t, resultFile, &fail)
			if code != exitImportErr || fail.Reason != "Cancelled" {
				t.Errorf("exit %d, result reason %q; want exit %d, reason Cancelled", code, fail.Reason, exitImportErr)
			}
			t.Logf("exited %v after SIGTERM", took.Round(time.Millisecond))
		})
	}
}

// exportUntilSignal runs "diskimporter export ARGS" with stdout (nil: a
// discarding file), sends SIGTERM once it logs "export started", and
// returns its exit code and how long it took to exit after the signal.
func exportUntilSignal(t *testing.T, stdout *os.File, args []string) (int, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), cliTimeout)
	defer cancel()
	cmd := exportCommand(ctx, exportEnv(t, reg), args...)
	if stdout != nil {
		cmd.Stdout = stdout
	}
	started := &watchWriter{want: `"msg":"export started"`, seen: make(chan struct{})}
	cmd.Stderr = started
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if stdout != nil {
		stdout.Close() // the child holds it
	}
	select {
	case <-started.seen:
	case <-ctx.Done():
		t.Fatalf("the export never started writing:\n%s", started.String())
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	code, took, err := terminate(cmd.Process, exited)
	if err != nil {
		t.Fatalf("%v\n%s", err, started.String())
	}
	return code, took
}

// watchWriter keeps what is written to it and closes seen once it holds
// want.
type watchWriter struct {
	mu   sync.Mutex
	buf  strings.Builder
	want string
	seen chan struct{}
	once sync.Once
}

func (w *watchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return len(p), nil
}

func (w *watchWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
