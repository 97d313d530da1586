package importer_test

import (
	"sync"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/importer"
)

func TestProgressArithmetic(t *testing.T) {
	for _, tc := range []struct {
		p       importer.Progress
		percent float64
		eta     time.Duration
	}{
		{importer.Progress{Bytes: 50, Total: 200, BytesPerSecond: 10}, 25, 15 * time.Second},
		{importer.Progress{Bytes: 50, Total: 0, BytesPerSecond: 10}, 0, 0},
		{importer.Progress{Bytes: 50, Total: 200, BytesPerSecond: 0}, 25, 0},
		{importer.Progress{Bytes: 200, Total: 200, BytesPerSecond: 10}, 100, 0},
	} {
		if got := tc.p.Percent(); got != tc.percent {
			t.Errorf("%+v: Percent = %v, want %v", tc.p, got, tc.percent)
		}
		if got := tc.p.ETA(); got != tc.eta {
			t.Errorf("%+v: ETA = %v, want %v", tc.p, got, tc.eta)
		}
	}
}

// TestOnProgress checks that OnProgress sees the push and ends with done,
// or with failed when the import fails.
func TestOnProgress(t *testing.T) {
	const size = 3 << 20
	for _, tc := range []struct {
		name   string
		source func(t *testing.T, src *testSource) string
		final  importer.Phase
	}{
		{"done", func(_ *testing.T, src *testSource) string { return src.url }, importer.PhaseDone},
		{"failed", func(t *testing.T, _ *testSource) string { return t.TempDir() + "/missing.img" }, importer.PhaseFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := newTestRegistry(t)
			src := newTestSource(t, serveDisk(size))
			var mu sync.Mutex
			var seen []importer.Progress
			o := baseOptions(reg, tc.source(t, src))
			o.ProgressInterval = time.Millisecond
			o.OnProgress = func(p importer.Progress) {
				mu.Lock()
				defer mu.Unlock()
				seen = append(seen, p)
			}
			importer.Run(testContext(t), o)
			mu.Lock()
			defer mu.Unlock()
			if len(seen) == 0 {
				t.Fatal("OnProgress was never called")
			}
			last := seen[len(seen)-1]
			if last.Phase != tc.final {
				t.Errorf("last phase %s, want %s", last.Phase, tc.final)
			}
			if tc.final == importer.PhaseDone && (last.Bytes != size || last.Total != size) {
				t.Errorf("final progress %+v, want %d of %d bytes", last, size, size)
			}
		})
	}
}
