// Package warm puts an image into a node's containerd ahead of the pod
// that runs it: every blob containerd lacks (the index, the manifest, the
// config, the layers) is read from the registry with the fetch engine's
// bounded parallel Range requests, through the registry's redirects, and
// written into containerd's content store over its gRPC socket, with the
// expected size and digest, so that containerd itself checks each commit.
// The image is then recorded as containerd's CRI plugin records a pull
// (its tag, its digest and its config digest, labelled as the CRI
// plugin's own, the content held from garbage collection by containerd's
// gc.ref labels) and, with Unpack, its layers are unpacked into the CRI
// snapshotter as containerd's unpacker does: the kubelet's pull that
// follows finds everything present, and a VM starts without waiting for a
// one-stream download of a multi-GiB layer.
//
// A warm is idempotent (a blob containerd has is not read again, an
// unpacked layer not unpacked again) and resumable: a warm that was
// killed goes on from the bytes containerd's ingest holds. Everything is
// written under a containerd lease, so that nothing is collected before
// the image record holds it.
//
// It speaks containerd's gRPC API (github.com/containerd/containerd/api)
// directly rather than through containerd's client package, whose
// dependency tree is several times larger.
package warm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/reason"
)

// Defaults of the Options fields left zero.
const (
	DefaultAddress          = "/run/containerd/containerd.sock"
	DefaultNamespace        = "k8s.io"
	DefaultSnapshotter      = "overlayfs"
	DefaultConnections      = 8
	DefaultChunkSize        = 16 << 20
	DefaultProgressInterval = 5 * time.Second
)

// What Warm did with a blob: Blob.Action.
const (
	// Fetched: read from the registry and committed.
	Fetched = "fetched"
	// Resumed: containerd held a partial ingest of it (a warm or a pull
	// that was stopped); the rest was read from the registry and
	// committed.
	Resumed = "resumed"
	// Present: containerd had it; nothing was read.
	Present = "present"
	// Skipped: a layer outside [MinBlobSize, MaxBlobSize]; not read.
	Skipped = "skipped"
)

// PhaseUnpacking is the phase OnProgress reports while the layers are
// unpacked (Bytes: layers done, Total: layers).
const PhaseUnpacking importer.Phase = "unpacking"

// ErrContainerd: the node's containerd could not be reached or refused a
// request: the ContainerdError reason.
var ErrContainerd = reason.ErrContainerd

// Options configures one warm. The zero value of every field is a usable
// default, stated on the field.
type Options struct {
	// RegistryOptions say how to reach the registry (TLS, credentials,
	// plain http), as for an export's source.
	importer.RegistryOptions

	// ReadOptions say how each blob is read: 0 is DefaultConnections,
	// DefaultChunkSize, importer.DefaultRetries or
	// importer.DefaultStallTimeout; a negative Retries or StallTimeout is
	// none or never.
	importer.ReadOptions

	// Transport, when set, is the base transport to the registry and to
	// where it redirects blob reads, instead of the one RegistryOptions
	// describe: credentials are added above it, for the registry's host
	// only. Nil: importer.RegistryReadTransport(RegistryOptions).
	Transport http.RoundTripper

	// Platform picks the image of an index, os/arch[/variant]. Empty:
	// the node's own, linux/runtime.GOARCH.
	Platform string

	// Address is the path of containerd's gRPC socket. Empty:
	// DefaultAddress.
	Address string

	// Namespace is the containerd namespace written to. Empty: k8s.io,
	// the kubelet's.
	Namespace string

	// Unpack unpacks the layers into Snapshotter after the blobs are in,
	// as a pull does. The CLI turns it on by default.
	Unpack bool

	// Snapshotter is the snapshotter the layers are unpacked into: the
	// CRI plugin's. Empty: overlayfs.
	Snapshotter string

	// MinBlobSize and MaxBlobSize skip the layers smaller or larger (0:
	// no bound). The index, manifest and config are always written. An
	// image with a skipped layer is not recorded nor unpacked (the
	// kubelet would take it for pulled); what was written is held by the
	// lease for 24 hours, for the kubelet's pull to find.
	MinBlobSize, MaxBlobSize int64

	// Logger gets the progress and what happened. Nil: slog.Default().
	Logger *slog.Logger

	// ProgressInterval is how often progress is logged and reported.
	// Zero: DefaultProgressInterval.
	ProgressInterval time.Duration

	// OnProgress, when set, is called every ProgressInterval with the
	// bytes written to containerd so far (importer.PhaseDownloading) or
	// the layers unpacked (PhaseUnpacking), and once at the end with
	// importer.PhaseDone or importer.PhaseFailed, from a goroutine of its
	// own. Calls never overlap.
	OnProgress func(importer.Progress)
}

// Blob is one blob of the image and what Warm did with it.
type Blob struct {
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	MediaType string `json:"media_type"`
	// Action is Fetched, Resumed, Present or Skipped.
	Action string `json:"action"`
	// ResumedFrom is the byte a Resumed blob went on from.
	ResumedFrom int64 `json:"resumed_from,omitempty"`
}

// Result describes a finished warm.
type Result struct {
	// Image is the image as given, with docker:// in front.
	Image string `json:"image"`
	// Digest is the digest of what the reference names: the index, or
	// the manifest of a single-platform image.
	Digest string `json:"digest"`
	// Manifest is the digest of the platform's manifest (Digest when the
	// image has no index).
	Manifest string `json:"manifest"`
	// Config is the digest of the image config: the image ID the kubelet
	// reports.
	Config string `json:"config"`
	// Names are the image records written (repo:tag, repo@digest, the
	// config digest); none when a layer was skipped.
	Names []string `json:"names,omitempty"`
	// Blobs are the image's blobs, the index first, then the manifest,
	// the config and the layers.
	Blobs []Blob `json:"blobs"`
	// BytesFetched is how many blob bytes this run read from the
	// registry and wrote to containerd.
	BytesFetched int64 `json:"bytes_fetched"`
	// Recorded tells whether the image records were written: false when
	// a layer was skipped.
	Recorded bool `json:"recorded"`
	// Unpacked tells whether every layer is unpacked in Snapshotter (by
	// this run or before it).
	Unpacked bool `json:"unpacked"`
	// Snapshotter is the snapshotter unpacked into, with Unpack.
	Snapshotter string `json:"snapshotter,omitempty"`
	// Seconds is the warm's wall time, rounded to 0.1 s.
	Seconds float64 `json:"seconds"`
}

// settings are Options checked and completed.
type settings struct {
	Options
	ref      name.Reference
	display  string
	platform v1.Platform
}

func (o Options) settings(image string) (*settings, error) {
	s := &settings{Options: o}
	var err error
	s.ref, s.display, err = importer.CheckImageRead(image, "image", &s.RegistryOptions, &s.ReadOptions, DefaultConnections, DefaultChunkSize, &s.Transport)
	if err != nil {
		return nil, err
	}
	if s.platform, err = importer.ParsePlatform(s.Platform, "linux/"+runtime.GOARCH); err != nil {
		return nil, err
	}
	if s.MinBlobSize < 0 || s.MaxBlobSize < 0 || s.MaxBlobSize > 0 && s.MaxBlobSize < s.MinBlobSize {
		return nil, fmt.Errorf("%w: blob size bounds [%d, %d]", importer.ErrInvalidOptions, s.MinBlobSize, s.MaxBlobSize)
	}
	if s.Address == "" {
		s.Address = DefaultAddress
	}
	if s.Namespace == "" {
		s.Namespace = DefaultNamespace
	}
	if s.Snapshotter == "" {
		s.Snapshotter = DefaultSnapshotter
	}
	if s.ProgressInterval <= 0 {
		s.ProgressInterval = DefaultProgressInterval
	}
	if s.Logger == nil {
		s.Logger = slog.Default()
	}
	return s, nil
}

// Warm puts the image ref ([docker://]REGISTRY/REPO:TAG or
// REGISTRY/REPO@sha256:…) into the containerd at o.Address, as a pull
// would, reading from the registry only the bytes containerd lacks.
//
// Errors wrap the sentinels of package reason: a registry failure is
// classified as an export's source is (importer.ClassifySource), a blob
// whose bytes do not match its digest is ErrCorruptSource (containerd
// refused the commit; its ingest is removed, nothing is recorded), a
// containerd that cannot be reached or refuses is ErrContainerd, and a
// cancelled ctx is context.Canceled. A warm that fails keeps what it
// wrote, under its lease, for 24 hours: run again, it goes on from there.
func Warm(ctx context.Context, ref string, o Options) (*Result, error) {
	start := time.Now()
	s, err := o.settings(ref)
	if err != nil {
		return nil, err
	}
	w := &warmer{s: s, log: s.Logger}
	defer w.report(start)()
	res, err := w.run(ctx)
	if err != nil {
		w.failed.Store(true)
		return nil, err
	}
	res.Seconds = round(time.Since(start).Seconds())
	s.Logger.Info("warmed", "image", s.display, "digest", res.Digest, "bytes_fetched", res.BytesFetched,
		"recorded", res.Recorded, "unpacked", res.Unpacked, "seconds", res.Seconds)
	return res, nil
}

// warmer is one warm under way.
type warmer struct {
	s    *settings
	log  *slog.Logger
	node *node

	// For OnProgress.
	phase  atomic.Value // importer.Phase
	done   atomic.Int64
	total  atomic.Int64
	failed atomic.Bool
}

func (w *warmer) run(ctx context.Context) (*Result, error) {
	s := w.s
	w.phase.Store(importer.PhaseDownloading)
	// The node first: a containerd that cannot be reached fails the warm
	// before a request goes to the registry.
	n, err := dial(ctx, s.Address, s.Namespace)
	if err != nil {
		return nil, err
	}
	defer n.close()
	w.node = n
	src, err := openSource(ctx, s)
	if err != nil {
		return nil, err
	}
	img, err := src.resolve(ctx, s.ref, s.platform)
	if err != nil {
		return nil, importer.ClassifySource(s.display, err)
	}
	if img.config, err = n.read(ctx, img.Manifest.Config, maxConfigSize); err != nil {
		return nil, err
	}
	if img.config == nil {
		if img.config, err = src.readBlob(ctx, img.Manifest.Config); err != nil {
			return nil, importer.ClassifySource(s.display, err)
		}
	}
	res := &Result{Image: s.display, Digest: img.Top().Digest.String(), Manifest: img.Image().Descriptor.Digest.String(), Config: img.Manifest.Config.Digest.String()}
	w.log.Info("warm started", "image", s.display, "digest", res.Digest, "manifest", res.Manifest,
		"layers", len(img.Manifest.Layers), "containerd", s.Address, "namespace", s.Namespace)

	unlock, err := w.lockImage(ctx, img.Top().Digest.String())
	if err != nil {
		return nil, err
	}
	defer unlock()
	release, err := n.lease(ctx, img.Top().Digest.String())
	if err != nil {
		return nil, err
	}
	complete, err := w.blobs(ctx, src, img, res)
	if err != nil {
		return nil, err
	}
	if !complete {
		w.log.Warn("a layer was skipped by the size bounds: the image is not recorded nor unpacked; what was written is held for 24 hours",
			"image", s.display)
		return res, nil
	}
	if s.Unpack {
		w.phase.Store(PhaseUnpacking)
		if err := w.unpack(ctx, img); err != nil {
			return nil, err
		}
		res.Unpacked, res.Snapshotter = true, s.Snapshotter
	}
	names, err := w.record(ctx, img)
	if err != nil {
		return nil, err
	}
	res.Names, res.Recorded = names, true
	// The image records hold everything now.
	if err := release(ctx); err != nil {
		w.log.Warn("the lease was not removed; it expires in 24 hours", "error", err)
	}
	return res, nil
}

// inFlight holds the warms under way in this process, by containerd
// socket, namespace and image digest.
var inFlight = struct {
	sync.Mutex
	m map[string]chan struct{}
}{m: map[string]chan struct{}{}}

// lockImage waits until no other warm of the image top into the same
// containerd namespace runs in this process, and keeps others out until
// unlock is called: two warms of one image share its lease, which the
// first to finish removes. The one that waited finds what the other wrote.
func (w *warmer) lockImage(ctx context.Context, top string) (unlock func(), err error) {
	key := w.s.Address + "\x00" + w.s.Namespace + "\x00" + top
	for logged := false; ; logged = true {
		inFlight.Lock()
		busy, ok := inFlight.m[key]
		if !ok {
			done := make(chan struct{})
			inFlight.m[key] = done
			inFlight.Unlock()
			return func() {
				inFlight.Lock()
				delete(inFlight.m, key)
				inFlight.Unlock()
				close(done)
			}, nil
		}
		inFlight.Unlock()
		if !logged {
			w.log.Info("another warm of the image is under way: waiting for it", "image", w.s.display, "digest", top)
		}
		select {
		case <-busy:
		case <-ctx.Done():
			return nil, errCancelled(ctx, "waiting for another warm of "+w.s.display)
		}
	}
}

// errCancelled wraps the cause of a cancelled ctx, for an error that
// ctx's end caused, so that it reads as Cancelled (or Timeout) whichever
// peer noticed it.
func errCancelled(ctx context.Context, what string) error {
	if err := context.Cause(ctx); err != nil && !errors.Is(err, ctx.Err()) {
		return fmt.Errorf("%s: %w: %w", what, ctx.Err(), err)
	}
	return fmt.Errorf("%s: %w", what, ctx.Err())
}

// report calls OnProgress every ProgressInterval, and logs progress, until
// the function it returns is called, which makes the last call.
func (w *warmer) report(start time.Time) (stop func()) {
	on := w.s.OnProgress
	snapshot := func(phase importer.Phase) importer.Progress {
		done := w.done.Load()
		p := importer.Progress{Phase: phase, Bytes: done, Total: w.total.Load()}
		if phase == importer.PhaseDownloading {
			p.BytesPerSecond = float64(done) / max(time.Since(start).Seconds(), 1e-3)
		}
		return p
	}
	current := func() importer.Phase {
		p, _ := w.phase.Load().(importer.Phase)
		if p == "" {
			p = importer.PhaseDownloading
		}
		return p
	}
	quit, ended := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(ended)
		t := time.NewTicker(w.s.ProgressInterval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p := snapshot(current())
				w.log.Info("progress", "phase", p.Phase, "done", p.Bytes, "total", p.Total, "bytes_per_second", int64(p.BytesPerSecond))
				if on != nil {
					on(p)
				}
			case <-quit:
				return
			}
		}
	}()
	return func() {
		close(quit)
		<-ended
		if on == nil {
			return
		}
		phase := importer.PhaseDone
		if w.failed.Load() {
			phase = importer.PhaseFailed
		}
		p := snapshot(phase)
		on(p)
	}
}

func round(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }
