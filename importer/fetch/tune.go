package fetch

import "time"

// A parallel read does not start with every connection it may use. A
// client short of CPU reads a fast store faster with fewer pieces in
// flight: on one core, an export of a MinIO store took 2.37 CPU s/GiB
// and read 389 MiB/s with eight pieces always in flight, 2.05 and 412
// with them tuned (go run ./e2e/bench, 2026-12-06). A store that paces
// each connection needs them all. So the reader starts with tuneStart
// pieces in flight and adds more, up to Options.Connections, for as long
// as that pays:
//
//   - it probes a higher level only while the consumer waits on the
//     source for at least tuneWaiting of a window (a consumer that is
//     never kept waiting gains nothing from more): twice the pieces, or
//     all of them when the consumer waited tuneStarved of the window;
//   - a probe is kept when, over a window measured after a warm-up (in
//     which the new pieces connect, and the buffers they bring fill), the
//     bytes arriving per second grew by tuneGain over the better of the
//     last two windows at the level it left: one slow window there (the
//     client or the store paused) does not make a probe seem to pay;
//   - after a probe that did not pay, the next waits tuneBackoff, doubling
//     up to tuneMaxBackoff, so that a store that changes pace is probed
//     again now and then.
//
// A window lasts tuneWindow, or four times the time a piece waits for its
// first byte when that is longer, so that a far store is judged on its
// flow rather than on its round trips.
const (
	tuneStart      = 2
	tuneTick       = 25 * time.Millisecond
	tuneWindow     = 200 * time.Millisecond
	tuneWarm       = 100 * time.Millisecond
	tuneMaxWarm    = 2 * time.Second
	tuneGain       = 1.3
	tuneWaiting    = 0.2
	tuneStarved    = 0.7
	tuneBackoff    = time.Second
	tuneMaxBackoff = 16 * time.Second
)

// window is what a parallel read did over a stretch of time.
type window struct {
	length  time.Duration
	arrived int64         // bytes the pieces received
	waited  time.Duration // the consumer waited for bytes
}

// rate is the bytes per second that arrived over w; 0 for no window.
func (w window) rate() float64 {
	if w.length <= 0 {
		return 0
	}
	return float64(w.arrived) / w.length.Seconds()
}

// tuner decides how many pieces a parallel read has in flight from the
// windows measured at each level. It keeps no clock: decide is given the
// time.
type tuner struct {
	max     int
	level   int
	prev    int       // the level before the probe under way; 0 for none
	base    window    // the last window at the level probed from
	before  window    // the window before base at that level; zero for none
	next    time.Time // no probe before this
	backoff time.Duration
}

func newTuner(max int) *tuner {
	return &tuner{max: max, level: min(tuneStart, max), backoff: tuneBackoff}
}

// decide takes the window just measured at the current level, which ended
// at now, and returns the level of the next one, and whether the window
// was a probe that paid.
func (t *tuner) decide(w window, now time.Time) (level int, paid bool) {
	if t.prev > 0 {
		if w.rate() < tuneGain*max(t.base.rate(), t.before.rate()) {
			t.level, t.prev = t.prev, 0
			t.next = now.Add(t.backoff)
			t.backoff = min(2*t.backoff, tuneMaxBackoff)
			return t.level, false
		}
		t.prev, t.backoff, paid = 0, tuneBackoff, true
		t.base = window{} // the level changed: no window before w at it
	}
	t.before, t.base = t.base, w
	waited := float64(w.waited) / float64(w.length)
	if t.level < t.max && !now.Before(t.next) && waited >= tuneWaiting {
		t.prev, t.level = t.level, min(2*t.level, t.max)
		if waited >= tuneStarved {
			t.level = t.max
		}
	}
	return t.level, paid
}

// settled says whether the tuner will never change the level again.
func (t *tuner) settled() bool { return t.level == t.max && t.prev == 0 }

// levels is what a parallelReader keeps for its tuner. Its counts and
// buffers are guarded by the reader's mu; the window is watch's alone.
type levels struct {
	tuner *tuner
	debt  int      // buffers to take out of circulation as they come back
	held  [][]byte // buffers out of circulation

	arrived      int64         // bytes the pieces received
	waited       time.Duration // the consumer waited for bytes, its waits ended
	waitingSince time.Time     // the start of the consumer's wait, while waiting
	firstByte    time.Duration // a piece's wait for its first byte, a moving average

	from      time.Time // start of the window being measured; zero before one
	at        window    // the counts at from
	warmUntil time.Time // no window starts before this,
	warmBytes int64     // nor before this many bytes arrived,
	warmLimit time.Time // unless this passed
}

// arrive counts the bytes that piece p received, filled in all; mu held.
func (r *parallelReader) arrive(p *piece, filled int) {
	if p.filled == 0 && filled > 0 {
		d := time.Since(p.started)
		if r.firstByte > 0 {
			d = (r.firstByte + d) / 2
		}
		r.firstByte = d
	}
	r.arrived += int64(max(0, filled-p.filled))
}

// counts returns the bytes arrived and the consumer's waits until now;
// mu held. A wait that began after now (the consumer took mu first) counts
// nothing yet: a window's waits never shrink.
func (r *parallelReader) counts(now time.Time) window {
	w := window{arrived: r.arrived, waited: r.waited}
	if r.waiting != nil {
		w.waited += max(0, now.Sub(r.waitingSince))
	}
	return w
}

// give puts a buffer back in circulation, or out of it while the tuner
// asks for fewer; mu held.
func (r *parallelReader) give(b []byte) {
	if r.debt > 0 {
		r.debt--
		r.held = append(r.held, b)
		return
	}
	r.free <- b // never blocks: no more than Connections circulate
}

// resize puts delta more buffers in circulation, or takes -delta out:
// those idle at once, the others as they come back; mu held.
func (r *parallelReader) resize(delta int) {
	for ; delta > 0 && r.debt > 0; delta-- {
		r.debt--
	}
	for ; delta > 0; delta-- {
		var b []byte
		if n := len(r.held); n > 0 {
			b, r.held = r.held[n-1], r.held[:n-1]
		}
		r.free <- b // never blocks: no more than Connections circulate
	}
	for ; delta < 0; delta++ {
		select {
		case b := <-r.free:
			r.held = append(r.held, b)
		default:
			r.debt++
		}
	}
}

// warm starts a warm-up at now, after which added more buffers came into
// circulation: their pieces connect, and fill the buffers, before a
// window is measured.
func (r *parallelReader) warm(now time.Time, added int) {
	r.mu.Lock()
	d := max(tuneWarm, 2*r.firstByte)
	r.warmBytes = r.arrived + int64(max(0, added))*r.o.opts.ChunkSize
	r.mu.Unlock()
	r.from, r.warmUntil, r.warmLimit = time.Time{}, now.Add(d), now.Add(tuneMaxWarm)
}

// tune ends the window being measured once it is long enough, and sets
// the level the tuner decides on.
func (r *parallelReader) tune(now time.Time) {
	if r.tuner.settled() || now.Before(r.warmUntil) {
		return
	}
	r.mu.Lock()
	at, length := r.counts(now), max(tuneWindow, 4*r.firstByte)
	warming := r.arrived < r.warmBytes && now.Before(r.warmLimit)
	r.mu.Unlock()
	switch {
	case warming:
		return
	case r.from.IsZero():
		r.from, r.at = now, at
		return
	case now.Sub(r.from) < length:
		return
	}
	w := window{length: now.Sub(r.from), arrived: at.arrived - r.at.arrived, waited: at.waited - r.at.waited}
	old := r.tuner.level
	level, paid := r.tuner.decide(w, now)
	if paid && r.o.opts.OnLevel != nil {
		r.o.opts.OnLevel(old)
	}
	if level == old {
		r.from, r.at = now, at
		return
	}
	r.mu.Lock()
	r.resize(level - old)
	r.mu.Unlock()
	r.warm(now, level-old)
}
