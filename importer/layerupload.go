package importer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/diskimporter/diskimporter/importer/upload"
	"github.com/diskimporter/diskimporter/layer"
)

// keptCheckpoints is how many of the layer's last checkpoints are kept:
// the hash runs ahead of what the registry has stored, by the bytes in
// flight (buffers, socket, the registry's own).
const keptCheckpoints = 4

// maxMismatches is how many times in a row the registry may refuse the
// offset it said it stood at before the upload starts over: right after a
// dropped connection it may still be storing what it received (Quay
// always reports one byte more than it holds).
const maxMismatches = 2

// layerUpload is the upload of the disk layer: one streamed PATCH with its
// length, and after a failure, as the registry says where the upload
// stands, the rest from there. The layer's hash goes on from the newest
// checkpoint at or before that point, the disk read again from there.
type layerUpload struct {
	s      *settings
	log    *slog.Logger
	prog   *tracker
	l      *layer.Layer
	d      *disk
	sums   *sourceSums
	client *http.Client
	base   *url.URL
	size   int64 // of the layer blob
	cps    *checkpoints
	// file, when set, carries the upload to a later process; want is
	// what its record must say of the source and the layer.
	file *checkpointFile
	want checkpointRecord

	sess      *upload.Session
	confirmed int64        // what the registry last said it stored
	sent      atomic.Int64 // the furthest byte handed to the connection in the session
	resumes   int
	from      int64 // where the last resume went on from
}

// checkpoints keeps the layer's last checkpoints; the layer's producer
// adds to it while an uploader reads it.
type checkpoints struct {
	mu   sync.Mutex
	kept []layer.Checkpoint
	// file, when set, is written with the checkpoints kept.
	file *checkpointFile
	log  *slog.Logger
}

func (c *checkpoints) add(cp layer.Checkpoint) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.kept = append(c.kept, cp)
	if len(c.kept) > keptCheckpoints {
		c.kept = c.kept[1:]
	}
	if c.file != nil {
		if err := c.file.add(append([]layer.Checkpoint(nil), c.kept...)); err != nil {
			c.log.Warn("writing the checkpoint file", "path", c.file.path, "error", err)
		}
	}
}

// seed keeps the checkpoints of an earlier process.
func (c *checkpoints) seed(kept []layer.Checkpoint) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.kept = append(c.kept, kept...)
}

// snapshot is a copy of the checkpoints kept.
func (c *checkpoints) snapshot() []layer.Checkpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]layer.Checkpoint(nil), c.kept...)
}

// at is the newest checkpoint at or before offset, or the start.
func (c *checkpoints) at(offset int64) layer.Checkpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	best := layer.Checkpoint{}
	for _, cp := range c.kept {
		if cp.Offset <= offset && cp.Offset > best.Offset {
			best = cp
		}
	}
	return best
}

// newLayerUpload prepares the upload of l, the layer of d, to the
// destination's repository through rt.
func newLayerUpload(ctx context.Context, s *settings, log *slog.Logger, prog *tracker, rt http.RoundTripper, d *disk, l *layer.Layer, size int64) (*layerUpload, error) {
	repo := s.ref.Context()
	auth, err := s.Keychain.Resolve(repo)
	if err != nil {
		return nil, fmt.Errorf("resolving the credentials for %s: %w", repo, err)
	}
	tr, err := transport.NewWithContext(ctx, repo.Registry, auth, rt, []string{repo.Scope(transport.PushScope)})
	if err != nil {
		return nil, err
	}
	scheme := "https"
	if s.PlainHTTP {
		scheme = "http"
	}
	base := &url.URL{Scheme: scheme, Host: repo.RegistryStr(), Path: "/v2/" + repo.RepositoryStr() + "/"}
	return &layerUpload{s: s, log: log, prog: prog, l: l, d: d, client: &http.Client{Transport: tr}, base: base, size: size}, nil
}

// run uploads the layer and commits it under its digest.
func (u *layerUpload) run(ctx context.Context) error {
	from, cp, err := u.begin(ctx)
	if err != nil {
		return err
	}
	mismatches := 0 // in a row: a registry may still be storing what it got
	for failures := 0; ; failures++ {
		err := u.send(ctx, cp, from)
		if err == nil {
			return u.commit(ctx)
		}
		if ctx.Err() != nil || failures >= u.s.Retries || !u.retryable(err) {
			return err
		}
		if u.s.OnRetry != nil {
			u.s.OnRetry(Retry{Stage: RetryUpload, Offset: from, Err: err})
		}
		u.resumes++
		switch {
		case errors.Is(err, upload.ErrRedirected):
			// The same bytes, to the new location.
			u.log.Warn("the registry redirected the upload; sending again", "from", from)
		case errors.Is(err, upload.ErrOffsetInconsistent),
			errors.Is(err, upload.ErrOffsetMismatch) && (from == 0 || mismatches >= maxMismatches):
			if from, cp, err = u.fresh(ctx, err); err != nil {
				return err
			}
		default:
			if errors.Is(err, upload.ErrOffsetMismatch) {
				mismatches++
			} else {
				mismatches = 0
			}
			if from, cp, err = u.resync(ctx, err); err != nil {
				return err
			}
		}
	}
}

// retryable tells whether a failed send may go on: a transient failure, a
// redirect, or a registry whose offsets do not add up (a fresh upload).
func (u *layerUpload) retryable(err error) bool {
	return upload.Transient(err) || errors.Is(err, upload.ErrRedirected) ||
		errors.Is(err, upload.ErrOffsetMismatch) || errors.Is(err, upload.ErrOffsetInconsistent)
}

// attachFile makes the upload write its checkpoints to the file at path,
// and go on with the upload it names when it is of want. A source that
// cannot be told apart from another version gets no file.
func (u *layerUpload) attachFile(path string, want checkpointRecord) {
	if want.Validator == "" {
		u.log.Warn("writing no checkpoint file: the source has no validator (ETag, Last-Modified, digest) to tell a later run it reads the same bytes", "path", path)
		return
	}
	u.file, u.want = &checkpointFile{path: path}, want
	u.cps.file, u.cps.log = u.file, u.log
}

// begin goes on with the upload the checkpoint file names, when there is
// one and it fits, or starts a new one. It returns where to send from and
// the checkpoint to hash from.
func (u *layerUpload) begin(ctx context.Context) (int64, layer.Checkpoint, error) {
	if u.file == nil {
		return 0, layer.Checkpoint{}, u.start(ctx)
	}
	rec, err := u.file.load(u.want, u.s.ref.RegistryStr())
	if err == nil && rec != nil {
		var from int64
		var cp layer.Checkpoint
		if from, cp, err = u.attach(ctx, rec); err == nil {
			return from, cp, nil
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return 0, layer.Checkpoint{}, ctx.Err()
		}
		u.log.Warn("not going on with the upload of the checkpoint file; starting a fresh one", "path", u.file.path, "reason", err)
	}
	return 0, layer.Checkpoint{}, u.start(ctx)
}

// attach goes on with the upload rec names, where the registry stands.
func (u *layerUpload) attach(ctx context.Context, rec *checkpointRecord) (int64, layer.Checkpoint, error) {
	sess, err := upload.Attach(u.client, rec.Location)
	if err != nil {
		return 0, layer.Checkpoint{}, err
	}
	stored, err := sess.Stored(ctx)
	if err == nil {
		err = upload.Consistent(stored, 0, u.size)
	}
	if err != nil {
		return 0, layer.Checkpoint{}, err
	}
	u.sess, u.confirmed, u.from, u.resumes = sess, stored, stored, 1
	u.sent.Store(stored)
	u.cps.seed(rec.Checkpoints)
	cp := layer.Checkpoint{}
	if u.d.resumable {
		cp = u.cps.at(stored)
	}
	u.log.Info("going on with the upload of an earlier run", "path", u.file.path, "stored", stored, "size", u.size, "rehashed_from", cp.Offset)
	u.record()
	return stored, cp, nil
}

// start opens a new upload session.
func (u *layerUpload) start(ctx context.Context) error {
	sess, err := upload.Start(ctx, u.client, u.base)
	if err != nil {
		return err
	}
	u.sess, u.confirmed = sess, 0
	u.sent.Store(0)
	u.record()
	return nil
}

// record writes the checkpoint file for the session's location, or stops
// writing it, saying why, when the location holds what may be a
// credential.
func (u *layerUpload) record() {
	if u.file == nil || u.file.off {
		return
	}
	if err := upload.Checkpointable(u.sess.Location(), u.s.ref.RegistryStr()); err != nil {
		u.log.Warn("writing no checkpoint file", "path", u.file.path, "reason", err)
		u.file.off = true
		return
	}
	rec := u.want
	rec.Location = u.sess.Location()
	rec.Checkpoints = u.cps.snapshot()
	if err := u.file.set(rec); err != nil {
		u.log.Warn("writing the checkpoint file", "path", u.file.path, "error", err)
	}
}

// send uploads the layer from byte from on, its hash going on from cp.
func (u *layerUpload) send(ctx context.Context, cp layer.Checkpoint, from int64) error {
	var rc io.ReadCloser
	var err error
	if from == 0 && u.resumes == 0 {
		rc, err = u.l.Compressed() // the first read: the source already open
	} else {
		rc, err = u.l.OpenFrom(cp, from, func(off int64) (io.ReadCloser, error) { return u.reopen(ctx, off) })
	}
	if err != nil {
		return err
	}
	defer rc.Close()
	if _, err := u.sess.Send(ctx, &sentCounter{r: rc, at: from, sent: &u.sent}, from, u.size-from); err != nil {
		return err
	}
	if _, err := u.l.Digest(); err != nil {
		// The transport stopped at the length: read the end, where the
		// layer checks its source and records its digest.
		if _, err := io.Copy(io.Discard, rc); err != nil {
			return err
		}
	}
	return nil
}

// reopen reads the disk again from disk byte off, counted for progress
// from there: the progress does not go back to zero on a resume.
func (u *layerUpload) reopen(ctx context.Context, off int64) (io.ReadCloser, error) {
	if off > 0 {
		if !u.d.resumable {
			return nil, fmt.Errorf("the disk cannot be read again from byte %d", off) // resync never asks
		}
		u.sums.resumed()
	}
	u.log.Warn("reading the disk again for an upload retry", "from", off)
	// The layer reads the first stream no more: close it, and collect
	// what the failed attempt left (its stream's buffers, the layer
	// reader's) before the new stream allocates, so that a resume does
	// not raise the import's peak memory. Once per resume: a few ms.
	u.d.dropSource()
	runtime.GC()
	rc, err := u.d.reopen(ctx, off)
	if err != nil {
		return nil, err
	}
	u.prog.bytes.Store(off)
	return readCloser{countingReader{rc, &u.prog.bytes}, rc}, nil
}

// resync asks the registry where the upload stands after failure and says
// where to go on from: there, when its answer is consistent with what was
// confirmed and sent, or from the start of a fresh upload. A disk that
// cannot be read again from the middle is read from its start, and only
// what the registry lacks is sent.
func (u *layerUpload) resync(ctx context.Context, failure error) (int64, layer.Checkpoint, error) {
	stored, err := u.sess.Stored(ctx)
	if err == nil {
		err = upload.Consistent(stored, u.confirmed, u.sent.Load())
	}
	if err != nil {
		if ctx.Err() != nil {
			return 0, layer.Checkpoint{}, ctx.Err()
		}
		return u.fresh(ctx, fmt.Errorf("%w (after: %w)", err, failure))
	}
	u.confirmed, u.from = stored, stored
	cp := layer.Checkpoint{}
	if u.d.resumable {
		cp = u.cps.at(stored)
	}
	u.log.Warn("the upload failed; going on where the registry stands", "failure", failure,
		"stored", stored, "size", u.size, "rehashed_from", cp.Offset)
	u.record()
	return stored, cp, nil
}

// fresh gives up the upload session, which cannot go on (why), and starts
// another, from the first byte.
func (u *layerUpload) fresh(ctx context.Context, why error) (int64, layer.Checkpoint, error) {
	u.log.Warn("the upload cannot go on where it stopped; starting a fresh upload", "reason", why)
	u.sess.Cancel(ctx)
	u.from = 0
	return 0, layer.Checkpoint{}, u.start(ctx)
}

// commit finishes the upload under the layer's digest, which the registry
// checks.
func (u *layerUpload) commit(ctx context.Context) error {
	digest, err := u.l.Digest()
	if err != nil {
		return fmt.Errorf("the layer ended without its digest: %w", err)
	}
	for failures := 0; ; failures++ {
		err := u.sess.Commit(ctx, digest.String())
		if err == nil {
			break
		}
		if ctx.Err() != nil || failures >= u.s.Retries || !upload.Transient(err) {
			return err
		}
		// The PUT carries no body: asking again is cheap.
		u.log.Warn("committing the upload failed; asking again", "error", err)
		if err := sleep(ctx, time.Second<<failures); err != nil {
			return err
		}
	}
	if u.file != nil {
		if err := u.file.remove(); err != nil {
			u.log.Warn("removing the checkpoint file", "path", u.file.path, "error", err)
		}
	}
	return nil
}

// sentCounter raises sent to the furthest layer byte handed to the
// connection in the session, over all its PATCHes: a PATCH that goes on
// from the registry's offset starts behind what an earlier one handed
// over, which the registry may still be storing.
type sentCounter struct {
	r    io.Reader
	at   int64 // the layer offset of the next byte read
	sent *atomic.Int64
}

func (c *sentCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.at += int64(n)
	raise(c.sent, c.at)
	return n, err
}

// WriteTo hands on what r writes when it can (the layer writing its own
// buffers), each byte counted as sent before it is handed on.
func (c *sentCounter) WriteTo(w io.Writer) (int64, error) {
	wt, ok := c.r.(io.WriterTo)
	if !ok {
		return io.Copy(w, struct{ io.Reader }{c})
	}
	return wt.WriteTo(sentWriter{w, c})
}

// sentWriter is the writer a sentCounter's reader writes to.
type sentWriter struct {
	w io.Writer
	c *sentCounter
}

func (s sentWriter) Write(p []byte) (int, error) {
	s.c.at += int64(len(p))
	raise(s.c.sent, s.c.at)
	return s.w.Write(p)
}

// raise sets v to n unless v holds more.
func raise(v *atomic.Int64, n int64) {
	for cur := v.Load(); n > cur; cur = v.Load() {
		if v.CompareAndSwap(cur, n) {
			return
		}
	}
}

// sleep waits d, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
