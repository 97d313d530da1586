// Package importer moves a disk image from a URL or a file into an OCI
// registry in one pass: the source is read once, wrapped on the way in an
// uncompressed tar layer (package layer) whose digest is computed as it
// streams, and pushed over a TLS connection pinned to AES-GCM. Nothing is
// spooled to disk. The tag is written last, after the layer blob was
// committed, so a failed import never leaves a tag pointing at a partial
// image.
package importer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"

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
	// SourceSHA256 is the sha256 of the source bytes as downloaded; empty
	// unless Options.DiskSHA256 was set or an expected sha256 needed it,
	// and when a qcow2 was converted through Range reads and never read
	// whole.
	SourceSHA256 string `json:"source_sha256,omitempty"`
	// Compression is the compression stripped from the source: none,
	// gzip, xz, zstd or bzip2.
	Compression string `json:"compression"`
	// SizeFrom tells how the disk's size was learned before its bytes:
	// content-length, xz-index, zstd-header, qcow2-header (--convert raw)
	// or spool.
	SizeFrom string `json:"size_from"`
	// DiskSHA256 is the sha256 of the disk as stored in the image (equal
	// to SourceSHA256 when the source is neither compressed nor
	// converted); empty unless Options.DiskSHA256 was set or an expected
	// sha256 of an uncompressed source made it known.
	DiskSHA256 string `json:"disk_sha256,omitempty"`
	// QCOW2 describes a qcow2 source; absent for other formats.
	QCOW2   *QCOW2Info `json:"qcow2,omitempty"`
	Seconds float64    `json:"seconds"`
	// MBPerSecond is Size / Seconds in units of 10^6 bytes; absent when
	// Skipped.
	MBPerSecond float64 `json:"mb_per_second,omitempty"`
	// TLSVersion and TLSCipherSuite are those negotiated with the registry
	// (empty over plain http).
	TLSVersion     string `json:"tls_version,omitempty"`
	TLSCipherSuite string `json:"tls_cipher_suite,omitempty"`
	// Resumes is how many times the layer upload failed and went on where
	// the registry stood (or started over); ResumedFrom is the layer byte
	// the last one went on from. Absent when the upload never failed.
	Resumes     int   `json:"resumes,omitempty"`
	ResumedFrom int64 `json:"resumed_from,omitempty"`
	// Skipped: the destination already held this source (SkipExisting),
	// and nothing was read or uploaded; the fields describe that image.
	Skipped bool `json:"skipped,omitempty"`
}

// QCOW2Info is what the qcow2 header says.
type QCOW2Info struct {
	Version         uint32 `json:"version"`
	VirtualSize     uint64 `json:"virtual_size"`
	ClusterSize     int64  `json:"cluster_size"`
	CompressionType string `json:"compression_type"`
}

// Annotation keys written on the image manifest (and as config labels).
const (
	AnnotationSource            = "io.diskimporter.source"
	AnnotationSourceSHA256      = "io.diskimporter.source.sha256"
	AnnotationSourceCompression = "io.diskimporter.source.compression"
	AnnotationFormat            = "io.diskimporter.disk.format"
	AnnotationSize              = "io.diskimporter.disk.size"
	AnnotationDiskPath          = "io.diskimporter.disk.path"
	AnnotationDiskSHA256        = "io.diskimporter.disk.sha256"
	AnnotationVirtualSize       = "io.diskimporter.disk.virtual-size"
	AnnotationQCOW2Version      = "io.diskimporter.qcow2.version"
	AnnotationQCOW2ClusterSize  = "io.diskimporter.qcow2.cluster-size"
	AnnotationQCOW2Compression  = "io.diskimporter.qcow2.compression-type"
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
	if res.Skipped {
		return res, nil // nothing moved: no throughput
	}
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
	pusher, err := remote.NewPusher(remote.WithContext(ctx), remote.WithTransport(rt),
		remote.WithAuthFromKeychain(s.Keychain), remote.WithRetryPredicate(retryable),
		remote.WithRetryBackoff(remote.Backoff{Duration: time.Second, Factor: 3, Jitter: 0.1, Steps: s.Retries + 1, Cap: time.Minute}))
	if err != nil {
		return nil, err
	}
	// Fail on credentials and TLS before a byte of the source moves.
	if err := checkPushPermission(ctx, s.ref, s.Keychain, rt); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("import cancelled while checking push permission on %s: %w", registry, context.Cause(ctx))
		}
		return nil, registryError("checking push permission", registry, err)
	}

	if s.SkipExisting {
		res, err := existing(ctx, s, rt)
		if err != nil {
			return nil, err
		}
		if res != nil {
			log.Info("the destination already holds this source; nothing to do", "reference", res.Reference)
			res.TLSVersion, res.TLSCipherSuite = tlsSeen.get()
			return res, nil
		}
	}

	// Cancelling srcCtx ends a read of the source in progress, for a
	// reader on a goroutine of its own to be joined when the disk closes.
	srcCtx, interrupt := context.WithCancel(ctx)
	defer interrupt()
	src, rc, err := openSource(srcCtx, s)
	if err != nil {
		return nil, err
	}
	log = log.With("source", src.display)
	sums := newSourceSums(src, s.Checksums, s.DiskSHA256)
	d, err := openDisk(ctx, s, src, rc, interrupt, prog, sums)
	if err != nil {
		return nil, err
	}
	defer d.close()
	diskName := s.DiskName
	if diskName == "" {
		diskName = defaultDiskName(d.format)
	}
	log.Info("importing", "format", d.format, "compression", d.compression, "size", d.size, "size_from", d.sizeFrom)

	prog.enter(PhasePushing, d.size)
	layerOpts := []layer.Option{
		layer.WithDiskName(diskName),
		layer.WithMediaType(layerMediaType(s.DockerMediaTypes)),
	}
	if sums.hashDisk() {
		layerOpts = append(layerOpts, layer.WithContentDigest(sums.recordDisk))
	}
	var cps checkpoints
	layerOpts = append(layerOpts, layer.WithCheckpoints(s.CheckpointInterval, cps.add))
	l, err := layer.New(io.NopCloser(countingReader{d.r, &prog.bytes}), d.size, layerOpts...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	size, err := layer.TarSize(diskName, d.size)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	up, err := newLayerUpload(ctx, s, log, prog, rt, d, l, size)
	if err != nil {
		return nil, uploadError(ctx, registry, err)
	}
	up.cps, up.sums = &cps, sums
	if s.CheckpointFile != "" {
		up.attachFile(s.CheckpointFile, checkpointRecord{
			Version: checkpointVersion, Repository: s.ref.Context().Name(),
			Source: src.display, Validator: src.validator,
			Layer: layerIdentity{DiskName: diskName, DiskSize: d.size, Size: size, HashDisk: sums.hashDisk(),
				Format: string(d.format), Converted: s.ConvertRaw && d.qcow2 != nil && d.format == "raw"},
		})
	}
	if err := up.run(ctx); err != nil {
		return nil, uploadError(ctx, registry, err)
	}
	resumes, resumedFrom := up.resumes, up.from

	// Every check passes before the manifest, and so the tag, is written.
	downloadSHA256, diskSHA256, err := sums.result()
	if err != nil {
		return nil, err
	}
	desc := diskDescription{
		source: src.display, sourceSHA256: downloadSHA256, diskSHA256: diskSHA256,
		format: d.format, compression: d.compression, size: d.size, sizeFrom: d.sizeFrom,
		path: l.DiskPath(), qcow2: d.qcow2, checksums: s.Checksums, sourceDigest: src.digest,
	}
	img, err := newImage(s, l, desc)
	if err != nil {
		return nil, err
	}
	if err := pusher.Push(ctx, s.ref, img); err != nil {
		return nil, registryError("writing the manifest", registry, err)
	}
	if err := confirmTag(ctx, s, rt, img); err != nil {
		return nil, err
	}

	res, err := result(s, img, l, desc)
	if err != nil {
		return nil, err
	}
	res.TLSVersion, res.TLSCipherSuite = tlsSeen.get()
	res.Resumes, res.ResumedFrom = resumes, resumedFrom
	return res, nil
}

// readCloser reads from one reader and closes another.
type readCloser struct {
	io.Reader
	io.Closer
}

// uploadError explains a failed layer upload, preferring the source's
// error when the source is what failed.
func uploadError(ctx context.Context, registry string, err error) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("import cancelled: %w", context.Cause(ctx))
	case errors.Is(err, ErrShortSource), errors.Is(err, ErrSourceUnavailable), errors.Is(err, ErrSourceChanged),
		errors.Is(err, ErrCorruptSource), errors.Is(err, ErrTooLarge):
		// net/http wraps it with the upload URL, whose state token
		// means nothing to a user: drop that wrapper.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return fmt.Errorf("reading the source: %w", err)
	}
	return registryError("uploading the disk layer", registry, err)
}
