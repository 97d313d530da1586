package importer

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Phase is a stage of an import, as reported to Options.OnProgress.
type Phase string

// Phases of an import. A single-pass import goes from PhasePushing to
// PhaseDone or PhaseFailed; a spooled one spends PhaseSpooling first.
const (
	// PhaseDownloading: opening the source and reading its first bytes.
	PhaseDownloading Phase = "downloading"
	// PhaseSpooling: writing the disk to the scratch directory, because its
	// size is not known up front.
	PhaseSpooling Phase = "spooling"
	// PhasePushing: streaming the disk into the registry (in a single-pass
	// import the source is downloaded in this phase too).
	PhasePushing Phase = "pushing"
	// PhaseDone: the image is written and tagged.
	PhaseDone Phase = "done"
	// PhaseFailed: the import failed; nothing was tagged.
	PhaseFailed Phase = "failed"
)

// Retry is one retry of the import, for Options.OnRetry.
type Retry struct {
	// Stage is RetrySource or RetryUpload.
	Stage string
	// Offset is where a source read resumes; 0 for an upload.
	Offset int64
	// Err is the failure that is retried.
	Err error
}

// Retry stages.
const (
	RetrySource = "source" // a source read resumed where it stopped
	RetryUpload = "upload" // the layer upload started again
)

// Progress is a snapshot of an import.
type Progress struct {
	Phase Phase
	// Bytes is how many bytes the phase has moved so far.
	Bytes int64
	// Total is how many bytes the phase will move; 0 when unknown.
	Total int64
	// BytesPerSecond is the phase's average rate so far.
	BytesPerSecond float64
}

// Percent returns Bytes as a percentage of Total, or 0 when Total is
// unknown.
func (p Progress) Percent() float64 {
	if p.Total <= 0 {
		return 0
	}
	return 100 * float64(p.Bytes) / float64(p.Total)
}

// ETA returns the time left at the average rate, or 0 when it cannot be
// told.
func (p Progress) ETA() time.Duration {
	if p.BytesPerSecond <= 0 || p.Total <= p.Bytes {
		return 0
	}
	return time.Duration(float64(p.Total-p.Bytes) / p.BytesPerSecond * float64(time.Second))
}

// tracker counts the bytes of the current phase and reports them.
type tracker struct {
	bytes atomic.Int64 // added to by the byte path, read by report

	mu    sync.Mutex
	phase Phase
	total int64
	start time.Time
}

// enter starts phase, with total bytes to move (0 when unknown).
func (t *tracker) enter(phase Phase, total int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.phase, t.total, t.start = phase, total, time.Now()
	t.bytes.Store(0)
}

func (t *tracker) snapshot() Progress {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := Progress{Phase: t.phase, Bytes: t.bytes.Load(), Total: t.total}
	if secs := time.Since(t.start).Seconds(); secs > 0 {
		p.BytesPerSecond = float64(p.Bytes) / secs
	}
	return p
}

// report logs the progress and passes it to onProgress every interval
// until ctx is done.
func (t *tracker) report(ctx context.Context, logger *slog.Logger, interval time.Duration, onProgress func(Progress)) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			p := t.snapshot()
			logProgress(logger, p)
			if onProgress != nil {
				onProgress(p)
			}
		}
	}
}

func logProgress(logger *slog.Logger, p Progress) {
	attrs := []any{"phase", p.Phase, "bytes", p.Bytes, "total", p.Total, "mb_per_second", round(p.BytesPerSecond / 1e6)}
	if p.Total > 0 {
		attrs = append(attrs, "percent", round(p.Percent()))
	}
	if eta := p.ETA(); eta > 0 {
		attrs = append(attrs, "eta", eta.Round(time.Second).String())
	}
	logger.Info("progress", attrs...)
}

func round(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }

// countingReader adds the bytes read to a counter.
type countingReader struct {
	r     io.Reader
	count *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.count.Add(int64(n))
	return n, err
}
