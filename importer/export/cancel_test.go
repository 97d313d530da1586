package export_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/importer/export"
	"github.com/diskimporter/diskimporter/importer/imagetest"
	"github.com/diskimporter/diskimporter/importer/reason"
)

// signalHandler closes ch the first time msg is logged.
type signalHandler struct {
	slog.Handler
	msg  string
	ch   chan struct{}
	once *sync.Once
}

func (h signalHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.once.Do(func() { close(h.ch) })
	}
	return h.Handler.Handle(ctx, r)
}

// enterWriter closes entered when Write is first called, then writes to w.
type enterWriter struct {
	w       io.Writer
	entered chan struct{}
	once    sync.Once
}

func (e *enterWriter) Write(p []byte) (int, error) {
	e.once.Do(func() { close(e.entered) })
	return e.w.Write(p)
}

// readOneByte closes the channel it returns once one byte was read from
// r, which it then leaves alone.
func readOneByte(r io.Reader) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		if _, err := io.ReadFull(r, make([]byte, 1)); err == nil {
			close(ch)
		}
	}()
	return ch
}

func mkfifo(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Skip(err)
	}
	return p
}

// releaseFIFO opens p with the other end than one a test left blocked in
// open, so that it returns.
func releaseFIFO(p string, flag int) {
	if f, err := os.OpenFile(p, flag|syscall.O_NONBLOCK, 0); err == nil {
		f.Close()
	}
}

// TestCancelWrite: a cancel ends an export stuck writing its output or
// waiting for it within seconds, with context.Canceled.
func TestCancelWrite(t *testing.T) {
	t.Parallel()
	disk := mixedDisk(4<<20 + 1)
	for _, tc := range []struct {
		name string
		// setup points o at the output and returns a channel closed
		// once the export is stuck there.
		setup func(t *testing.T, o *export.Options) <-chan struct{}
	}{
		{"stdout that never takes a byte", func(t *testing.T, o *export.Options) <-chan struct{} {
			pr, pw := io.Pipe()
			t.Cleanup(func() { pr.Close() })
			w := &enterWriter{w: pw, entered: make(chan struct{})}
			o.Output, o.Stdout = export.Stdout, w
			return w.entered
		}},
		{"stdout a pipe nobody reads", func(t *testing.T, o *export.Options) <-chan struct{} {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { r.Close(); w.Close() })
			o.Output, o.Stdout = export.Stdout, w
			return readOneByte(r)
		}},
		{"FIFO with no reader", func(t *testing.T, o *export.Options) <-chan struct{} {
			p := mkfifo(t)
			t.Cleanup(func() { releaseFIFO(p, os.O_RDONLY) })
			o.Output = p
			started := make(chan struct{})
			o.Logger = slog.New(signalHandler{Handler: o.Logger.Handler(), msg: "export started", ch: started, once: &sync.Once{}})
			return started
		}},
		{"FIFO whose reader stops", func(t *testing.T, o *export.Options) <-chan struct{} {
			p := mkfifo(t)
			o.Output = p
			stuck := make(chan struct{})
			opened := make(chan *os.File, 1)
			go func() {
				f, err := os.OpenFile(p, os.O_RDONLY, 0) // until the export opens it
				if err != nil {
					return
				}
				opened <- f
				if _, err := io.ReadFull(f, make([]byte, 1)); err == nil {
					close(stuck)
				}
			}()
			t.Cleanup(func() {
				releaseFIFO(p, os.O_WRONLY)
				select {
				case f := <-opened:
					f.Close()
				default:
				}
			})
			return stuck
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := newTestRegistry(t, false)
			src := reg.push(t, "disks/cancel", imagetest.Image(t, diskimporterLayer(t, disk)))
			o := reg.options(t, src, "")
			stuck := tc.setup(t, &o)
			ctx, cancel := context.WithCancel(testContext(t))
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := export.Export(ctx, o)
				done <- err
			}()
			select {
			case <-stuck:
			case err := <-done:
				t.Fatalf("the export ended before it was stuck: %v", err)
			}
			cancel()
			bound := time.NewTimer(5 * time.Second)
			defer bound.Stop()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) || reason.Of(err) != "Cancelled" {
					t.Errorf("%v (%s), want context.Canceled, Cancelled", err, reason.Of(err))
				}
			case <-bound.C:
				t.Error("the export did not return within 5 s of the cancel")
			}
		})
	}
}

// TestFIFO: an export to a FIFO waits for its reader and gives it every
// byte.
func TestFIFO(t *testing.T) {
	t.Parallel()
	disk := mixedDisk(3<<20 + 7)
	reg := newTestRegistry(t, false)
	src := reg.push(t, "disks/fifo", imagetest.Image(t, diskimporterLayer(t, disk)))
	p := mkfifo(t)
	got := make(chan []byte, 1)
	go func() {
		var b []byte
		if f, err := os.OpenFile(p, os.O_RDONLY, 0); err == nil {
			b, _ = io.ReadAll(f)
			f.Close()
		}
		got <- b
	}()
	t.Cleanup(func() { releaseFIFO(p, os.O_WRONLY) })
	res, err := export.Export(testContext(t), reg.options(t, src, p))
	if err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, disk) || res.Size != int64(len(disk)) {
		t.Errorf("the reader got %d bytes, want the %d of the disk", len(b), len(disk))
	}
}
