package fetch

import (
	"math/rand/v2"
	"testing"
	"time"
)

// store is how a read goes at each level: the bytes per second that
// arrive, and the share of the time the consumer waits.
type store func(level int) (rate, waited float64)

// simulate runs a tuner of at most max pieces in flight through windows
// of tuneWindow for d, the rates off by up to noise either way, and
// returns the level it ends at and how many probes it made.
func simulate(max int, s store, noise float64, d time.Duration, rng *rand.Rand) (level, probes int) {
	t := newTuner(max)
	now := time.Unix(0, 0)
	for end := now.Add(d); now.Before(end); {
		now = now.Add(tuneWindow)
		rate, waited := s(t.level)
		rate *= 1 + noise*(2*rng.Float64()-1)
		w := window{length: tuneWindow, arrived: int64(rate * tuneWindow.Seconds()),
			waited: time.Duration(waited * float64(tuneWindow))}
		before := t.prev
		t.decide(w, now)
		if before == 0 && t.prev > 0 {
			probes++
		}
	}
	return t.level, probes
}

// TestTunerFindsLevel: the tuner ends at the level that pays, whatever
// noise of ±10% does to each window, and probes a level that does not
// pay less and less often.
func TestTunerFindsLevel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		s    store
		want int
	}{
		{"each connection paced, the consumer waiting", func(l int) (float64, float64) {
			return 40e6 * float64(l), 0.9
		}, 8},
		{"each connection paced, the consumer waiting at times", func(l int) (float64, float64) {
			return 40e6 * float64(l), 0.4
		}, 8},
		{"three connections' worth", func(l int) (float64, float64) {
			return 40e6 * float64(min(l, 3)), 0.4
		}, 4},
		{"the client's CPU the limit, more connections cost it", func(l int) (float64, float64) {
			return 500e6 - 10e6*float64(l), 0.5
		}, 2},
		{"the consumer the limit", func(int) (float64, float64) {
			return 100e6, 0.05
		}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for seed := range uint64(50) {
				rng := rand.New(rand.NewPCG(seed, 1))
				level, probes := simulate(8, tc.s, 0.1, time.Minute, rng)
				if level != tc.want {
					t.Fatalf("seed %d: ends at %d pieces in flight, want %d", seed, level, tc.want)
				}
				// Backing off 1, 2, 4, 8 and then every 16 s: at most
				// 7 probes that do not pay in a minute, and at most
				// two that do.
				if probes > 9 {
					t.Fatalf("seed %d: %d probes in a minute", seed, probes)
				}
			}
		})
	}
}

// TestTunerBacksOff: after a probe that did not pay, the next waits a
// second, then two; one that pays probes on at once.
func TestTunerBacksOff(t *testing.T) {
	t.Parallel()
	tn := newTuner(8)
	at := func(ms int) time.Time { return time.UnixMilli(int64(ms)) }
	win := func(rate float64) window {
		return window{length: time.Second, arrived: int64(rate), waited: time.Second / 2}
	}
	steps := []struct {
		ms   int
		rate float64
		want int
	}{
		{0, 100, 4},    // base; probe 4
		{200, 110, 2},  // did not pay: back to 2 until 1200
		{400, 100, 2},  // too early to probe
		{1200, 100, 4}, // probe again
		{1400, 100, 2}, // no: back until 3400
		{3000, 100, 2}, // too early
		{3400, 100, 4}, // probe
		{3600, 200, 8}, // paid: probe on at once
		{3800, 100, 4}, // did not pay: back to 4, the backoff a second again
		{4800, 100, 8}, // probe
		{5000, 270, 8}, // paid: over 1.3 × the better of 4's last two (200)
		{9000, 1, 8},   // the most: nothing changes
	}
	for _, s := range steps {
		if got, _ := tn.decide(win(s.rate), at(s.ms)); got != s.want {
			t.Fatalf("at %d ms, %v bytes/s: level %d, want %d", s.ms, s.rate, got, s.want)
		}
	}
	if !tn.settled() {
		t.Error("at the most and not probing, yet not settled")
	}
}

// TestTunerOneSlowWindow: a probe is judged against the better of the last
// two windows at the level it left, so that one slow window there (the
// client or the store paused) does not make it seem to pay.
func TestTunerOneSlowWindow(t *testing.T) {
	t.Parallel()
	tn := newTuner(8)
	at := func(ms int) time.Time { return time.UnixMilli(int64(ms)) }
	win := func(rate, waited float64) window {
		return window{length: time.Second, arrived: int64(rate), waited: time.Duration(waited * float64(time.Second))}
	}
	steps := []struct {
		ms           int
		rate, waited float64
		want         int
	}{
		{0, 100, 0.1, 2},    // the consumer hardly waits: no probe
		{200, 60, 0.5, 4},   // a slow window, the consumer waiting: probe
		{400, 90, 0.5, 2},   // 1.5 × the slow window, 0.9 × the one before: not kept
		{1400, 100, 0.5, 4}, // probe again after the backoff
		{1600, 140, 0.5, 8}, // 1.4 × the better of the last two (60, 100): kept; probe on
	}
	for _, s := range steps {
		if got, _ := tn.decide(win(s.rate, s.waited), at(s.ms)); got != s.want {
			t.Fatalf("at %d ms, %v bytes/s: level %d, want %d", s.ms, s.rate, got, s.want)
		}
	}
}

// TestCountsNeverShrink: a wait that began after the time a window is
// counted at adds nothing to it, rather than taking its length off.
func TestCountsNeverShrink(t *testing.T) {
	t.Parallel()
	now := time.Now()
	r := &parallelReader{}
	r.waited = time.Second
	r.waiting, r.waitingSince = &piece{}, now.Add(50*time.Millisecond)
	if w := r.counts(now); w.waited != time.Second {
		t.Errorf("a wait from 50 ms after the count: %v waited, want 1s", w.waited)
	}
	if w := r.counts(now.Add(80 * time.Millisecond)); w.waited != time.Second+30*time.Millisecond {
		t.Errorf("30 ms into that wait: %v waited, want 1.03s", w.waited)
	}
}
