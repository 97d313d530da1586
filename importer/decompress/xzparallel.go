package decompress

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"runtime"
	"sync"

	"github.com/ulikunitz/xz/lzma"
)

// XZParallelMemory bounds the memory that the blocks of an .xz file being
// decoded on worker goroutines take at once: the compressed data, the
// dictionary and the output of each. A block is decoded on a worker only
// when two such blocks fit, and the decoder hands out no more blocks than
// fit and than there are workers, plus one. Those of xz -6 -T0 (24 MiB
// blocks, an 8 MiB dictionary) take some 40 MiB each on a disk image that
// compresses to a third; blocks of 48 MiB or more (xz -7 -T0 and up) are
// decoded one after the other, as are blocks whose headers do not say
// their sizes.
const XZParallelMemory = 96 << 20

// Limits of the parallel decoding of xz blocks.
const (
	// maxXZParallelBlock is the largest compressed or uncompressed size
	// of a block decoded on a worker.
	maxXZParallelBlock = 64 << 20

	// xzPieceSize is the size of the buffers a worker decodes into,
	// and the reader reads from as soon as each is full.
	xzPieceSize = 256 << 10
	// xzMaxPieces is the number of pieces of the largest block, and
	// one more.
	xzMaxPieces = maxXZParallelBlock/xzPieceSize + 1
)

// xzOptions says how an xz decoder may decode blocks on workers.
type xzOptions struct {
	workers int   // at most; 0 for none
	memory  int64 // XZParallelMemory
}

// defaultXZOptions returns the options of NewReader: a worker for each
// CPU the process may use, or none on one CPU, where a worker would only
// take more memory (BenchmarkXZParallel).
func defaultXZOptions() xzOptions {
	o := xzOptions{workers: runtime.GOMAXPROCS(0), memory: XZParallelMemory}
	if o.workers < 2 {
		o.workers = 0
	}
	return o
}

// xzBlockError is the error of a block decoded on a worker: the block is
// corrupt, whatever became of the input since it was read.
type xzBlockError struct{ err error }

func (e *xzBlockError) Error() string { return e.err.Error() }
func (e *xzBlockError) Unwrap() error { return e.err }

// errStopped ends the work of a worker whose pool stops.
var errStopped = errors.New("decompress: xz workers stopped")

// workerDictCap returns the dictionary a worker decodes the block b
// with. It is smaller than the block header's when the block is, which
// makes no difference: a match can reach no further back than the start
// of the block.
func workerDictCap(b *xzBlockInfo) int {
	return int(max(min(b.dict, uint64(b.size)), lzma.MinDictCap))
}

// xzPool decodes blocks of an .xz file on worker goroutines for an
// xzDecoder, whose goroutine reads the input, hands out the blocks and
// reads their output, in order, a piece at a time as the workers decode
// it. Nothing but the blocks' compressed data and their output goes
// between the goroutines: the reader checks the container and the index
// as it reads them, the workers each block's LZMA2 data, sizes, padding
// and check.
//
// The methods of a nil *xzPool report an idle pool.
type xzPool struct {
	xzOptions
	jobs    chan *xzJob   // the blocks handed out, in order
	done    chan struct{} // closed by stop
	stopped bool
	wg      sync.WaitGroup
	started int // workers started

	queue  []*xzJob // handed out and not yet read to their end, in order
	cost   int64    // of the blocks in queue
	handed int      // blocks handed out
	peak   int64    // the largest cost
	most   int      // the longest queue
	spare  []*xzJob // to reuse
	piece  []byte   // the rest of the piece being read
	whole  []byte   // all of that piece
	pieces pieceList
}

// xzJob is a block handed to the workers. The reader hands it out once it
// has read its header, and then reads its compressed data, padding and
// check into data a step at a time; the worker decodes what it has, and
// waits for more.
type xzJob struct {
	info xzBlockInfo
	cost int64
	out  chan xzPiece // xzMaxPieces+1: a worker never waits for the reader
	need int          // bytes of compressed data, padding and check

	mu      sync.Mutex
	more    sync.Cond // signalled when have or ended change
	data    []byte    // data[:have] read; the reader grows it
	have    int
	ended   bool // no more: the input ended or failed, or the pool stops
	stopped bool // the pool stops
}

// xzPiece is a piece of a block's output, or its end: b nil, and err nil
// when the block checked out.
type xzPiece struct {
	b   []byte
	err error
}

func newXZPool(o xzOptions) *xzPool {
	return &xzPool{
		xzOptions: o,
		jobs:      make(chan *xzJob, o.workers+1),
		done:      make(chan struct{}),
	}
}

// busy says whether blocks handed out have output left to read.
func (p *xzPool) busy() bool { return p != nil && len(p.queue) > 0 }

// ready says whether read would not wait.
func (p *xzPool) ready() bool { return len(p.piece) > 0 || len(p.queue[0].out) > 0 }

// full says whether the pool takes no block before one is read.
func (p *xzPool) full() bool { return p != nil && len(p.queue) > p.workers }

// admit says whether the pool takes a block that costs cost now.
func (p *xzPool) admit(cost int64) bool {
	return len(p.queue) == 0 || len(p.queue) <= p.workers && p.cost+cost <= p.memory
}

// newJob returns a job to fill and submit, or to recycle.
func (p *xzPool) newJob() *xzJob {
	if n := len(p.spare); n > 0 {
		j := p.spare[n-1]
		p.spare = p.spare[:n-1]
		return j
	}
	j := &xzJob{out: make(chan xzPiece, xzMaxPieces+1)}
	j.more.L = &j.mu
	return j
}

func (p *xzPool) recycle(j *xzJob) {
	p.spare = append(p.spare, j)
}

// submit hands a block to the workers, starting one if all are busy.
// The caller then fills it.
func (p *xzPool) submit(j *xzJob) {
	p.queue = append(p.queue, j)
	p.cost += j.cost
	p.handed++
	p.peak, p.most = max(p.peak, p.cost), max(p.most, len(p.queue))
	if p.started < p.workers && p.started < len(p.queue) {
		p.started++
		p.wg.Add(1)
		go p.work()
	}
	p.jobs <- j // never waits: at most workers+1 jobs are in the queue
}

// read reads output of the first block in the queue into dst. At the end
// of the block it takes it from the queue and returns 0 and its error:
// nil when it checked out.
func (p *xzPool) read(dst []byte) (int, error) {
	if len(p.piece) == 0 {
		var pc xzPiece
		select {
		case pc = <-p.queue[0].out:
		case <-p.done:
			return 0, errClosed
		}
		if pc.b == nil {
			p.finish()
			return 0, pc.err
		}
		p.piece, p.whole = pc.b, pc.b
	}
	n := copy(dst, p.piece)
	p.piece = p.piece[n:]
	if len(p.piece) == 0 {
		p.pieces.put(p.whole[:cap(p.whole)])
		p.whole = nil
	}
	return n, nil
}

// finish takes the first block, read to its end, from the queue.
func (p *xzPool) finish() {
	j := p.queue[0]
	p.queue = append(p.queue[:0], p.queue[1:]...)
	p.cost -= j.cost
	p.recycle(j)
}

// stop stops the workers and waits for them. A worker stops between two
// pieces of a block.
func (p *xzPool) stop() {
	if p == nil || p.stopped {
		return
	}
	p.stopped = true
	close(p.done)
	for _, j := range p.queue {
		j.end(true)
	}
	p.wg.Wait()
	p.queue, p.spare, p.piece, p.whole = nil, nil, nil, nil
	p.pieces.free = nil
}

// isStopped says whether stop was called.
func (p *xzPool) isStopped() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// send sends pc to the reader of j, unless the pool stops.
func (p *xzPool) send(j *xzJob, pc xzPiece) bool {
	select {
	case j.out <- pc:
		return true
	case <-p.done:
		return false
	}
}

// work decodes the blocks handed out until the pool stops.
func (p *xzPool) work() {
	defer p.wg.Done()
	w := &xzWorker{pool: p}
	for {
		var j *xzJob
		select {
		case j = <-p.jobs:
		case <-p.done:
			return
		}
		err := w.decode(j)
		if p.isStopped() {
			return
		}
		if err != nil {
			err = &xzBlockError{err}
		}
		if !p.send(j, xzPiece{err: err}) {
			return
		}
	}
}

// pieceList keeps the output buffers for reuse.
type pieceList struct {
	mu   sync.Mutex
	free [][]byte
	made int
}

func (l *pieceList) get() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := len(l.free); n > 0 {
		b := l.free[n-1]
		l.free = l.free[:n-1]
		return b
	}
	l.made++
	return make([]byte, xzPieceSize)
}

func (l *pieceList) put(b []byte) {
	l.mu.Lock()
	l.free = append(l.free, b)
	l.mu.Unlock()
}

// Steps in which the reader reads the compressed data of a block.
const (
	// xzFillStep is how much it reads at once, at most.
	xzFillStep = 256 << 10
	// xzGrowStep is how much of the data it reads into a buffer too
	// small for the whole before it allocates one for the whole, so that
	// a block header that lies about its compressed size costs no more
	// memory than the input holds, and xzGrowStep.
	xzGrowStep = 1 << 20
)

// reset readies the job for a block of need bytes of compressed data,
// padding and check.
func (j *xzJob) reset(b *xzBlockInfo, cost int64, need int) {
	j.info, j.cost, j.need = *b, cost, need
	j.data = j.data[:min(cap(j.data), need)]
	j.have, j.ended, j.stopped = 0, false, false
}

// filled says whether the job has all its data.
func (j *xzJob) filled() bool { return j.have == j.need }

// fill reads the next step of the job's data from r.
func (j *xzJob) fill(r io.Reader) error {
	if j.have == len(j.data) {
		j.grow()
	}
	k, err := io.ReadFull(r, j.data[j.have:min(len(j.data), j.have+xzFillStep)])
	j.mu.Lock()
	j.have += k
	j.more.Broadcast()
	j.mu.Unlock()
	return err
}

// grow replaces the full buffer of the job by a larger one.
func (j *xzJob) grow() {
	n := j.need
	if j.have < xzGrowStep {
		n = min(n, xzGrowStep)
	}
	const round = 64 << 10
	b := make([]byte, n, (n+n/16+round-1)&^(round-1))
	copy(b, j.data[:j.have])
	j.mu.Lock()
	j.data = b
	j.mu.Unlock()
}

// end tells the worker that no more data comes, because the pool stops if
// stop is true.
func (j *xzJob) end(stop bool) {
	j.mu.Lock()
	j.ended, j.stopped = true, j.stopped || stop
	j.more.Broadcast()
	j.mu.Unlock()
}

// errInputEnded ends a block whose data the reader could not read whole:
// the reader has the error of the input.
var errInputEnded = errors.New("the input ends in the block")

// wait waits until the job has n bytes of data, and returns the data it
// has.
func (j *xzJob) wait(n int) ([]byte, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for j.have < n && !j.ended {
		j.more.Wait()
	}
	switch {
	case j.stopped:
		return nil, errStopped
	case j.have < n:
		return nil, errInputEnded
	}
	return j.data[:j.have], nil
}

// xzWorker decodes blocks, each from its data as the reader reads it, with
// one LZMA2 decoder that goes from block to block: between two blocks it feeds the decoder a
// chunk of one byte that resets its dictionary (xzResetChunk), and the
// decoder must read that chunk, and nothing else, after a block's last
// chunk: a decoder that had more output, or that read the chunks out of
// step, fails the block. Each block must start with a dictionary reset
// (lzma2Data refuses it otherwise), as a new decoder would require, after
// which the decoder stands exactly where a new one would.
type xzWorker struct {
	pool    *xzPool
	lz      *lzma.Reader2 // nil before the first block and after a failed one
	dictCap int           // of lz
	feed    lzma2Feed
	checks  [xzCheckSHA256 + 1]hash.Hash
	scratch [sha256.Size]byte
}

// xzResetChunk is an LZMA2 chunk that resets the dictionary and the
// state and decodes to the single byte 0: an LZMA chunk (unpacked size 1,
// packed size 6, properties lc=0 lp=0 pb=0) of a literal 0, which range
// codes to zeros. (An uncompressed chunk would do, but the LZMA2 decoder
// allocates 32 KiB to copy each.)
var xzResetChunk = [12]byte{0xe0, 0x00, 0x00, 0x00, 0x05, 0x00, 0, 0, 0, 0, 0, 0}

// decode decodes the block j, sending its output to the reader a piece at
// a time.
func (w *xzWorker) decode(j *xzJob) error {
	b := &j.info
	if err := w.start(j); err != nil {
		return err
	}
	check := w.check(b.checkType)
	for left := b.size; left > 0; {
		piece := w.pool.pieces.get()
		k, err := io.ReadFull(w.lz, piece[:min(int64(len(piece)), left)])
		if check != nil {
			check.Write(piece[:k])
		}
		left -= int64(k)
		if k == 0 {
			w.pool.pieces.put(piece)
		} else if !w.pool.send(j, xzPiece{b: piece[:k]}) {
			return errStopped
		}
		if err != nil {
			w.lz = nil
			return dataError(err, b, b.size-left)
		}
	}
	if err := w.end(b); err != nil {
		w.lz = nil
		return err
	}
	data, err := j.wait(j.need)
	if err != nil {
		return err
	}
	return checkBlockTail(data[b.compressed:], b.padLen(b.compressed), check, w.scratch[:0])
}

// start readies the decoder for the block of j.
func (w *xzWorker) start(j *xzJob) error {
	b := &j.info
	dictCap := workerDictCap(b)
	fits := w.dictCap == dictCap || b.dict >= uint64(b.size) && int64(w.dictCap) >= b.size
	if w.lz == nil || !fits {
		w.lz = nil
		w.feed.resetting, w.feed.reset = true, xzResetChunk[:]
		lz, err := lzma.Reader2Config{DictCap: dictCap}.NewReader2(&w.feed)
		if err != nil {
			return err
		}
		if err := w.reset(lz); err != nil {
			return fmt.Errorf("starting the LZMA2 decoder: %w", err)
		}
		w.lz, w.dictCap = lz, dictCap
	}
	w.feed.block = blockBytes{job: j, end: int(b.compressed)}
	w.feed.data = lzma2Data{block: &w.feed.block, whole: true}
	w.feed.resetting = false
	return nil
}

// end checks that the decoder, having decoded as many bytes as the block
// header b says, is at the end of the LZMA2 data: at the end marker, the
// last of the compressed bytes the header says, and at the end of a
// chunk, with no output left.
func (w *xzWorker) end(b *xzBlockInfo) error {
	rest, err := w.feed.block.rest()
	if err != nil {
		return err
	}
	d := &w.feed.data
	if d.state != chunkControl || d.done || len(rest) == 0 || rest[0] != 0 {
		return fmt.Errorf("block's LZMA2 data goes on after the %d bytes its header says it decodes to", b.size)
	}
	if len(rest) > 1 {
		return fmt.Errorf("block's LZMA2 data ends before the %d compressed bytes its header says", b.compressed)
	}
	w.feed.resetting, w.feed.reset = true, xzResetChunk[:]
	if err := w.reset(w.lz); err != nil {
		return fmt.Errorf("block decodes to more than the %d bytes its header says: %w", b.size, err)
	}
	return nil
}

// reset reads the reset chunk, being fed to lz, through lz.
func (w *xzWorker) reset(lz *lzma.Reader2) error {
	var one [1]byte
	n, err := lz.Read(one[:])
	switch {
	case err != nil:
		return err
	case n != 1 || one[0] != 0 || len(w.feed.reset) != 0:
		return errors.New("the decoder is not at the end of a chunk")
	}
	return nil
}

// check returns the worker's hash for the check type t, reset, or nil
// for none.
func (w *xzWorker) check(t byte) hash.Hash {
	if t == xzCheckNone {
		return nil
	}
	if w.checks[t] == nil {
		w.checks[t] = newCheck(t)
	}
	h := w.checks[t]
	h.Reset()
	return h
}

// dataError returns the error of a block whose decoder failed with err
// after got bytes.
func dataError(err error, b *xzBlockInfo, got int64) error {
	switch {
	case errors.Is(err, errLZMA2End), err == io.EOF:
		return fmt.Errorf("block decodes to %d bytes, its header says %d", got, b.size)
	case errors.Is(err, errPastBlockData):
		return fmt.Errorf("block has more than the %d compressed bytes its header says", b.compressed)
	}
	return err
}

// lzma2Feed is the input of a worker's LZMA2 decoder: the LZMA2 data of a
// block, in whole mode, or the reset chunk.
type lzma2Feed struct {
	resetting bool
	reset     []byte // the rest of the reset chunk
	data      lzma2Data
	block     blockBytes
}

var errResetOverrun = errors.New("the decoder reads past the reset chunk")

func (f *lzma2Feed) Read(p []byte) (int, error) {
	if !f.resetting {
		return f.data.Read(p)
	}
	if len(f.reset) == 0 {
		return 0, errResetOverrun
	}
	n := copy(p, f.reset)
	f.reset = f.reset[n:]
	return n, nil
}

// blockBytes reads the compressed data of a block, as the reader reads
// it, failing with errPastBlockData at its end.
type blockBytes struct {
	job *xzJob
	b   []byte // the data read when last asked, up to end
	off int
	end int // the size of the compressed data
}

var errPastBlockData = errors.New("past the block's compressed data")

func (r *blockBytes) Read(p []byte) (int, error) {
	if r.off == len(r.b) {
		if err := r.wait(r.off + 1); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.b[r.off:])
	r.off += n
	return n, nil
}

func (r *blockBytes) ReadByte() (byte, error) {
	if r.off == len(r.b) {
		return r.readByteSlow()
	}
	c := r.b[r.off]
	r.off++
	return c, nil
}

// readByteSlow is ReadByte once the bytes read so far are used up.
func (r *blockBytes) readByteSlow() (byte, error) {
	if err := r.wait(r.off + 1); err != nil {
		return 0, err
	}
	c := r.b[r.off]
	r.off++
	return c, nil
}

// wait waits for the first n bytes of the compressed data.
func (r *blockBytes) wait(n int) error {
	if n > r.end {
		return errPastBlockData
	}
	b, err := r.job.wait(n)
	if err != nil {
		return err
	}
	r.b = b[:min(len(b), r.end)]
	return nil
}

// rest returns the compressed data not read yet, once it is all there.
func (r *blockBytes) rest() ([]byte, error) {
	if err := r.wait(r.end); err != nil {
		return nil, err
	}
	return r.b[r.off:], nil
}

// XZParallel says whether NewReader decodes the first block of the .xz
// file that starts with head on worker goroutines, given more than one
// CPU: whether its header gives the block's sizes, as xz -T0 and xz
// --block-size write them, and two such blocks fit in XZParallelMemory.
// (The blocks that follow are most often of the same kind.) head must
// hold the stream header and the first block header; 1036 bytes always
// do. A file without blocks is not decoded in parallel. An error matches
// ErrCorrupt or ErrUnsupported, for a head that NewReader would refuse, or
// ErrCorrupt and io.ErrUnexpectedEOF for one too short.
func XZParallel(head []byte) (bool, error) {
	ok, err := xzParallel(head)
	switch {
	case err == nil:
		return ok, nil
	case errors.Is(err, ErrUnsupported):
		return false, fmt.Errorf("xz: %w", err)
	}
	return false, fmt.Errorf("%w: xz: %w", ErrCorrupt, err)
}

func xzParallel(head []byte) (bool, error) {
	x := &xzDecoder{opts: xzOptions{workers: 2, memory: XZParallelMemory}}
	if len(head) <= xzHeaderLen {
		return false, io.ErrUnexpectedEOF
	}
	if err := x.streamHeader(head[:xzHeaderLen]); err != nil || head[xzHeaderLen] == 0 {
		return false, err
	}
	h := head[xzHeaderLen:]
	if n := (int(h[0]) + 1) * 4; len(h) >= n {
		h = h[:n]
	} else {
		return false, io.ErrUnexpectedEOF
	}
	b, err := parseBlockHeader(h)
	if err != nil {
		return false, err
	}
	_, ok := x.parallelCost(&b)
	return ok, nil
}
