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

// progress counts the source bytes read by the current attempt.
type progress struct {
	total int64
	done  atomic.Int64
	start time.Time
}

// log writes a progress line every interval until ctx is done.
func (p *progress) log(ctx context.Context, logger *slog.Logger, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			done := p.done.Load()
			elapsed := time.Since(p.start).Seconds()
			rate := float64(done) / elapsed
			attrs := []any{"bytes", done, "total", p.total, "mb_per_second", round(rate / 1e6)}
			if p.total > 0 {
				attrs = append(attrs, "percent", round(100*float64(done)/float64(p.total)))
			}
			if rate > 0 && p.total > done {
				attrs = append(attrs, "eta", time.Duration(float64(p.total-done)/rate*float64(time.Second)).Round(time.Second).String())
			}
			logger.Info("progress", attrs...)
		}
	}
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
