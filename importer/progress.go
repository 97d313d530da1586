package importer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
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

// meteredReader counts the source bytes as the layer reads them and
// classifies read errors: an early end is ErrShortSource, anything else
// ErrSourceUnavailable.
type meteredReader struct {
	r       io.ReadCloser
	display string
	size    int64
	count   *atomic.Int64
}

func newMeteredReader(r io.ReadCloser, src *source, count *atomic.Int64) *meteredReader {
	count.Store(0)
	return &meteredReader{r: r, display: src.display, size: src.size, count: count}
}

func (m *meteredReader) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	read := m.count.Add(int64(n))
	switch {
	case err == nil, err == io.EOF:
	case errors.Is(err, io.ErrUnexpectedEOF):
		err = fmt.Errorf("%w: %s ended after %d of %d bytes: %w", ErrShortSource, m.display, read, m.size, err)
	default:
		err = fmt.Errorf("%w: reading %s at byte %d: %w", ErrSourceUnavailable, m.display, read, err)
	}
	return n, err
}

func (m *meteredReader) Close() error { return m.r.Close() }

// sourceDigest keeps the sha256 of the source as read by the attempts that
// reached its end, and notices when two of them differ.
type sourceDigest struct {
	mu      sync.Mutex
	sum     string
	changed bool
}

func (d *sourceDigest) record(h v1.Hash) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.sum != "" && d.sum != h.Hex {
		d.changed = true
	}
	d.sum = h.Hex
}

func (d *sourceDigest) get() (sum string, changed bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sum, d.changed
}
