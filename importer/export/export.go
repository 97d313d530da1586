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
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/blob"
	"github.com/diskimporter/diskimporter/importer/fetch"
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

	// Keychain gives the registry credentials. Nil: the Docker config
	// keychain (authn.DefaultKeychain).
	Keychain authn.Keychain

	// Transport is the base transport to the registry and to where it
	// redirects blob reads (TLS settings, proxies): credentials are added
	// above it, for the registry's host only. Nil: NewTransport("", false).
	Transport http.RoundTripper

	// Platform picks the image of an index, os/arch[/variant]. Empty:
	// linux/amd64.
	Platform string

	// Fetch says how the layer blob is read. Connections 0:
	// DefaultConnections; ChunkSize 0: DefaultChunkSize; Retries and
	// StallTimeout are taken as they are (0: none, never). OnRetry nil:
	// each retry is logged.
	Fetch fetch.Options

	// Logger gets the progress and what happened. Nil: slog.Default().
	Logger *slog.Logger

	// Stdout is where Output "-" writes. Nil: os.Stdout.
	Stdout io.Writer

	// CheckpointInterval is how many bytes are written between two
	// checkpoints of a file output (an fsync of the partial file, then the
	// state file). Zero: DefaultCheckpointInterval.
	CheckpointInterval int64

	// ProgressInterval is how often progress is logged. Zero:
	// DefaultProgressInterval.
	ProgressInterval time.Duration
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
	// export had already written and this one did not read again.
	ResumedFrom int64 `json:"resumed_from"`
	// AllocatedBytes is the space the output file takes on its file
	// system (st_blocks × 512); absent for a stream or a device.
	AllocatedBytes *int64 `json:"allocated_bytes,omitempty"`
	// Seconds is the export's wall time.
	Seconds float64 `json:"seconds"`
	// MBPerSecond is the disk bytes this run read (Size - ResumedFrom)
	// per second, in 10^6 bytes.
	MBPerSecond float64 `json:"mb_per_second"`
}

// ErrOutput: the output could not be created or written (a missing
// directory, no space left, permissions).
var ErrOutput = errors.New("cannot write the output")

// Reason returns a short machine-readable reason for an error returned by
// Export: importer.Reason's (SourceNotFound, SourceUnauthorized,
// CorruptSource, UnsupportedFormat, InvalidOptions, Cancelled, …), or
// "OutputError" for ErrOutput.
func Reason(err error) string {
	switch r := importer.Reason(err); {
	case r == "Cancelled", r == "Timeout":
		return r
	case errors.Is(err, ErrOutput):
		return "OutputError"
	default:
		return r
	}
}

// settings are Options checked and completed.
type settings struct {
	Options
	ref      name.Reference
	display  string
	platform v1.Platform
}

func (o Options) settings() (*settings, error) {
	s := &settings{Options: o}
	if o.Source == "" {
		return nil, fmt.Errorf("%w: no source given", importer.ErrInvalidOptions)
	}
	if o.Output == "" {
		return nil, fmt.Errorf("%w: no output given (a path, or - for stdout)", importer.ErrInvalidOptions)
	}
	ref, err := name.ParseReference(strings.TrimPrefix(o.Source, "docker://"))
	if err != nil {
		return nil, fmt.Errorf("%w: source %q: %w (want REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:…)", importer.ErrInvalidOptions, o.Source, err)
	}
	s.ref, s.display = ref, "docker://"+ref.String()
	if s.Platform == "" {
		s.Platform = "linux/amd64"
	}
	p, err := v1.ParsePlatform(s.Platform)
	if err != nil || p.OS == "" || p.Architecture == "" {
		return nil, fmt.Errorf("%w: platform %q: want os/arch[/variant], such as linux/arm64", importer.ErrInvalidOptions, s.Platform)
	}
	s.platform = *p
	switch {
	case s.Fetch.Connections < 0 || s.Fetch.Connections > 64:
		return nil, fmt.Errorf("%w: %d connections: want 1 to 64", importer.ErrInvalidOptions, s.Fetch.Connections)
	case s.Fetch.Connections == 0:
		s.Fetch.Connections = DefaultConnections
	}
	switch {
	case s.Fetch.ChunkSize < 0 || s.Fetch.ChunkSize > 0 && s.Fetch.ChunkSize < 64<<10 || s.Fetch.ChunkSize > 1<<30:
		return nil, fmt.Errorf("%w: chunk size %d: want 64 KiB to 1 GiB", importer.ErrInvalidOptions, s.Fetch.ChunkSize)
	case s.Fetch.ChunkSize == 0:
		s.Fetch.ChunkSize = DefaultChunkSize
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
	if s.Keychain == nil {
		s.Keychain = authn.DefaultKeychain
	}
	if s.Transport == nil {
		t, err := NewTransport("", false)
		if err != nil {
			return nil, err
		}
		s.Transport = t
	}
	if s.Stdout == nil {
		s.Stdout = os.Stdout
	}
	if s.Fetch.OnRetry == nil {
		logger, display := s.Logger, s.display
		s.Fetch.OnRetry = func(offset int64, err error) {
			logger.Warn("layer read failed; resuming", "source", display, "offset", offset, "error", err)
		}
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
// checkpoint if the image has the same layer. A block device is written
// in place, every byte, and not resumed; a stream ("-") is written in
// order, every byte, and gets bytes before they are verified: its error
// tells whether they were right.
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
		Fetch:     s.Fetch,
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
		return nil, err
	}
	res.Seconds = time.Since(start).Seconds()
	if res.Seconds > 0 {
		res.MBPerSecond = float64(res.Size-res.ResumedFrom) / res.Seconds / 1e6
	}
	log.Info("exported", "output", s.Output, "size", res.Size, "resumed_from", res.ResumedFrom,
		"seconds", res.Seconds, "mb_per_second", res.MBPerSecond)
	return res, nil
}

// toStream writes the disk, in order, to w, named what in errors.
func (e *exporter) toStream(ctx context.Context, w io.Writer, what string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r, err := e.d.Reader(ctx)
	if err != nil {
		return sourceError(e.s.display, err)
	}
	defer r.Close()
	_, err = e.pump(ctx, cancel, r, nil, 0, &streamOut{w: w, what: what})
	return err
}

// toDevice writes every byte of the disk over the start of the existing
// file that is not a regular one (a block device), in order.
func (e *exporter) toDevice(ctx context.Context) error {
	f, err := os.OpenFile(e.s.Output, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrOutput, err)
	}
	defer f.Close()
	e.log.Info("the output is not a regular file: writing every byte in place, without resume", "output", e.s.Output)
	if err := e.toStream(ctx, f, e.s.Output); err != nil {
		if errors.Is(err, blob.ErrDigest) {
			return fmt.Errorf("%w; %s holds the unverified bytes", err, e.s.Output)
		}
		return err
	}
	// Character devices such as /dev/null cannot be synced.
	if err := f.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("%w: syncing %s: %w", ErrOutput, e.s.Output, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("%w: %w", ErrOutput, err)
	}
	return nil
}
