// Package importer moves a disk image from a URL or a file into an OCI
// registry in one pass: the source is read once, wrapped on the way in an
// uncompressed tar layer (package layer) whose digest is computed as it
// streams, and pushed over a TLS connection pinned to AES-GCM. Nothing is
// spooled to disk. The tag is written last, after the layer blob was
// committed, so a failed import never leaves a tag pointing at a partial
// image.
package importer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/diskimporter/diskimporter/importer/detect"
	"github.com/diskimporter/diskimporter/layer"
)

// Result describes a finished import. It is printed as one JSON line.
type Result struct {
	// Destination is the tag that was written.
	Destination string `json:"destination"`
	// Reference is the destination pinned by manifest digest.
	Reference      string `json:"reference"`
	ManifestDigest string `json:"manifest_digest"`
	LayerDigest    string `json:"layer_digest"`
	LayerSize      int64  `json:"layer_size"`
	// DiskPath is the disk's path inside the image, such as disk/disk.img.
	DiskPath string `json:"disk_path"`
	// Format is the detected disk format: raw, iso, ...
	Format string `json:"format"`
	// Size is the disk's size in bytes.
	Size int64 `json:"size"`
	// Source is the source with credentials and query string removed.
	Source string `json:"source"`
	// SourceSHA256 is the sha256 of the source bytes as read.
	SourceSHA256 string  `json:"source_sha256"`
	Seconds      float64 `json:"seconds"`
	// MBPerSecond is Size / Seconds in units of 10^6 bytes.
	MBPerSecond float64 `json:"mb_per_second"`
	// TLSVersion and TLSCipherSuite are those negotiated with the registry
	// (empty over plain http).
	TLSVersion     string `json:"tls_version,omitempty"`
	TLSCipherSuite string `json:"tls_cipher_suite,omitempty"`
}

// Annotation keys written on the image manifest.
const (
	AnnotationSource       = "io.diskimporter.source"
	AnnotationSourceSHA256 = "io.diskimporter.source.sha256"
	AnnotationFormat       = "io.diskimporter.disk.format"
	AnnotationSize         = "io.diskimporter.disk.size"
	AnnotationDiskPath     = "io.diskimporter.disk.path"
)

// Run imports o.Source into o.Destination and returns what it wrote. On
// error nothing was tagged.
func Run(ctx context.Context, o Options) (*Result, error) {
	s, err := o.settings()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	log := s.Logger.With("destination", s.ref.Name())
	var prog tracker
	prog.enter(PhaseDownloading, 0)
	progCtx, stopProgress := context.WithCancel(ctx)
	reporting := make(chan struct{})
	go func() {
		defer close(reporting)
		prog.report(progCtx, log, s.ProgressInterval, s.OnProgress)
	}()
	res, err := run(ctx, s, log, &prog)
	stopProgress()
	<-reporting // OnProgress is never called twice at once
	final := prog.snapshot()
	final.Phase = PhaseDone
	if err != nil {
		final.Phase = PhaseFailed
	}
	if s.OnProgress != nil {
		s.OnProgress(final)
	}
	if err != nil {
		return nil, err
	}
	took := time.Since(start).Seconds()
	res.Seconds = round(took)
	res.MBPerSecond = round(float64(res.Size) / took / 1e6)
	log.Info("imported", "reference", res.Reference, "seconds", res.Seconds, "mb_per_second", res.MBPerSecond)
	return res, nil
}

// run is Run after the options were checked.
func run(ctx context.Context, s *settings, log *slog.Logger, prog *tracker) (*Result, error) {

	var tlsSeen tlsState
	rt, err := registryTransport(s, &tlsSeen)
	if err != nil {
		return nil, err
	}
	registry := s.ref.RegistryStr()
	pusher, err := remote.NewPusher(remote.WithContext(ctx), remote.WithTransport(rt), remote.WithAuthFromKeychain(s.Keychain), remote.WithRetryPredicate(retryable))
	if err != nil {
		return nil, err
	}
	// Fail on credentials and TLS before a byte of the source moves.
	if err := remote.CheckPushPermission(s.ref, s.Keychain, rt); err != nil {
		return nil, registryError("checking push permission", registry, err)
	}

	src, rc, err := openSource(ctx, s)
	if err != nil {
		return nil, err
	}
	log = log.With("source", src.display)
	var digest sourceDigest
	prog.enter(PhasePushing, src.size)
	metered := newMeteredReader(rc, src, &prog.bytes)
	head := bufio.NewReaderSize(metered, 64<<10)
	peek, err := head.Peek(detect.HeadSize)
	if err != nil && err != io.EOF && err != bufio.ErrBufferFull {
		metered.Close()
		return nil, fmt.Errorf("%w: reading the first bytes of %s: %w", ErrSourceUnavailable, src.display, err)
	}
	format, err := checkFormat(peek)
	if err != nil {
		metered.Close()
		return nil, fmt.Errorf("%s: %w", src.display, err)
	}
	diskName := s.DiskName
	if diskName == "" {
		diskName = defaultDiskName(format)
	}
	log.Info("importing", "format", format, "size", src.size)

	l, err := layer.New(readCloser{head, metered}, src.size,
		layer.WithDiskName(diskName),
		layer.WithMediaType(layerMediaType(s.DockerMediaTypes)),
		layer.WithContentDigest(digest.record),
		layer.WithReopen(func() (io.ReadCloser, error) {
			log.Warn("reading the source again for an upload retry")
			rc, err := src.open(ctx)
			if err != nil {
				return nil, err
			}
			return newMeteredReader(rc, src, &prog.bytes), nil
		}),
	)
	if err != nil {
		metered.Close()
		return nil, fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}

	if err := pusher.Upload(ctx, s.ref.Repository, l); err != nil {
		return nil, uploadError(ctx, registry, err)
	}

	sum, changed := digest.get()
	if changed {
		return nil, fmt.Errorf("%w: %s gave different bytes on a second read", ErrSourceChanged, src.display)
	}
	desc := diskDescription{
		source: src.display, sha256: sum, format: format, size: src.size, path: l.DiskPath(),
	}
	img, err := newImage(s, l, desc)
	if err != nil {
		return nil, err
	}
	if err := pusher.Push(ctx, s.ref, img); err != nil {
		return nil, registryError("writing the manifest", registry, err)
	}

	res, err := result(s, img, l, desc)
	if err != nil {
		return nil, err
	}
	res.TLSVersion, res.TLSCipherSuite = tlsSeen.get()
	return res, nil
}

// readCloser reads from one reader and closes another.
type readCloser struct {
	io.Reader
	io.Closer
}

// checkFormat returns the disk format of a source starting with head, or an
// error for the formats this version does not import.
func checkFormat(head []byte) (detect.Format, error) {
	if c := detect.CompressionOf(head); c != detect.None {
		return "", fmt.Errorf("%w: the source is %s-compressed; decompress it first", ErrUnsupportedFormat, c)
	}
	switch f := detect.FormatOf(head); f {
	case detect.Raw, detect.ISO:
		return f, nil
	default:
		return "", fmt.Errorf("%w: the source is a %s image; convert it to raw first", ErrUnsupportedFormat, f)
	}
}

func defaultDiskName(f detect.Format) string {
	if f == detect.Raw {
		return layer.DefaultDiskName
	}
	return "disk." + string(f)
}

// uploadError explains a failed layer upload, preferring the source's
// error when the source is what failed.
func uploadError(ctx context.Context, registry string, err error) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("import cancelled: %w", context.Cause(ctx))
	case errors.Is(err, ErrShortSource), errors.Is(err, ErrSourceUnavailable), errors.Is(err, ErrSourceChanged):
		return fmt.Errorf("reading the source: %w", err)
	}
	return registryError("uploading the disk layer", registry, err)
}
