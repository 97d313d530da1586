// Package export writes the disk of a containerDisk image out of a
// registry into a file, a block device or a stream: what a PVC importer
// or a node does with an image diskimporter made.
//
// The layer blob is read once, in parallel bounded Range requests (package
// fetch, through package blob), and its sha256 is computed on the way over
// the bytes in order, on the goroutine that reassembles them, while another
// goroutine writes them out at their offsets. Runs of zeros are not written
// to a file, which stays sparse. A file is written as PATH.partial and
// renamed to PATH only once the blob's sha256 and size match the
// manifest's descriptor; a state file beside it (PATH.partial.state)
// records, every CheckpointInterval bytes, how far the partial file is
// known to be on disk and the sha256 state at that point, so that an
// export killed half-way and run again goes on from there.
package export

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/blob"
	"github.com/diskimporter/diskimporter/importer/reason"
)

// Defaults of the Options fields left zero.
const (
	DefaultConnections        = 8
	DefaultChunkSize          = 16 << 20
	DefaultCheckpointInterval = 64 << 20
	DefaultProgressInterval   = 5 * time.Second
)

// Stdout is the Output that writes the disk to Options.Stdout.
const Stdout = "-"

// Options configures one export. The zero value of every field but Source
// and Output is a usable default, stated on the field.
type Options struct {
	// Source is the containerDisk image, REGISTRY/REPO:TAG or
	// REGISTRY/REPO@sha256:…, with or without docker://. Required.
	Source string

	// Output is where the disk goes: a file path, an existing block
	// device (or other file that is not a regular file, written in place,
	// every byte, with no resume), or "-" for Stdout. Required.
	Output string

	// Dense writes every byte of the disk to a file, zeros included, as
	// for a preallocated file. False: blocks of 4 KiB that are all zeros
	// are not written, and the file is sparse. A block device and a
	// stream get every byte either way.
	Dense bool

	// RegistryOptions say how to reach the registry, as for an import's
	// destination; HTTP2 is not used (blobs are read on HTTP/1.1
	// connections, one per Range request).
	importer.RegistryOptions

	// ReadOptions say how the layer blob is read, with the zero value
	// rule of importer.ReadOptions: 0 is DefaultConnections,
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
	// linux/amd64.
	Platform string

	// Logger gets the progress and what happened. Nil: slog.Default().
	Logger *slog.Logger

	// Stdout is where Output "-" writes. Nil: os.Stdout.
	Stdout io.Writer

	// CheckpointInterval is how many bytes are written between two
	// checkpoints of a file output (an fsync of the partial file, then the
	// state file). Zero: DefaultCheckpointInterval.
	CheckpointInterval int64

	// ProgressInterval is how often progress is logged and reported.
	// Zero: DefaultProgressInterval.
	ProgressInterval time.Duration

	// OnProgress, when set, is called every ProgressInterval with how
	// much of the disk is written (phase importer.PhaseDownloading), and
	// once at the end with importer.PhaseDone or importer.PhaseFailed,
	// from a goroutine of its own: a slow OnProgress never holds the
	// writes back. Calls never overlap.
	OnProgress func(importer.Progress)
}

// Result describes a finished export.
type Result struct {
	// Source is the image as given, with docker:// in front.
	Source string `json:"source"`
	// Reference is the image, pinned by the digest of its manifest.
	Reference string `json:"reference"`
	// LayerDigest is the layer blob the disk came from, checked.
	LayerDigest string `json:"layer_digest"`
	// DiskPath is the disk's path in the layer, such as disk/disk.img.
	DiskPath string `json:"disk_path"`
	// Output is where the disk was written ("-": the stream).
	Output string `json:"output"`
	// Size is the disk's length in bytes.
	Size int64 `json:"size"`
	// ResumedFrom is how many bytes of the disk a previous, interrupted
	// export had already written and this one did not read again: 0 when
	// the partial output did not match its state file (damaged, of
	// another disk or another version, or its bytes changed since), and
	// the export started over, as its log says in a warning.
	ResumedFrom int64 `json:"resumed_from"`
	// AllocatedBytes is the space the output file takes on its file
	// system (st_blocks × 512); absent for a stream or a device.
	AllocatedBytes *int64 `json:"allocated_bytes,omitempty"`
	// Seconds is the export's wall time, rounded to 0.1 s as the
	// importer's.
	Seconds float64 `json:"seconds"`
	// MBPerSecond is the disk bytes this run read (Size - ResumedFrom)
	// per second, in 10^6 bytes, rounded to 0.1.
	MBPerSecond float64 `json:"mb_per_second"`
}

// ErrOutput: the output could not be created, locked or written (a
// missing directory, no space left, permissions, another export at work):
// the OutputError reason.
var ErrOutput = reason.ErrOutput

// settings are Options checked and completed.
type settings struct {
	Options
	ref      name.Reference
	display  string
	platform v1.Platform
}

func (o Options) settings() (*settings, error) {
	s := &settings{Options: o}
	var err error
	s.ref, s.display, err = importer.CheckImageRead(o.Source, "Source", &s.RegistryOptions, &s.ReadOptions, DefaultConnections, DefaultChunkSize, &s.Transport)
	if err != nil {
		return nil, err
	}
	if o.Output == "" {
		return nil, fmt.Errorf("%w: no Output given (a path, or - for stdout)", importer.ErrInvalidOptions)
	}
	if s.platform, err = importer.ParsePlatform(s.Platform, "linux/amd64"); err != nil {
		return nil, err
	}
	if s.CheckpointInterval < 0 {
		return nil, fmt.Errorf("%w: checkpoint interval %d is negative", importer.ErrInvalidOptions, s.CheckpointInterval)
	}
	if s.CheckpointInterval == 0 {
		s.CheckpointInterval = DefaultCheckpointInterval
	}
	if s.ProgressInterval <= 0 {
		s.ProgressInterval = DefaultProgressInterval
	}
	if s.Logger == nil {
		s.Logger = slog.Default()
	}
	if s.Stdout == nil {
		s.Stdout = os.Stdout
	}
	if s.Output != Stdout {
		dir := filepath.Dir(s.Output)
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("%w: output %s: directory %s does not exist", ErrOutput, s.Output, dir)
		}
		if fi, err := os.Stat(s.Output); err == nil && fi.IsDir() {
			return nil, fmt.Errorf("%w: output %s is a directory", ErrOutput, s.Output)
		}
	}
	return s, nil
}

// Export writes the disk of the image o.Source to o.Output.
//
// A file output is written as Output + ".partial" and renamed to Output
// once the layer blob's sha256 and size match its descriptor. When the
// blob does not match (an error wrapping blob.ErrDigest), the partial
// file is removed: no output is left. When the export fails otherwise
// (the network, a cancelled ctx), the partial file and its state file
// are kept, and the next Export to the same Output goes on from the last
// checkpoint if the image has the same layer and the partial file still
// holds the bytes its state file recorded (they are read again to check);
// otherwise it starts over, and logs why. The partial file is locked for
// the whole export: a second Export to the same Output fails at once
// (ErrOutput). The partial file, its state file and the state file's
// temporary files are private (0600) and never opened through a symbolic
// link: a link at PATH.partial or PATH.partial.state fails the export
// (ErrOutput). A block device or a FIFO is written in place, every byte,
// and not resumed; a stream ("-") is written in order, every byte, and
// gets bytes before they are verified: its error tells whether they were
// right. A write that blocks (a pipe or a FIFO nobody reads) and the wait
// for a FIFO's reader end with ctx.
func Export(ctx context.Context, o Options) (*Result, error) {
	start := time.Now()
	s, err := o.settings()
	if err != nil {
		return nil, err
	}
	log := s.Logger
	d, err := blob.Open(ctx, s.ref, blob.Options{
		Keychain:  s.Keychain,
		Transport: s.Transport,
		Platform:  &s.platform,
		Fetch:     s.ReadOptions.FetchOptions(s.Logger, s.display),
		PlainHTTP: s.PlainHTTP,
	})
	if err != nil {
		return nil, sourceError(s.display, err)
	}
	res := &Result{
		Source:      s.display,
		Reference:   d.Ref.String(),
		LayerDigest: d.Layer.Digest.String(),
		DiskPath:    d.Path,
		Output:      s.Output,
		Size:        d.Size,
	}
	log.Info("export started", "source", s.display, "reference", res.Reference, "layer", res.LayerDigest,
		"disk", d.Path, "size", d.Size, "compressed", d.Compressed(), "output", s.Output)

	e := &exporter{s: s, d: d, res: res, log: log}
	defer e.report(start)()
	var fi os.FileInfo
	if s.Output != Stdout {
		fi, _ = os.Stat(s.Output)
	}
	switch {
	case s.Output == Stdout:
		err = e.toStream(ctx, s.Stdout, "stdout")
	case fi != nil && !fi.Mode().IsRegular():
		err = e.toDevice(ctx)
	default:
		err = e.toFile(ctx)
	}
	if err != nil {
		e.failed = true
		return nil, err
	}
	took := time.Since(start).Seconds()
	res.Seconds = round(took)
	res.MBPerSecond = round(float64(res.Size-res.ResumedFrom) / took / 1e6)
	log.Info("exported", "output", s.Output, "size", res.Size, "resumed_from", res.ResumedFrom,
		"seconds", res.Seconds, "mb_per_second", res.MBPerSecond)
	return res, nil
}

// toStream writes the disk, in order, to w, named what in errors. A write
// that blocks (a pipe nobody reads) ends with ctx.
func (e *exporter) toStream(ctx context.Context, w io.Writer, what string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	o, release := newStreamOut(ctx, w, what)
	defer release()
	r, err := e.d.Reader(ctx)
	if err != nil {
		return sourceError(e.s.display, err)
	}
	defer r.Close()
	_, err = e.pump(ctx, cancel, r, nil, 0, o)
	return err
}

// toDevice writes every byte of the disk over the start of the existing
// file that is not a regular one (a block device, a FIFO), in order. A
// FIFO is waited for until it has a reader or ctx ends.
func (e *exporter) toDevice(ctx context.Context) error {
	f, err := openDevice(ctx, e.s.Output, func() {
		e.log.Info("the output is a FIFO: waiting for a reader", "output", e.s.Output)
	})
	if err != nil {
		return err
	}
	defer f.Close()
	e.log.Info("the output is not a regular file: writing every byte in place, without resume", "output", e.s.Output)
	if err := e.toStream(ctx, f, e.s.Output); err != nil {
		if errors.Is(err, blob.ErrDigest) {
			return fmt.Errorf("%w; %s holds the unverified bytes", err, e.s.Output)
		}
		return err
	}
	// Character devices such as /dev/null, and FIFOs, cannot be synced.
	if err := f.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("%w: syncing %s: %w", ErrOutput, e.s.Output, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("%w: %w", ErrOutput, err)
	}
	return nil
}

// report calls OnProgress every ProgressInterval until the function it
// returns is called, which makes the last call.
func (e *exporter) report(start time.Time) (stop func()) {
	on := e.s.OnProgress
	if on == nil {
		return func() {}
	}
	snapshot := func(phase importer.Phase) importer.Progress {
		done := e.written.Load()
		rate := float64(done-e.res.ResumedFrom) / max(time.Since(start).Seconds(), 1e-3)
		return importer.Progress{Phase: phase, Bytes: done, Total: e.d.Size, BytesPerSecond: rate}
	}
	quit, ended := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(ended)
		t := time.NewTicker(e.s.ProgressInterval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				on(snapshot(importer.PhaseDownloading))
			case <-quit:
				return
			}
		}
	}()
	return func() {
		close(quit)
		<-ended
		phase := importer.PhaseDone
		if e.failed {
			phase = importer.PhaseFailed
		}
		on(snapshot(phase))
	}
}
