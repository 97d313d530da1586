package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// parallelReader reads an object as bounded Range requests ("pieces") of
// ChunkSize bytes, up to Connections at a time, each into its own buffer,
// and hands the bytes out in order. A piece's buffer returns to the pool
// once read, and only then may a piece further on start: at most
// Connections buffers exist, and a slow piece at the head holds back the
// others instead of letting them buffer without bound. How many pieces
// are in flight, up to Connections, is the tuner's to say (tune.go).
type parallelReader struct {
	ctx    context.Context
	cancel context.CancelFunc
	o      *Object

	order chan *piece // pieces in object order, as they are started
	free  chan []byte // buffers for pieces; nil until first used
	wg    sync.WaitGroup
	fatal atomic.Pointer[error]

	cur   *piece // being read by the consumer
	off   int    // consumer position in cur
	spent []byte // the buffer of the piece last handed out whole, until the next call

	mu      sync.Mutex
	ready   sync.Cond
	waiting *piece  // the piece the consumer waits on, or nil
	until   int     // the consumer waits until waiting.filled reaches this
	rate    float64 // bytes per second of the pieces done, a moving average
	ended   chan struct{}
	endOnce sync.Once
	levels  // pieces in flight
}

// wakeBatch is how many bytes a waiting consumer lets arrive before it is
// woken, when it asked for that many: a wake-up per socket read would cost
// more CPU than the copy.
const wakeBatch = 512 << 10

// piece is one Range request and the buffer it fills.
type piece struct {
	start   int64
	buf     []byte
	started time.Time
	attempt attempt
	// guarded by parallelReader.mu:
	filled int
	err    error
	done   bool
	// kept by the straggler watch:
	seen int // filled at its last look
	slow int // looks in a row that found the piece slow
}

// newParallelReader reads bytes [from, to) of o; first, when not nil,
// holds bytes [from, firstEnd).
func newParallelReader(ctx context.Context, cancel context.CancelFunc, o *Object, first io.ReadCloser, from, firstEnd, to int64) *parallelReader {
	n := o.opts.Connections
	r := &parallelReader{
		ctx: ctx, cancel: cancel, o: o,
		order: make(chan *piece, n),
		free:  make(chan []byte, n),
	}
	r.ready.L = &r.mu
	r.ended = make(chan struct{})
	r.tuner = newTuner(n)
	for range r.tuner.level {
		r.free <- nil
	}
	r.wg.Add(2)
	go r.dispatch(first, from, firstEnd, to)
	go r.watch()
	return r
}

// Stragglers: one connection can land on a front end that gives a few
// MiB/s while the others give much more. When the consumer has waited on
// a piece for straggleLooks looks in a row, each finding it gave less
// than a quarter of what the pieces done so far averaged, its response is
// dropped and the piece resumed on a new connection.
const (
	straggleLook  = 500 * time.Millisecond
	straggleLooks = 4
)

// watch tunes the pieces in flight and looks for a straggler at the head
// until the read ends.
func (r *parallelReader) watch() {
	defer r.wg.Done()
	t := time.NewTicker(tuneTick)
	defer t.Stop()
	start := time.Now()
	r.warm(start, 0)
	looked := start
	for {
		var now time.Time
		select {
		case <-t.C:
			// Not the tick's own time, when it was sent: read late, it
			// would end a window before a wait it counts began.
			now = time.Now()
		case <-r.ctx.Done():
			return
		case <-r.ended:
			return
		}
		r.tune(now)
		if now.Sub(looked) >= straggleLook {
			looked = now
			r.look()
		}
	}
}

// look cuts the head piece's response when it has been a straggler for
// straggleLooks looks in a row.
func (r *parallelReader) look() {
	r.mu.Lock()
	p := r.waiting
	cut := false
	if p != nil && !p.done && r.rate > 0 {
		gave := p.filled - p.seen
		p.seen = p.filled
		if float64(gave) < r.rate*straggleLook.Seconds()/4 {
			p.slow++
		} else {
			p.slow = 0
		}
		if p.slow >= straggleLooks {
			p.slow, cut = 0, true
		}
	}
	r.mu.Unlock()
	if cut {
		p.attempt.cut()
	}
}

// dispatch starts one goroutine per piece, in order, each when a buffer is
// free. The first piece is what the first response covers, when there is
// one.
func (r *parallelReader) dispatch(first io.ReadCloser, from, firstEnd, to int64) {
	defer r.wg.Done()
	defer close(r.order)
	chunk := r.o.opts.ChunkSize
	for start := from; start < to; {
		length := min(chunk, to-start)
		body := io.ReadCloser(nil)
		if start == from && first != nil {
			length, body = firstEnd-from, first
		}
		var buf []byte
		select {
		case buf = <-r.free:
		case <-r.ctx.Done():
			if body != nil {
				body.Close()
			}
			return
		}
		if need := max(length, chunk); int64(cap(buf)) < need || int64(cap(buf)) > 2*need {
			// Too small, or the first piece's buffer, which was
			// longer than the chunk size (LimitChunkSize): it
			// is left to the garbage collector.
			buf = getChunk(need)
		}
		p := &piece{start: start, buf: buf[:length], started: time.Now()}
		r.order <- p // never blocks: a piece holds one of Connections buffers
		r.wg.Add(1)
		go r.fetch(p, body)
		start += length
	}
}

func (r *parallelReader) fetch(p *piece, body io.ReadCloser) {
	defer r.wg.Done()
	err := r.o.fill(r.ctx, p.start, p.buf, body, func(filled int) {
		r.mu.Lock()
		r.arrive(p, filled)
		p.filled = filled
		if r.waiting == p && filled >= r.until {
			r.ready.Signal()
		}
		r.mu.Unlock()
	}, &p.attempt)
	if err != nil && r.ctx.Err() == nil {
		// The read fails here, whichever piece the consumer is on:
		// stop the others now rather than after they finish.
		r.fatal.CompareAndSwap(nil, &err)
		r.cancel()
	}
	r.mu.Lock()
	p.done, p.err = true, err
	if err == nil {
		rate := float64(len(p.buf)) / max(time.Since(p.started).Seconds(), 1e-3)
		if r.rate == 0 {
			r.rate = rate
		}
		r.rate = 0.7*r.rate + 0.3*rate
	}
	r.ready.Broadcast()
	r.mu.Unlock()
}

func (r *parallelReader) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	got, err := r.Next(len(b))
	n := copy(b, got)
	r.recycle() // got is copied: its piece's buffer may go now
	return n, err
}

// Next hands out the next bytes in the buffer of their piece; a piece's
// buffer goes back to the pool at the next call after its last byte was
// handed out.
func (r *parallelReader) Next(n int) ([]byte, error) {
	r.recycle()
	if r.cur == nil {
		p, ok := <-r.order
		if !ok {
			r.endOnce.Do(func() { close(r.ended) })
			if err := r.fatal.Load(); err != nil {
				return nil, *err
			}
			if err := r.ctx.Err(); err != nil {
				return nil, err
			}
			return nil, io.EOF
		}
		r.cur, r.off = p, 0
	}
	p := r.cur
	r.mu.Lock()
	if p.filled == r.off && !p.done {
		r.waiting, r.until = p, r.off+min(n, wakeBatch, len(p.buf)-r.off)
		r.waitingSince = time.Now()
		for p.filled < r.until && !p.done {
			r.ready.Wait()
		}
		r.waited += time.Since(r.waitingSince)
		r.waiting = nil
	}
	filled, err := p.filled, p.err
	r.mu.Unlock()
	if filled > r.off {
		b := p.buf[r.off:min(filled, r.off+n)]
		r.off += len(b)
		if r.off == len(p.buf) {
			r.spent, r.cur = p.buf, nil
		}
		return b, nil
	}
	if fatal := r.fatal.Load(); fatal != nil {
		err = *fatal
	}
	if err == nil {
		err = errors.New("piece ended without its bytes") // unreachable: fill returns an error
	}
	return nil, err
}

// recycle gives the buffer of the piece last handed out whole back to the
// pool for a piece further on.
func (r *parallelReader) recycle() {
	if r.spent != nil {
		r.mu.Lock()
		r.give(r.spent)
		r.mu.Unlock()
		r.spent = nil
	}
}

// Close stops every request, waits for them to end and leaves the
// buffers of the pieces for the next reader; not the buffers of cur and
// spent, whose bytes a writer that was given up on may still hold.
func (r *parallelReader) Close() error {
	r.cancel()
	// Unblock a dispatcher waiting for a buffer: the pieces are dropped.
	drained := make(chan [][]byte, 1)
	go func() {
		var bufs [][]byte
		for p := range r.order {
			bufs = append(bufs, p.buf)
		}
		drained <- bufs
	}()
	r.wg.Wait()
	bufs := append(<-drained, r.held...)
	for more := true; more; {
		select {
		case b := <-r.free:
			bufs = append(bufs, b)
		default:
			more = false
		}
	}
	for _, b := range bufs {
		putChunk(b)
	}
	return nil
}

// chunks holds the buffers of closed readers. A read that is resumed (a
// new reader of the object, from where an upload stands) takes them
// rather than allocating as many again while the garbage collector has
// not yet freed the old ones: peak memory stays that of one reader.
var chunks sync.Pool // of *[]byte

// getChunk returns a buffer of n bytes, from chunks when one is big enough.
func getChunk(n int64) []byte {
	if b, ok := chunks.Get().(*[]byte); ok && int64(cap(*b)) >= n {
		return (*b)[:n]
	}
	return make([]byte, n)
}

// putChunk leaves b for getChunk.
func putChunk(b []byte) {
	if cap(b) > 0 {
		b = b[:cap(b)]
		chunks.Put(&b)
	}
}

// body is the body of every response: it ends the response's request
// when closed, fails with ErrStalled when a Read waits longer than a stall
// timeout for a byte, and, for a Range answer, holds the body to exactly
// the length of its Content-Range. The stall clock runs only while a Read
// waits: time the reader spends elsewhere (the upload falling behind) is
// not the source's stall. The timer cancels the request, which unblocks
// the Read.
type body struct {
	rc      io.ReadCloser
	cancel  context.CancelFunc
	timeout time.Duration
	timer   *time.Timer // nil without a stall timeout
	stalled atomic.Bool
	// left is how many bytes the body still owes, -1 when its length
	// is the transport's business (not a Range answer).
	left  int64
	given bool    // a Read handed bytes on
	extra [1]byte // the read that checks the body ends with its range
}

func newBody(rc io.ReadCloser, timeout time.Duration, cancel context.CancelFunc) *body {
	b := &body{rc: rc, cancel: cancel, timeout: timeout, left: -1}
	if timeout > 0 {
		b.timer = time.AfterFunc(timeout, func() {
			b.stalled.Store(true)
			cancel()
		})
		b.timer.Stop()
	}
	return b
}

// errUntrusted marks a Range answer found to be longer than its
// Content-Range after some of its bytes were handed on: those cannot be
// taken back, so the read fails rather than resumes.
var errUntrusted = errors.New("the bytes already read from it cannot be trusted")

func (b *body) Read(p []byte) (int, error) {
	if b.left < 0 {
		return b.read(p)
	}
	if b.left == 0 {
		return 0, io.EOF // checked when left reached 0
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.read(p)
	b.left -= int64(n)
	switch {
	case b.left > 0 && err == io.EOF:
		err = io.ErrUnexpectedEOF
	case b.left == 0:
		// The range is complete and the body must end here: the bytes
		// of this read are withheld until it does.
		if err == nil {
			err = b.checkEnd()
		}
		if err != io.EOF {
			b.left += int64(n)
			return 0, err
		}
	}
	if n > 0 {
		b.given = true
	}
	return n, err
}

// checkEnd reads one more byte, which must not exist: io.EOF says the body
// ends with its range.
func (b *body) checkEnd() error {
	for range 100 { // a Read may give 0 bytes and no error, but not for ever
		n, err := b.read(b.extra[:])
		switch {
		case n > 0 && b.given:
			return fmt.Errorf("%w: the body goes on past its Content-Range: %w", ErrBadRange, errUntrusted)
		case n > 0:
			return fmt.Errorf("%w: the body goes on past its Content-Range", ErrBadRange)
		case err != nil:
			return err
		}
	}
	return io.ErrNoProgress
}

func (b *body) read(p []byte) (int, error) {
	if b.timer == nil {
		return b.rc.Read(p)
	}
	b.timer.Reset(b.timeout)
	n, err := b.rc.Read(p)
	b.timer.Stop()
	if b.stalled.Load() {
		return n, ErrStalled
	}
	return n, err
}

func (b *body) Close() error {
	if b.timer != nil {
		b.timer.Stop()
	}
	err := b.rc.Close()
	b.cancel()
	return err
}

// ReaderAt returns random access to the object's bytes through bounded
// Range requests, resumed after failures as Options says. The object must
// be Ranged.
func (o *Object) ReaderAt(ctx context.Context) io.ReaderAt {
	return readerAt{ctx, o}
}

type readerAt struct {
	ctx context.Context
	o   *Object
}

func (r readerAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= r.o.size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), r.o.size-off)
	if err := r.o.fill(r.ctx, off, p[:n], nil, nil, nil); err != nil {
		return 0, err
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}
