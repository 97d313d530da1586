package main

import (
	"bytes"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vbauerster/mpb/v8"

	"github.com/diskimporter/diskimporter/importer"
)

func TestChooseProgressMode(t *testing.T) {
	for _, c := range []struct {
		quiet, tty bool
		term       string
		want       progressMode
	}{
		{false, true, "xterm-256color", progressBar},
		{false, true, "", progressBar},
		{false, true, "dumb", progressLog},
		{false, false, "xterm", progressLog},
		{true, true, "xterm", progressQuiet},
		{true, false, "", progressQuiet},
	} {
		if got := chooseProgressMode(c.quiet, c.tty, c.term); got != c.want {
			t.Errorf("quiet %v, tty %v, TERM %q: %s, want %s", c.quiet, c.tty, c.term, got, c.want)
		}
	}
}

func TestIsTerminal(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
	// /dev/null is a character device, but no terminal.
	for name, out := range map[string]any{"file": f, "pipe": w, "/dev/null": devNull, "buffer": &bytes.Buffer{}} {
		if w := out.(interface{ Write([]byte) (int, error) }); isTerminal(w) || canDrawLine(w) {
			t.Errorf("%s is taken for a terminal", name)
		}
	}
}

func TestProgressInterval(t *testing.T) {
	for _, c := range []struct {
		mode progressMode
		flag time.Duration
		want time.Duration
	}{
		{progressBar, 0, barInterval},
		{progressBar, 10 * time.Second, barInterval},
		{progressLog, 0, 0},
		{progressLog, time.Second, time.Second},
		{progressQuiet, 2 * time.Second, 2 * time.Second},
	} {
		if got := newConsole(&bytes.Buffer{}, c.mode).progressInterval(c.flag); got != c.want {
			t.Errorf("%s, --progress-interval %v: %v, want %v", c.mode, c.flag, got, c.want)
		}
	}
}

// TestLogFiltering: which records reach stderr in each mode.
func TestLogFiltering(t *testing.T) {
	for _, c := range []struct {
		mode progressMode
		want []string
	}{
		{progressLog, []string{"msg=progress", "msg=importing", "msg=\"source read failed; resuming\"", "msg=boom"}},
		{progressBar, []string{"msg=importing", "msg=\"source read failed; resuming\"", "msg=boom"}},
		{progressQuiet, []string{"msg=\"source read failed; resuming\"", "msg=boom"}},
	} {
		var out bytes.Buffer
		logger, err := newConsole(&out, c.mode).newLogger("text")
		if err != nil {
			t.Fatal(err)
		}
		l := logger.With("destination", "r/x:1") // as the importer does
		l.Info(progressMessage, "bytes", 1)
		l.Info("importing")
		l.Warn("source read failed; resuming", "offset", 5)
		l.Error("boom")
		lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		if len(lines) != len(c.want) {
			t.Errorf("%s: %d lines, want %d:\n%s", c.mode, len(lines), len(c.want), out.String())
			continue
		}
		for i, w := range c.want {
			if !strings.Contains(lines[i], w) || !strings.Contains(lines[i], "destination=r/x:1") {
				t.Errorf("%s: line %d %q, want %q", c.mode, i, lines[i], w)
			}
		}
	}
	if _, err := newConsole(&bytes.Buffer{}, progressLog).newLogger("xml"); err == nil {
		t.Error("--log-format xml accepted")
	}
	// auto on a buffer: JSON.
	var out bytes.Buffer
	l, _ := newConsole(&out, progressLog).newLogger("auto")
	l.Info("x")
	if !strings.HasPrefix(out.String(), "{") {
		t.Errorf("auto on a buffer: %q, want JSON", out.String())
	}
}

// syncBuffer is a bytes.Buffer safe for the bar's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ansi matches the terminal control sequences mpb's writer uses.
var ansi = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)

// barConsole is a console drawing the live line into a buffer, as it would
// on a 120-column terminal, with a clock that advances one second a report.
func barConsole() (*console, *syncBuffer) {
	out := &syncBuffer{}
	c := newConsole(out, progressBar, mpb.WithAutoRefresh(), mpb.WithWidth(120), mpb.WithRefreshRate(5*time.Millisecond))
	now := time.Unix(1000, 0)
	c.bar.now = func() time.Time { now = now.Add(time.Second); return now }
	return c, out
}

// waitFor waits until the output, without control sequences, matches re.
func waitFor(t *testing.T, out *syncBuffer, re string) {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(5 * time.Second)
	for !rx.MatchString(ansi.ReplaceAllString(out.String(), "")) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the output:\n%s", re, ansi.ReplaceAllString(out.String(), ""))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestBarRendering(t *testing.T) {
	c, out := barConsole()
	logger, err := c.newLogger("text")
	if err != nil {
		t.Fatal(err)
	}
	const gib = 1 << 30
	c.report(importer.Progress{Phase: importer.PhaseDownloading})
	c.report(importer.Progress{Phase: importer.PhasePushing, Bytes: gib / 2, Total: gib, BytesPerSecond: 80e6})
	// The phase average until a rate is known.
	waitFor(t, out, `pushing +\[=+>-+\] +512\.0 MiB / 1\.0 GiB +50\.0% +80\.0 MB/s  ETA 7s`)
	logger.Info(progressMessage, "bytes", gib/2)
	logger.Warn("a warning while the line is drawn")
	// 100e6 bytes in the second between the reports.
	c.report(importer.Progress{Phase: importer.PhasePushing, Bytes: gib/2 + 100e6, Total: gib, BytesPerSecond: 80e6})
	waitFor(t, out, `607\.4 MiB / 1\.0 GiB +59\.3% +100\.0 MB/s  ETA 4s`)
	c.report(importer.Progress{Phase: importer.PhaseDone, Bytes: gib, Total: gib, BytesPerSecond: 150e6})
	logger.Info("imported")
	c.finish()
	c.finish() // twice is fine
	logger.Info("after the line")

	text := ansi.ReplaceAllString(out.String(), "")
	// The final line: the phase's average rate, no ETA.
	if !regexp.MustCompile(`done +\[=+\] +1\.0 GiB / 1\.0 GiB +100\.0% +150\.0 MB/s *\n`).MatchString(text) {
		t.Errorf("no final line:\n%s", text)
	}
	if !strings.Contains(text, "level=WARN msg=\"a warning while the line is drawn\"\n") {
		t.Errorf("the warning is not on a line of its own:\n%s", text)
	}
	if strings.Contains(text, "msg=progress") {
		t.Errorf("a progress record was printed under the live line:\n%s", text)
	}
	// The line is complete before what follows it.
	done := strings.LastIndex(text, "done ")
	if after := strings.Index(text, "after the line"); after < done {
		t.Errorf("a record written after finish is above the final line:\n%s", text)
	}
	if strings.LastIndex(text, "pushing ") > done {
		t.Errorf("the final line is not the last:\n%s", text)
	}
}

func TestBarFailure(t *testing.T) {
	c, out := barConsole()
	c.report(importer.Progress{Phase: importer.PhaseSpooling, Bytes: 3 << 20})
	// An unknown total: an empty bar, no percent.
	waitFor(t, out, `spooling +\[-+\] +3\.0 MiB / \? +0\.0 MB/s`)
	c.report(importer.Progress{Phase: importer.PhaseFailed, Bytes: 3 << 20})
	c.finish()
	text := ansi.ReplaceAllString(out.String(), "")
	if !regexp.MustCompile(`failed +\[-+\] +3\.0 MiB / \? +0\.0 MB/s *\n$`).MatchString(text) {
		t.Errorf("the last line is not the failed one:\n%s", text)
	}
}

// TestBarNotStarted: an import that ends before its first report draws no
// line, and finish without a line returns at once.
func TestBarNotStarted(t *testing.T) {
	c, out := barConsole()
	c.report(importer.Progress{Phase: importer.PhaseDone, Bytes: 10, Total: 10})
	c.finish()
	c.report(importer.Progress{Phase: importer.PhasePushing, Bytes: 1, Total: 10}) // after finish: ignored
	if out.String() != "" {
		t.Errorf("output %q, want none", out.String())
	}
	// finish before any report: nothing either.
	c2, out2 := barConsole()
	c2.finish()
	if out2.String() != "" {
		t.Errorf("output %q, want none", out2.String())
	}
}

// TestBarUploadRetry: the bytes going down (an upload retry reads the disk
// again) do not complete or break the line.
func TestBarUploadRetry(t *testing.T) {
	c, out := barConsole()
	c.report(importer.Progress{Phase: importer.PhasePushing, Bytes: 900, Total: 1000})
	waitFor(t, out, `pushing +\[=+>-+\] +900 B / 1000 B +90\.0%`)
	c.report(importer.Progress{Phase: importer.PhasePushing, Bytes: 100, Total: 1000})
	waitFor(t, out, `pushing +\[=+>-+\] +100 B / 1000 B +10\.0%`)
	c.report(importer.Progress{Phase: importer.PhaseDone, Bytes: 1000, Total: 1000})
	c.finish()
	waitFor(t, out, `done +\[=+\] +1000 B / 1000 B +100\.0% *\S* MB/s *\n$`)
}

func TestRateMeter(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	var m rateMeter
	push := func(b int64) importer.Progress { return importer.Progress{Phase: importer.PhasePushing, Bytes: b} }
	if _, ok := m.add(push(0), at(0)); ok {
		t.Error("a rate from one report")
	}
	if r, ok := m.add(push(100e6), at(1000)); !ok || r != 100e6 {
		t.Errorf("rate %v %v, want 100e6", r, ok)
	}
	m.add(push(200e6), at(2000))
	m.add(push(300e6), at(3000))
	// At 5 s the window (3 s) holds the reports from 2 s on.
	if r, _ := m.add(push(700e6), at(5000)); r != 500e6/3 {
		t.Errorf("rate %v, want %v", r, 500e6/3)
	}
	// Reports further apart than the window: the last two.
	if r, _ := m.add(push(800e6), at(15000)); r != 10e6 {
		t.Errorf("rate %v, want 10e6", r)
	}
	// Bytes going down (upload retry), a new phase: start over.
	if _, ok := m.add(push(1), at(16000)); ok {
		t.Error("a rate across an upload retry")
	}
	if _, ok := m.add(importer.Progress{Phase: importer.PhaseDone, Bytes: 5}, at(17000)); ok {
		t.Error("a rate across phases")
	}
	if len(m.samples) > 3 {
		t.Errorf("%d samples kept", len(m.samples))
	}
}

func TestFormat(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536 << 20: "1.5 GiB", 3 << 40: "3.0 TiB"} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", n, got, want)
		}
	}
	got := formatNumbers(importer.Progress{Phase: importer.PhasePushing, Bytes: 256 << 20, Total: 1 << 30}, 100e6)
	if want := "  256.0 MiB / 1.0 GiB     25.0%    100.0 MB/s  ETA 8s"; strings.TrimRight(got, " ") != want {
		t.Errorf("formatNumbers = %q, want %q", got, want)
	}
	got = formatNumbers(importer.Progress{Phase: importer.PhaseDownloading, Bytes: 1 << 20}, 0)
	if want := "    1.0 MiB / ?                      0.0 MB/s"; strings.TrimRight(got, " ") != want {
		t.Errorf("formatNumbers = %q, want %q", got, want)
	}
}

func TestComposeProgress(t *testing.T) {
	var calls []string
	f := composeProgress(nil, func(importer.Progress) { calls = append(calls, "a") }, nil, func(p importer.Progress) {
		calls = append(calls, string(p.Phase))
	})
	f(importer.Progress{Phase: importer.PhasePushing})
	if strings.Join(calls, ",") != "a,pushing" {
		t.Errorf("calls %q", calls)
	}
	composeProgress()(importer.Progress{}) // nothing to call
}
