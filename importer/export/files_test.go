package export_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/diskimporter/diskimporter/importer/export"
	"github.com/diskimporter/diskimporter/importer/imagetest"
)

// logRecorder keeps the log records of an export, and sends them on to t.
type logRecorder struct {
	slog.Handler
	mu      *sync.Mutex
	records *[]string // "LEVEL message attrs…"
	attrs   string
}

func newLogRecorder(t *testing.T) (*slog.Logger, *logRecorder) {
	r := &logRecorder{
		Handler: slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}),
		mu:      &sync.Mutex{},
		records: new([]string),
	}
	return slog.New(r), r
}

func (r *logRecorder) Handle(ctx context.Context, rec slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s%s", rec.Level, rec.Message, r.attrs)
	rec.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	r.mu.Lock()
	*r.records = append(*r.records, b.String())
	r.mu.Unlock()
	return r.Handler.Handle(ctx, rec)
}

func (r *logRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	c := *r
	c.Handler = r.Handler.WithAttrs(as)
	for _, a := range as {
		c.attrs += fmt.Sprintf(" %s=%v", a.Key, a.Value)
	}
	return &c
}

func (r *logRecorder) WithGroup(name string) slog.Handler {
	c := *r
	c.Handler = r.Handler.WithGroup(name)
	return &c
}

// matching returns the records of the level that hold every one of subs.
func (r *logRecorder) matching(level slog.Level, subs ...string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
next:
	for _, rec := range *r.records {
		if !strings.HasPrefix(rec, level.String()+" ") {
			continue
		}
		for _, s := range subs {
			if !strings.Contains(rec, s) {
				continue next
			}
		}
		out = append(out, rec)
	}
	return out
}

// interrupt runs an export of o that is cancelled once the registry has
// sent half the disk, and returns the state file it leaves, decoded.
func interrupt(t *testing.T, reg *testRegistry, o export.Options, size int) map[string]any {
	t.Helper()
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	stop := func(total int64) {
		if total >= int64(size)/2 {
			cancel()
		}
	}
	reg.onServed.Store(&stop)
	defer reg.onServed.Store(nil)
	if _, err := export.Export(ctx, o); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled export: %v", err)
	}
	b, err := os.ReadFile(o.Output + ".partial.state")
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if done, _ := st["done"].(float64); done < 1<<20 {
		t.Fatalf("the cancelled export left %v bytes done, want 1 MiB or more", st["done"])
	}
	return st
}

func writeState(t *testing.T, path string, st map[string]any) {
	t.Helper()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestResumeChecksPartial: a rerun resumes only from a partial file that
// still holds the bytes its state file recorded, and a state file that is
// damaged or of another version is a reason to start over, said in one
// warning, never a digest mismatch.
func TestResumeChecksPartial(t *testing.T) {
	t.Parallel()
	const size = 4<<20 + 4321
	disk := mixedDisk(size)
	for _, tc := range []struct {
		name   string
		spoil  func(t *testing.T, out string, st map[string]any)
		resume bool   // want a resume from the state's done
		why    string // in the warning, when not resume
	}{
		{name: "intact", resume: true, spoil: func(*testing.T, string, map[string]any) {}},
		{name: "first MiB of the partial file overwritten", why: "are not those the state file recorded",
			spoil: func(t *testing.T, out string, _ map[string]any) {
				f, err := os.OpenFile(out+".partial", os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, 1<<20), 0); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "one byte of the partial file changed", why: "are not those the state file recorded",
			spoil: func(t *testing.T, out string, st map[string]any) {
				f, err := os.OpenFile(out+".partial", os.O_RDWR, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				at := int64(st["done"].(float64)) - 1
				b := []byte{0}
				f.ReadAt(b, at)
				if _, err := f.WriteAt([]byte{b[0] ^ 1}, at); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "sha256 state damaged", why: "damaged",
			spoil: func(t *testing.T, out string, st map[string]any) {
				h, err := base64.StdEncoding.DecodeString(st["sha256_state"].(string))
				if err != nil || len(h) < 16 {
					t.Fatalf("sha256_state %v: %v", st["sha256_state"], err)
				}
				h[8] ^= 0x40 // a word of the state; its magic and count stay right
				st["sha256_state"] = h
				writeState(t, out+".partial.state", st)
			}},
		{name: "state file of version 1", why: "version 1",
			spoil: func(t *testing.T, out string, st map[string]any) {
				st["version"] = 1
				writeState(t, out+".partial.state", st)
			}},
		{name: "garbage state file", why: "damaged",
			spoil: func(t *testing.T, out string, _ map[string]any) {
				os.WriteFile(out+".partial.state", []byte("{\"version\": 2, \"done\": 10"), 0o600)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := newTestRegistry(t, false)
			src := reg.push(t, "disks/check", imagetest.Image(t, diskimporterLayer(t, disk)))
			out := filepath.Join(t.TempDir(), "disk.img")
			o := reg.options(t, src, out)
			o.CheckpointInterval = 1 << 20
			st := interrupt(t, reg, o, size)
			tc.spoil(t, out, st)

			logger, rec := newLogRecorder(t)
			o.Logger = logger
			res, err := export.Export(testContext(t), o)
			if err != nil {
				t.Fatalf("rerun: %v", err)
			}
			checkOutput(t, out, disk)
			warnings := rec.matching(slog.LevelWarn)
			if tc.resume {
				if res.ResumedFrom != int64(st["done"].(float64)) || len(warnings) != 0 ||
					len(rec.matching(slog.LevelInfo, "partial output re-read", fmt.Sprintf("bytes=%d", res.ResumedFrom))) != 1 {
					t.Errorf("resumed from %d, the state said %v; warnings %q", res.ResumedFrom, st["done"], warnings)
				}
				return
			}
			if res.ResumedFrom != 0 || len(warnings) != 1 || !strings.Contains(warnings[0], "starting over") || !strings.Contains(warnings[0], tc.why) {
				t.Errorf("resumed from %d; warnings %q, want one saying it starts over as %q", res.ResumedFrom, warnings, tc.why)
			}
		})
	}
}

// TestConcurrentExports: a second export to an output that another
// export is writing fails at once; the first goes on, undisturbed.
func TestConcurrentExports(t *testing.T) {
	t.Parallel()
	disk := mixedDisk(3<<20 + 555)
	regA, regB := newTestRegistry(t, false), newTestRegistry(t, false)
	img := imagetest.Image(t, diskimporterLayer(t, disk))
	srcA, srcB := regA.push(t, "disks/a", img), regB.push(t, "disks/a", img)
	out := filepath.Join(t.TempDir(), "disk.img")

	// A stalls in its disk read, past its first MiB, until B is done.
	reached, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	stall := func(total int64) {
		if total >= 1<<20 {
			once.Do(func() {
				close(reached)
				<-release
			})
		}
	}
	regA.onServed.Store(&stall)
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	type result struct {
		res *export.Result
		err error
	}
	first := make(chan result, 1)
	go func() {
		res, err := export.Export(testContext(t), regA.options(t, srcA, out))
		first <- result{res, err}
	}()
	select {
	case <-reached:
	case r := <-first:
		t.Fatalf("the first export ended before it stalled: %v", r.err)
	}

	_, err := export.Export(testContext(t), regB.options(t, srcB, out))
	unblock()
	if !errors.Is(err, export.ErrOutput) || !strings.Contains(err.Error(), "another export is writing "+out) {
		t.Errorf("second export: %v, want ErrOutput: another export is writing %s", err, out)
	}
	r := <-first
	if r.err != nil {
		t.Fatalf("first export: %v", r.err)
	}
	checkOutput(t, out, disk)
}

// TestSymlinks: a symbolic link planted where the export writes its
// partial file, its state file, or (in older versions) the state file's
// temporary file is not followed: a link at the first two fails the
// export, and the temporary file now has a random name, created afresh.
func TestSymlinks(t *testing.T) {
	t.Parallel()
	disk := mixedDisk(2<<20 + 3)
	for _, tc := range []struct {
		suffix string
		fail   bool
	}{
		{".partial", true},
		{".partial.state", true},
		{".partial.state.tmp", false},
	} {
		t.Run(tc.suffix, func(t *testing.T) {
			t.Parallel()
			reg := newTestRegistry(t, false)
			src := reg.push(t, "disks/link", imagetest.Image(t, diskimporterLayer(t, disk)))
			victim := filepath.Join(t.TempDir(), "victim")
			if err := os.WriteFile(victim, []byte("precious"), 0o600); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			out, link := filepath.Join(dir, "disk.img"), filepath.Join(dir, "disk.img"+tc.suffix)
			if err := os.Symlink(victim, link); err != nil {
				t.Fatal(err)
			}
			o := reg.options(t, src, out)
			o.CheckpointInterval = 256 << 10
			_, err := export.Export(testContext(t), o)
			if b, rerr := os.ReadFile(victim); rerr != nil || string(b) != "precious" {
				t.Errorf("the victim holds %d bytes %.20q (%v), want precious", len(b), b, rerr)
			}
			if fi, lerr := os.Lstat(link); lerr != nil || fi.Mode()&os.ModeSymlink == 0 {
				t.Errorf("the link was replaced or removed: %v", lerr)
			}
			if !tc.fail {
				if err != nil {
					t.Fatal(err)
				}
				os.Remove(link)
				checkOutput(t, out, disk)
				return
			}
			if !errors.Is(err, export.ErrOutput) || !strings.Contains(err.Error(), link+" is a symbolic link") {
				t.Errorf("%v, want ErrOutput naming %s as a symbolic link", err, link)
			}
			if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the output exists: %v", err)
			}
		})
	}
}

// TestPrivateFiles: the partial file and its state file are readable by
// their owner only, even when an older export left the partial file
// readable by all.
func TestPrivateFiles(t *testing.T) {
	t.Parallel()
	const size = 4<<20 + 11
	disk := mixedDisk(size)
	reg := newTestRegistry(t, false)
	src := reg.push(t, "disks/private", imagetest.Image(t, diskimporterLayer(t, disk)))
	out := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(out+".partial", []byte("left by an older version"), 0o644); err != nil {
		t.Fatal(err)
	}
	o := reg.options(t, src, out)
	o.CheckpointInterval = 1 << 20
	interrupt(t, reg, o, size)
	for _, p := range []string{out + ".partial", out + ".partial.state"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want -rw-------", p, fi.Mode())
		}
	}
}

// TestResultRounded: Seconds and MBPerSecond are rounded to 0.1, as the
// importer's are.
func TestResultRounded(t *testing.T) {
	t.Parallel()
	disk := mixedDisk(1<<20 + 1)
	reg := newTestRegistry(t, false)
	src := reg.push(t, "disks/round", imagetest.Image(t, diskimporterLayer(t, disk)))
	res, err := export.Export(testContext(t), reg.options(t, src, filepath.Join(t.TempDir(), "disk.img")))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []float64{res.Seconds, res.MBPerSecond} {
		if v < 0 || math.Abs(v*10-math.Round(v*10)) > 1e-6 {
			t.Errorf("seconds %v, mb_per_second %v: want both rounded to 0.1", res.Seconds, res.MBPerSecond)
		}
	}
}
