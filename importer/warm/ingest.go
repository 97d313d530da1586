package warm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/blob"
)

// How blob bytes go to containerd: messages of msgSize bytes, up to
// window of them sent before containerd has answered the first, so that
// containerd's write and hash of one overlaps the sending of the next.
const (
	msgSize = 1 << 20
	window  = 4
)

// lockedWait is the longest wait between two tries of an ingest that
// another writer holds (a kubelet's pull, another warm).
const lockedWait = 5 * time.Second

// opener reads a blob from byte off on. It returns the reader and the
// byte it starts at, which may be 0 whatever off was (a registry that
// does not answer Range requests). Its errors are classified.
type opener func(ctx context.Context, off int64) (io.ReadCloser, int64, error)

// errExists: containerd has the blob (it answered AlreadyExists).
var errExists = errors.New("the blob is present")

// errCommit: containerd refused the commit: the bytes written do not have
// the expected digest or size.
var errCommit = errors.New("containerd refused the commit")

// refKey is the ingest ref containerd's own fetch uses for desc
// (remotes.MakeRefKey), so that a pull of the same blob at the same time
// waits for this write, or goes on from what it left, and the other way
// round.
func refKey(desc v1.Descriptor) string {
	key := desc.Digest.String()
	if name, ok := desc.Annotations["org.opencontainers.image.ref.name"]; ok {
		key = name + "@" + key
	}
	mt := desc.MediaType
	switch {
	case mt.IsImage():
		return "manifest-" + key
	case mt.IsIndex():
		return "index-" + key
	case isLayer(mt):
		return "layer-" + key
	case mt.IsConfig():
		return "config-" + key
	}
	return "unknown-" + key
}

// isLayer tells whether mt is a layer's media type, as containerd's
// images.IsLayerType does.
func isLayer(mt types.MediaType) bool {
	return mt.IsLayer() || strings.HasPrefix(string(mt), "application/vnd.oci.image.layer.") ||
		strings.HasPrefix(string(mt), "application/vnd.docker.image.rootfs.")
}

// put writes the blob desc into containerd's content store, read from
// open, unless containerd has it: from byte 0, or from where a partial
// ingest of it stops. containerd checks the size and digest on commit; a
// commit it refuses removes the ingest and is ErrCorruptSource (after one
// more try from byte 0 when the ingest was resumed: a previous writer may
// have left wrong bytes). progress is told of the bytes written.
func (n *node) put(ctx context.Context, log *slog.Logger, desc v1.Descriptor, open opener, progress func(int64)) (action string, from int64, err error) {
	ref := refKey(desc)
	for attempt := 0; ; attempt++ {
		in, offset, err := n.startIngest(ctx, log, ref, desc)
		if errors.Is(err, errExists) {
			return Present, 0, nil
		}
		if err != nil {
			return "", 0, err
		}
		if offset > desc.Size {
			in.cancel()
			log.Warn("containerd's ingest is longer than the blob: starting over", "ref", ref, "offset", offset, "size", desc.Size)
			if err := n.abort(ctx, ref); err != nil {
				return "", 0, err
			}
			if attempt > 0 {
				return "", 0, fmt.Errorf("%w: ingest %s is at byte %d of a %d-byte blob after it was removed", ErrContainerd, ref, offset, desc.Size)
			}
			continue
		}
		var r io.ReadCloser
		start := offset
		if offset < desc.Size {
			r, start, err = open(ctx, offset)
			if err != nil {
				in.cancel()
				return "", 0, err
			}
		}
		err = in.pump(ctx, r, start, desc, progress)
		if r != nil {
			r.Close()
		}
		switch {
		case errors.Is(err, errExists):
			return Present, 0, nil
		case errors.Is(err, errCommit):
			if aerr := n.abort(ctx, ref); aerr != nil {
				return "", 0, errors.Join(err, aerr)
			}
			if offset > 0 && attempt == 0 {
				log.Warn("containerd refused the commit of a resumed ingest: starting over from byte 0", "ref", ref, "resumed_from", offset, "error", err)
				continue
			}
			return "", 0, fmt.Errorf("%w: %w: %w", importer.ErrCorruptSource, blob.ErrDigest, err)
		case err != nil:
			return "", 0, err
		}
		if start > 0 {
			return Resumed, start, nil
		}
		return Fetched, 0, nil
	}
}

// ingest is one Write stream to containerd's content store.
type ingest struct {
	n      *node
	ref    string
	stream contentapi.Content_WriteClient
	cancel context.CancelFunc
}

// startIngest opens the ingest ref of desc and returns the offset
// containerd has of it; errExists when containerd has the blob. An ingest
// that another writer holds is waited for, until ctx ends.
func (n *node) startIngest(ctx context.Context, log *slog.Logger, ref string, desc v1.Descriptor) (*ingest, int64, error) {
	wait := 250 * time.Millisecond
	for {
		sctx, cancel := context.WithCancel(n.ctx(ctx))
		stream, err := n.content.Write(sctx)
		if err == nil {
			err = stream.Send(&contentapi.WriteContentRequest{
				Action: contentapi.WriteAction_STAT, Ref: ref, Total: desc.Size, Expected: desc.Digest.String(),
			})
		}
		var resp *contentapi.WriteContentResponse
		if err == nil || err == io.EOF {
			resp, err = stream.Recv()
		}
		if err == nil {
			return &ingest{n: n, ref: ref, stream: stream, cancel: cancel}, resp.Offset, nil
		}
		cancel()
		st, _ := status.FromError(err)
		switch {
		case ctx.Err() != nil:
			return nil, 0, errCancelled(ctx, "opening ingest "+ref)
		case st.Code() == codes.AlreadyExists:
			return nil, 0, errExists
		case st.Code() == codes.Unavailable && strings.Contains(st.Message(), "locked"):
			log.Info("another writer holds containerd's ingest of the blob: waiting", "ref", ref, "retry_in", wait)
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, 0, errCancelled(ctx, "waiting for ingest "+ref)
			}
			wait = min(2*wait, lockedWait)
			continue
		}
		return nil, 0, n.fail(ctx, "opening ingest "+ref, err)
	}
}

// sent is a message sent and not yet answered: the offset containerd must
// answer with, and the buffer to reuse then.
type sent struct {
	end int64
	buf []byte
}

// pump writes r, which holds desc's bytes from byte off on, at off, then
// commits with desc's size and digest. Up to window messages are in
// flight; their buffers are reused only once containerd has answered
// them. A nil r writes nothing (the ingest is whole).
func (in *ingest) pump(ctx context.Context, r io.Reader, off int64, desc v1.Descriptor, progress func(int64)) error {
	defer in.cancel()
	free := make(chan []byte, window)
	for range window {
		free <- nil
	}
	pending := make(chan sent, window+1)
	answered := make(chan error, 1)
	go func() {
		for s := range pending {
			resp, err := in.stream.Recv()
			if err != nil {
				answered <- err
				return
			}
			if resp.Offset != s.end {
				answered <- fmt.Errorf("%w: containerd's ingest %s is at byte %d, want %d", ErrContainerd, in.ref, resp.Offset, s.end)
				return
			}
			if s.buf != nil {
				free <- s.buf
			}
		}
		answered <- nil
	}()
	// stop ends the stream after a failure of ours.
	stop := func(err error) error {
		in.cancel()
		close(pending)
		<-answered
		return err
	}
	// failed is the error of a Send that failed: containerd ended the
	// stream, and says why to Recv.
	failed := func(err error) error {
		close(pending)
		if rerr := <-answered; rerr != nil {
			err = rerr
		}
		return in.error(ctx, err)
	}
	// A write at offset 0 makes containerd truncate what the ingest held:
	// a registry that does not answer Range requests starts over.
	for r != nil {
		var buf []byte
		select {
		case buf = <-free:
		case err := <-answered:
			close(pending)
			if err == nil {
				err = errors.New("containerd stopped answering") // unreachable: the receiver ends after pending is closed
			}
			return in.error(ctx, err)
		}
		if buf == nil {
			buf = make([]byte, msgSize)
		}
		nr, rerr := io.ReadFull(r, buf)
		if off+int64(nr) > desc.Size {
			return stop(fmt.Errorf("%w: %w: blob %s goes on past its %d bytes", blob.ErrCorrupt, blob.ErrDigest, desc.Digest, desc.Size))
		}
		if nr > 0 {
			if err := in.stream.Send(&contentapi.WriteContentRequest{Action: contentapi.WriteAction_WRITE, Offset: off, Data: buf[:nr]}); err != nil {
				return failed(err)
			}
			off += int64(nr)
			pending <- sent{end: off, buf: buf}
			progress(int64(nr))
		} else {
			free <- buf
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			if ctx.Err() != nil {
				return stop(errCancelled(ctx, "reading blob "+desc.Digest.String()))
			}
			return stop(rerr)
		}
	}
	if off != desc.Size {
		return stop(fmt.Errorf("blob %s: %w after %d of its %d bytes", desc.Digest, io.ErrUnexpectedEOF, off, desc.Size))
	}
	if err := in.stream.Send(&contentapi.WriteContentRequest{
		Action: contentapi.WriteAction_COMMIT, Offset: off, Total: desc.Size, Expected: desc.Digest.String(),
	}); err != nil {
		return failed(err)
	}
	pending <- sent{end: desc.Size}
	close(pending)
	if err := <-answered; err != nil {
		return in.error(ctx, err)
	}
	return nil
}

// error is the error of a stream containerd ended with err.
func (in *ingest) error(ctx context.Context, err error) error {
	if errors.Is(err, ErrContainerd) {
		return err
	}
	st, _ := status.FromError(err)
	switch {
	case ctx.Err() != nil:
		return errCancelled(ctx, "writing ingest "+in.ref)
	case st.Code() == codes.AlreadyExists:
		return errExists
	case st.Code() == codes.FailedPrecondition:
		return fmt.Errorf("%w of ingest %s: %s", errCommit, in.ref, st.Message())
	}
	return in.n.fail(ctx, "writing ingest "+in.ref, err)
}
