package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/redact"
)

// progressMode is how an import shows its progress on stderr.
type progressMode int

const (
	// progressLog: a slog "progress" record every --progress-interval,
	// as when stderr is a file, a pipe or a Pod's log.
	progressLog progressMode = iota
	// progressBar: one live line on the terminal, redrawn in place.
	progressBar
	// progressQuiet (--quiet): neither; warnings, errors and the result
	// only.
	progressQuiet
)

func (m progressMode) String() string {
	switch m {
	case progressBar:
		return "bar"
	case progressQuiet:
		return "quiet"
	}
	return "log"
}

// chooseProgressMode decides how progress is shown: --quiet shows none; a
// terminal on stderr gets the live line, unless TERM says it cannot move
// the cursor; anything else gets the periodic log lines.
func chooseProgressMode(quiet, stderrTTY bool, termEnv string) progressMode {
	switch {
	case quiet:
		return progressQuiet
	case stderrTTY && termEnv != "dumb":
		return progressBar
	}
	return progressLog
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// canDrawLine reports whether a live line can be drawn on w: a terminal
// with a size. A pseudo-terminal nobody set a size on (script(1) without
// a terminal, some CI runners) is 0x0, where nothing would be drawn.
func canDrawLine(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return false
	}
	width, height, err := term.GetSize(int(f.Fd()))
	return err == nil && width > 0 && height > 0
}

// barInterval is how often the importer reports progress while the live
// line is drawn (Options.ProgressInterval): the line is fed from those
// reports, never from the byte path.
const barInterval = 200 * time.Millisecond

// progressMessage is the message of the importer's periodic progress
// record (importer.logProgress), replaced by the live line on a terminal
// and dropped by --quiet.
const progressMessage = "progress"

// console is stderr of one run: the logger's output and, on a terminal,
// the live progress line, which log records are printed above.
type console struct {
	mode   progressMode
	stderr io.Writer
	logOut *switchWriter
	bar    *barDisplay // progressBar only
	// red, when set, redacts every log record.
	red *redact.Redactor
}

// newConsole returns the console of stderr in mode. barOpts are added to
// the progress container's options (tests set a width and force
// refreshing on a buffer).
func newConsole(stderr io.Writer, mode progressMode, barOpts ...mpb.ContainerOption) *console {
	c := &console{mode: mode, stderr: stderr, logOut: &switchWriter{w: stderr, fallback: stderr}}
	if mode == progressBar {
		c.bar = &barDisplay{out: stderr, logs: c.logOut, opts: barOpts, now: time.Now}
	}
	return c
}

// newLogger returns the logger of the run in format (text, json, or auto:
// text when stderr is a terminal). Its records go above the live line
// while one is drawn; the importer's progress records are dropped when
// the line replaces them or with --quiet, which drops every record below
// Warn.
func (c *console) newLogger(format string) (*slog.Logger, error) {
	switch format {
	case "auto":
		format = "json"
		if isTerminal(c.stderr) {
			format = "text"
		}
	case "text", "json":
	default:
		return nil, fmt.Errorf("--log-format %q: want text, json or auto", format)
	}
	out := io.Writer(c.logOut)
	if c.red != nil {
		out = redactWriter{c.logOut, c.red}
	}
	var h slog.Handler = slog.NewJSONHandler(out, nil)
	if format == "text" {
		h = slog.NewTextHandler(out, nil)
	}
	f := &logFilter{minLevel: slog.LevelInfo, dropProgress: c.mode != progressLog}
	if c.mode == progressQuiet {
		f.minLevel = slog.LevelWarn
	}
	return slog.New(filterHandler{next: h, f: f}), nil
}

// progressInterval is Options.ProgressInterval for --progress-interval
// flag (0: the importer's default): the live line needs frequent reports;
// the log lines come at the interval asked for.
func (c *console) progressInterval(flag time.Duration) time.Duration {
	if c.mode == progressBar {
		return barInterval
	}
	return flag
}

// report is the console's Options.OnProgress.
func (c *console) report(p importer.Progress) {
	if c.bar != nil {
		c.bar.update(p)
	}
}

// finish completes (or, after a failure, stops) the live line and waits
// until it is drawn, so that what is printed next comes below it. It may
// be called more than once.
func (c *console) finish() {
	if c.bar != nil {
		c.bar.finish()
	}
}

// composeProgress returns an OnProgress calling each of fns not nil, in
// order. The terminal and the metrics come before the Pod annotations,
// whose patch may block up to its timeout.
func composeProgress(fns ...func(importer.Progress)) func(importer.Progress) {
	var list []func(importer.Progress)
	for _, fn := range fns {
		if fn != nil {
			list = append(list, fn)
		}
	}
	return func(p importer.Progress) {
		for _, fn := range list {
			fn(p)
		}
	}
}

// logFilter decides which records a filterHandler passes on.
type logFilter struct {
	minLevel     slog.Level
	dropProgress bool
}

// filterHandler drops the records its logFilter rejects.
type filterHandler struct {
	next slog.Handler
	f    *logFilter
}

func (h filterHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return level >= h.f.minLevel && h.next.Enabled(ctx, level)
}

func (h filterHandler) Handle(ctx context.Context, r slog.Record) error {
	if h.f.dropProgress && r.Level == slog.LevelInfo && r.Message == progressMessage {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h filterHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return filterHandler{next: h.next.WithAttrs(attrs), f: h.f}
}

func (h filterHandler) WithGroup(name string) slog.Handler {
	return filterHandler{next: h.next.WithGroup(name), f: h.f}
}

// switchWriter writes to w, which the live line switches to itself while
// it is drawn, and to fallback once w says it is done.
type switchWriter struct {
	mu       sync.Mutex
	w        io.Writer
	fallback io.Writer
}

func (s *switchWriter) set(w io.Writer) {
	s.mu.Lock()
	s.w = w
	s.mu.Unlock()
}

func (s *switchWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	w := s.w
	s.mu.Unlock()
	n, err := w.Write(b)
	if errors.Is(err, mpb.ErrDone) && w != s.fallback {
		return s.fallback.Write(b)
	}
	return n, err
}

// barDisplay is the live progress line: an mpb bar whose numbers come from
// the importer's reports.
type barDisplay struct {
	out  io.Writer
	logs *switchWriter
	opts []mpb.ContainerOption
	now  func() time.Time

	mu       sync.Mutex // serialises update and finish
	p        *mpb.Progress
	bar      *mpb.Bar
	rate     rateMeter
	finished bool

	// state is what the decorators draw; they run on mpb's goroutines,
	// which must never wait for mu (update holds it while calling the bar).
	state atomic.Pointer[barState]
}

// barState is one report as drawn.
type barState struct {
	p    importer.Progress
	rate float64 // bytes per second, recent; the phase average until known
}

// update draws p. The first report that is not final starts the line: an
// import that ends before its first report draws nothing.
func (d *barDisplay) update(p importer.Progress) {
	d.mu.Lock()
	defer d.mu.Unlock()
	final := p.Phase == importer.PhaseDone || p.Phase == importer.PhaseFailed
	if d.finished || d.bar == nil && final {
		return
	}
	rate, ok := d.rate.add(p, d.now())
	if !ok || final {
		rate = p.BytesPerSecond
	}
	d.state.Store(&barState{p: p, rate: rate})
	if d.bar == nil {
		d.start()
	}
	switch p.Phase {
	case importer.PhaseDone:
		d.bar.SetCurrent(p.Bytes)
		d.bar.SetTotal(-1, true) // total = current: complete
	case importer.PhaseFailed:
		d.bar.Abort(false) // keep the line as it stopped
	default:
		// The bar was made with total 0, so it completes only when told:
		// bytes go down on an upload retry, and the total changes with
		// the phase.
		d.bar.SetTotal(max(p.Total, 0), false)
		cur := p.Bytes
		if p.Total > 0 {
			cur = min(cur, p.Total)
		}
		d.bar.SetCurrent(cur)
	}
}

func (d *barDisplay) start() {
	opts := append([]mpb.ContainerOption{mpb.WithOutput(d.out), mpb.WithRefreshRate(barInterval)}, d.opts...)
	d.p = mpb.New(opts...)
	d.bar = d.p.New(0, mpb.BarStyle(),
		mpb.PrependDecorators(decor.Any(func(decor.Statistics) string { return d.phaseText() }, decor.WC{W: 12, C: decor.DindentRight})),
		mpb.AppendDecorators(decor.Any(func(decor.Statistics) string { return d.numbersText() })),
	)
	d.logs.set(d.p)
}

// finish ends the line and waits until it is drawn for the last time.
func (d *barDisplay) finish() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.finished {
		return
	}
	d.finished = true
	if d.p == nil {
		return
	}
	d.bar.Abort(false) // nothing if the import completed it
	d.p.Wait()
	d.logs.set(d.out)
}

func (d *barDisplay) phaseText() string {
	if s := d.state.Load(); s != nil {
		return string(s.p.Phase)
	}
	return ""
}

// numbersText is the right of the line, such as
// "512.0 MiB / 1.0 GiB  50.0%  210.3 MB/s  ETA 3s".
func (d *barDisplay) numbersText() string {
	s := d.state.Load()
	if s == nil {
		return ""
	}
	return formatNumbers(s.p, s.rate)
}

// formatNumbers formats bytes, total, percent, MB/s (10^6 bytes, as the
// logs and annotations) and the time left at rate.
func formatNumbers(p importer.Progress, rate float64) string {
	total, percent := "?", "    "
	if p.Total > 0 {
		total = formatBytes(p.Total)
		percent = fmt.Sprintf("%5.1f%%", p.Percent())
	}
	eta := ""
	if p.Phase != importer.PhaseDone && p.Phase != importer.PhaseFailed && p.Total > p.Bytes && rate > 0 {
		left := time.Duration(float64(p.Total-p.Bytes) / rate * float64(time.Second))
		eta = "ETA " + left.Round(time.Second).String()
	}
	return fmt.Sprintf(" %10s / %-10s %6s %8.1f MB/s  %-10s", formatBytes(p.Bytes), total, percent, rate/1e6, eta)
}

// formatBytes writes n in binary units with one decimal: "512.0 MiB".
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f, i := float64(n), -1
	for f >= unit && i < 4 {
		f /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", f, "KMGTP"[i])
}

// rateMeter turns the reports of a phase into a recent rate: bytes per
// second over the last window, or over the last two reports when they are
// further apart.
type rateMeter struct {
	window  time.Duration // 0: 3s
	phase   importer.Phase
	samples []rateSample // of phase, oldest first, bytes never going down
}

type rateSample struct {
	at    time.Time
	bytes int64
}

// add records p at now and returns the recent rate, or false when there is
// none yet: the first report of a phase, or the first after the bytes went
// down (an upload retry reads the disk again from zero).
func (m *rateMeter) add(p importer.Progress, now time.Time) (float64, bool) {
	window := m.window
	if window <= 0 {
		window = 3 * time.Second
	}
	if p.Phase != m.phase || len(m.samples) > 0 && p.Bytes < m.samples[len(m.samples)-1].bytes {
		m.phase, m.samples = p.Phase, m.samples[:0]
	}
	m.samples = append(m.samples, rateSample{now, p.Bytes})
	for len(m.samples) > 2 && now.Sub(m.samples[1].at) >= window {
		m.samples = m.samples[1:]
	}
	if len(m.samples) < 2 {
		return 0, false
	}
	first, last := m.samples[0], m.samples[len(m.samples)-1]
	secs := last.at.Sub(first.at).Seconds()
	if secs <= 0 {
		return 0, false
	}
	return float64(last.bytes-first.bytes) / secs, true
}
