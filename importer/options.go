package importer

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/diskimporter/diskimporter/importer/fetch"
	"github.com/diskimporter/diskimporter/importer/redact"
	"github.com/diskimporter/diskimporter/tlsconfig"
)

// ReadOptions say how the bytes of a remote object, an http(s) source or a
// registry blob, are read: by import, inspect and export alike. Their zero
// value rule is one for all: 0 is the command's default (DefaultConnections
// and DefaultChunkSize for an import, export.DefaultConnections and
// export.DefaultChunkSize for an export, DefaultRetries,
// DefaultStallTimeout); a negative Retries or StallTimeout means none or
// never.
type ReadOptions struct {
	// Connections is how many Range requests may read an object at once,
	// when the server answers them and the object has a length and an
	// ETag or Last-Modified (or is content-addressed); 1 reads one
	// stream. A read starts with two and has more only while they make it
	// faster (package fetch). Memory for reassembly is at most
	// Connections × ChunkSize. 1 to 64; zero: the command's default.
	Connections int

	// ChunkSize is the length of each Range request, 64 KiB to 1 GiB.
	// Zero: the command's default (an import reads a compressed source
	// in CompressedChunkSize pieces).
	ChunkSize int64

	// Retries is how many failures in a row (a dropped or stalled
	// connection, a 5xx, 408 or 429 answer, an answer with the wrong
	// bytes) reading the object, or uploading to the registry, are retried
	// before the command fails; a read resumes where it stopped. Zero:
	// DefaultRetries; negative: none.
	Retries int

	// StallTimeout drops a response that gives no byte (or no headers)
	// for this long, and resumes it; a registry connection that takes no
	// byte this long fails the request. Zero: DefaultStallTimeout;
	// negative: never.
	StallTimeout time.Duration

	// RetryWait is the first wait before a retry; it doubles on each
	// failure in a row, up to 10 s. Zero: 250 ms.
	RetryWait time.Duration

	// OnRetry, when set, is told of every retry: a read resumed (from
	// several goroutines at once when the object is read in parallel
	// pieces) or the layer upload started again. It should return
	// quickly.
	OnRetry func(Retry)
}

// Validate applies the defaults defConnections and defChunkSize, and those
// of the other fields, to r's zero fields (see ReadOptions), and refuses
// values out of range with an error wrapping ErrInvalidOptions that names
// the field.
func (r *ReadOptions) Validate(defConnections int, defChunkSize int64) error {
	switch {
	case r.Connections < 0 || r.Connections > 64:
		return fmt.Errorf("%w: Connections %d: want 1 to 64", ErrInvalidOptions, r.Connections)
	case r.Connections == 0:
		r.Connections = defConnections
	}
	switch {
	case r.ChunkSize < 0 || r.ChunkSize > 0 && r.ChunkSize < MinChunkSize || r.ChunkSize > MaxChunkSize:
		return fmt.Errorf("%w: ChunkSize %d: want 64 KiB to 1 GiB", ErrInvalidOptions, r.ChunkSize)
	case r.ChunkSize == 0:
		r.ChunkSize = defChunkSize
	}
	switch {
	case r.Retries < 0:
		r.Retries = 0
	case r.Retries == 0:
		r.Retries = DefaultRetries
	}
	switch {
	case r.StallTimeout < 0:
		r.StallTimeout = 0
	case r.StallTimeout == 0:
		r.StallTimeout = DefaultStallTimeout
	}
	if r.RetryWait < 0 {
		return fmt.Errorf("%w: RetryWait %s is negative", ErrInvalidOptions, r.RetryWait)
	}
	return nil
}

// FetchOptions are r, validated, as package fetch takes them; retries are
// logged to logger as about display.
func (r ReadOptions) FetchOptions(logger *slog.Logger, display string) fetch.Options {
	return fetch.Options{
		Connections:  r.Connections,
		ChunkSize:    r.ChunkSize,
		Retries:      r.Retries,
		StallTimeout: r.StallTimeout,
		RetryWait:    r.RetryWait,
		OnLevel: func(pieces int) {
			logger.Info("source read faster with more connections; keeping them", "source", display, "connections", pieces)
		},
		OnRetry: func(offset int64, err error) {
			logger.Warn("source read failed; resuming", "source", display, "offset", offset, "error", err)
			if r.OnRetry != nil {
				r.OnRetry(Retry{Stage: RetrySource, Offset: offset, Err: err})
			}
		},
	}
}

// SourceOptions say where an import's or an inspection's source is and how
// to reach it. Options and InspectOptions embed them, so that both read a
// source the same way.
type SourceOptions struct {
	// Source is the disk image: an http:// or https:// URL, a file:// URL,
	// a local path, or docker://REGISTRY/REPO:TAG (or @sha256:…), the disk
	// of a containerDisk image. Required. A string with "://" that does
	// not parse as a URL is refused, never taken for a path.
	Source string

	// SourceHeaders are sent with every request for an http(s) source (a
	// bearer token, a cookie), to the source's origin only: never to
	// another origin a redirect leads to. They are never logged. Nil:
	// none.
	SourceHeaders http.Header

	// SourceUsername and SourcePassword authenticate to a docker://
	// source. Empty: SourceKeychain is asked (never the destination's
	// Username).
	SourceUsername, SourcePassword string

	// SourceKeychain gives a docker:// source its credentials when
	// SourceUsername is empty. Nil: for an import, the registry's
	// Keychain; for an inspection, the Docker config keychain.
	SourceKeychain authn.Keychain

	// SourceCAFile is a PEM bundle trusted for an https:// or docker://
	// source in addition to the system roots. Empty: system roots only.
	SourceCAFile string

	// SourceInsecureSkipVerify turns off certificate verification of the
	// source. False: verify.
	SourceInsecureSkipVerify bool

	// SourcePlainHTTP allows plain http to a docker:// source's registry.
	// False: https only, on loopback too.
	SourcePlainHTTP bool

	// Platform picks the image of a docker:// index, and is the platform
	// of the image an import writes, os/arch[/variant]. Empty:
	// linux/amd64.
	Platform string

	// ReadOptions say how the source's bytes are read.
	ReadOptions
}

// RegistryOptions say how to reach a registry that a command writes to
// (import's destination) or reads an image from (export's source).
type RegistryOptions struct {
	// RegistryTLS configures the registry connection, which is pinned to
	// AES-GCM for a push. Zero: system roots, TLS 1.2.
	RegistryTLS tlsconfig.Options

	// PlainHTTP allows talking to the registry without TLS. False: every
	// registry request goes over https, including to loopback and private
	// addresses, where go-containerregistry would otherwise fall back to
	// plain http.
	PlainHTTP bool

	// HTTP2 lets a push use HTTP/2 when the registry offers it. False:
	// HTTP/1.1, which costs 10-20% less CPU per GiB than HTTP/2 for one
	// long upload, and is faster under a CPU limit.
	HTTP2 bool

	// Username and Password authenticate to the registry. Empty: the
	// Keychain is asked.
	Username, Password string

	// Keychain resolves registry credentials when Username is empty. Nil:
	// the Docker config keychain (authn.DefaultKeychain).
	Keychain authn.Keychain
}

// Validate applies the defaults of r's zero fields and refuses a password
// without a user name.
func (r *RegistryOptions) Validate() error {
	var err error
	r.Keychain, err = credentials(r.Username, r.Password, r.Keychain, "")
	return err
}

// credentials is the keychain of user and password, or keychain (nil: the
// Docker config keychain) when user is empty; a password without a user
// is refused, naming the fields with prefix.
func credentials(user, password string, keychain authn.Keychain, prefix string) (authn.Keychain, error) {
	switch {
	case user != "":
		return staticKeychain{authn.FromConfig(authn.AuthConfig{Username: user, Password: password})}, nil
	case password != "":
		return nil, fmt.Errorf("%w: a %sPassword was given without a %sUsername", ErrInvalidOptions, prefix, prefix)
	case keychain == nil:
		return authn.DefaultKeychain, nil
	}
	return keychain, nil
}

// Options configures one import. The zero value of every field but Source
// and Destination is a usable default, stated on the field.
type Options struct {
	// SourceOptions say where the source is and how it is read.
	SourceOptions

	// Destination is the image reference to push to, REGISTRY/REPO:TAG.
	// Required. A reference without a tag gets "latest"; a digest
	// reference is refused, since the manifest is made by the import.
	Destination string

	// RegistryOptions say how to reach the destination's registry.
	RegistryOptions

	// DiskName is the file name of the disk inside disk/. Empty: "disk"
	// with an extension for the detected format (disk.img, disk.iso).
	DiskName string

	// Format, when set, is the disk format the source must have (raw,
	// qcow2, iso); another is an error wrapping ErrFormatMismatch. Empty:
	// any format diskimporter imports.
	Format string

	// ConvertRaw turns a qcow2 image into the raw disk it describes. It
	// reads the image at random, through HTTP Range requests when the
	// source answers them, otherwise from a spool. False: a qcow2 is
	// stored as a qcow2.
	ConvertRaw bool

	// Checksums are expected digests of the source as downloaded, all
	// verified before the tag is written. Empty: none.
	Checksums []Checksum

	// SkipExisting makes a re-run idempotent: when the destination tag
	// already holds an image made with the same settings whose
	// annotations record one of the Checksums, Run returns its Result
	// (Skipped set) without reading the source or uploading. It needs
	// Checksums. False: always import.
	SkipExisting bool

	// DiskSHA256 computes the sha256 of the disk, and of the download when
	// it differs (a compressed or converted source), for the result and
	// the image's annotations. It costs a second sha256 pass over the
	// bytes, about as much CPU as the rest of the import: the layer digest
	// already identifies the disk. False: computed only when an expected
	// sha256 checksum needs it.
	DiskSHA256 bool

	// MaxSize is the largest disk accepted, in bytes, after decompression;
	// enforced while streaming. Zero: 2 TiB.
	MaxSize int64

	// MaxVirtualSize is the largest virtual size a qcow2 image may
	// declare. Zero: MaxSize.
	MaxVirtualSize uint64

	// ScratchDir is where a disk whose size cannot be told up front (a
	// gzip or bzip2 source, a zstd frame without its size, a source
	// without a length) is spooled. The spool is removed when the import
	// ends. Empty: os.TempDir().
	ScratchDir string

	// DockerMediaTypes writes a Docker v2 schema 2 manifest and layer media
	// type instead of OCI ones. False: OCI.
	DockerMediaTypes bool

	// CheckpointFile, when set, is a file where the layer upload's
	// location and hash checkpoints are kept as it goes: a later run with
	// the same source, destination and settings goes on with that upload
	// where the registry stands instead of starting over. The file holds
	// no credential (none is written when the upload's location would);
	// it is removed once the layer is committed. Empty: none.
	CheckpointFile string

	// CheckpointInterval is how many bytes of the layer go by between two
	// checkpoints of its hash, from which an upload that failed goes on
	// where the registry stands (at most this many bytes are read again
	// from the source). Zero: DefaultCheckpointInterval.
	CheckpointInterval int64

	// ProgressInterval is how often progress is logged. Zero: 5s.
	ProgressInterval time.Duration

	// Logger receives progress and stage logs. Nil: slog.Default().
	Logger *slog.Logger

	// OnProgress, when set, is called with a snapshot every
	// ProgressInterval and once more at the end, with PhaseDone or
	// PhaseFailed. Calls come from one goroutine at a time and should
	// return quickly: a slow OnProgress delays the next report, never the
	// byte path.
	OnProgress func(Progress)
}

// Defaults of the Options fields whose zero value means "the default".
const (
	DefaultConnections = 4
	DefaultChunkSize   = 8 << 20
	// CompressedChunkSize is the default ChunkSize of a compressed
	// source: its decoder, not the network, sets the pace, and with
	// DefaultChunkSize the pieces held 32 MiB beside the decoder's own
	// memory (an xz import's peak RSS went from 231 to 147 MiB).
	CompressedChunkSize = 2 << 20
	DefaultRetries      = 5
	DefaultStallTimeout = 60 * time.Second

	DefaultCheckpointInterval = 64 << 20
)

// The bounds of ReadOptions.ChunkSize.
const (
	MinChunkSize = 64 << 10
	MaxChunkSize = 1 << 30
)

// settings are Options after defaults and validation.
type settings struct {
	Options
	// chunkSizeGiven: ChunkSize was not zero, the default.
	chunkSizeGiven bool
	ref            name.Tag
	platform       v1.Platform
	// sourceKeychain gives a docker:// source its credentials.
	sourceKeychain authn.Keychain
}

func (o Options) settings() (*settings, error) {
	s := &settings{Options: o}
	if o.Destination == "" {
		return nil, fmt.Errorf("%w: no Destination given", ErrInvalidOptions)
	}
	if s.SourceKeychain == nil {
		// The Keychain given, never the destination's Username.
		s.SourceKeychain = s.Keychain
	}
	if err := s.RegistryOptions.Validate(); err != nil {
		return nil, err
	}
	if err := s.checkSource(DefaultConnections, DefaultChunkSize); err != nil {
		return nil, err
	}
	if strings.Contains(o.Destination, "@") {
		return nil, fmt.Errorf("%w: Destination %q is a digest reference; give REGISTRY/REPO:TAG, the digest is made by the import", ErrInvalidDestination, redact.Text(o.Destination))
	}
	var nameOpts []name.Option
	if o.PlainHTTP {
		nameOpts = append(nameOpts, name.Insecure)
	}
	ref, err := name.NewTag(o.Destination, nameOpts...)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w (want REGISTRY/REPO:TAG, such as registry.example:5000/disks/fedora:41)", ErrInvalidDestination, redact.Text(o.Destination), err)
	}
	s.ref = ref
	if err := s.checkImport(); err != nil {
		return nil, err
	}
	if s.ScratchDir == "" {
		s.ScratchDir = os.TempDir()
	}
	if s.ProgressInterval <= 0 {
		s.ProgressInterval = 5 * time.Second
	}
	return s, nil
}

// checkImport checks the fields that shape the image an import writes.
func (s *settings) checkImport() error {
	if s.DiskName != "" && (strings.ContainsAny(s.DiskName, "/\\\x00") || s.DiskName == "." || s.DiskName == "..") {
		return fmt.Errorf("%w: DiskName %q must be a plain file name", ErrInvalidOptions, s.DiskName)
	}
	switch s.Format {
	case "", "raw", "qcow2", "iso":
	default:
		return fmt.Errorf("%w: Format %q: want raw, qcow2 or iso", ErrInvalidOptions, s.Format)
	}
	if s.MaxSize < 0 {
		return fmt.Errorf("%w: MaxSize %d is negative", ErrInvalidOptions, s.MaxSize)
	}
	if s.MaxSize == 0 {
		s.MaxSize = defaultMaxSize
	}
	if s.MaxVirtualSize == 0 {
		s.MaxVirtualSize = uint64(s.MaxSize)
	}
	if s.SkipExisting && len(s.Checksums) == 0 {
		return errSkipNeedsChecksum
	}
	switch {
	case s.CheckpointInterval < 0:
		return fmt.Errorf("%w: CheckpointInterval %d is negative", ErrInvalidOptions, s.CheckpointInterval)
	case s.CheckpointInterval == 0:
		s.CheckpointInterval = DefaultCheckpointInterval
	}
	return nil
}

// checkSource applies the defaults and checks of the SourceOptions, shared
// by an import and an inspection: the source itself, the read options
// (with the defaults defConnections and defChunkSize), the platform, the
// source headers, the logger, and the source's credentials.
func (s *settings) checkSource(defConnections int, defChunkSize int64) error {
	if err := CheckSource(s.Source); err != nil {
		return err
	}
	s.chunkSizeGiven = s.ChunkSize != 0
	if err := s.ReadOptions.Validate(defConnections, defChunkSize); err != nil {
		return err
	}
	var err error
	if s.platform, err = ParsePlatform(s.Platform, "linux/amd64"); err != nil {
		return err
	}
	for name := range s.SourceHeaders {
		if name == "" || strings.ContainsAny(name, " :\r\n") || http.CanonicalHeaderKey(name) == "Host" {
			return fmt.Errorf("%w: SourceHeaders: header name %q", ErrInvalidOptions, name)
		}
	}
	if s.Logger == nil {
		s.Logger = slog.Default()
	}
	s.sourceKeychain, err = credentials(s.SourceUsername, s.SourcePassword, s.SourceKeychain, "Source")
	return err
}

// CheckSource refuses a source that is empty, or that looks like a URL
// (it has "://") but does not parse as one: it must not be taken for a
// local path. The error shows the source redacted.
func CheckSource(source string) error {
	if source == "" {
		return fmt.Errorf("%w: no Source given", ErrInvalidOptions)
	}
	if !strings.Contains(source, "://") {
		return nil
	}
	u, err := url.Parse(source)
	if err == nil && u.Scheme == "docker" {
		return checkDockerSource(u, source)
	}
	if err == nil && u.Scheme != "" && (u.Host != "" || u.Scheme == "file") {
		return nil
	}
	why := "it has no host"
	var uerr *url.Error
	if errors.As(err, &uerr) {
		why = uerr.Err.Error() // its text holds the whole URL
	}
	return fmt.Errorf("%w: Source %s looks like a URL but does not parse (%s): fix or percent-encode it",
		ErrInvalidOptions, redact.Text(source), redact.Text(why))
}

// checkDockerSource refuses a docker:// source with credentials in it or
// that is no image reference, without echoing it: the error of the
// reference parser holds the whole reference.
func checkDockerSource(u *url.URL, source string) error {
	if u.User != nil {
		return fmt.Errorf("%w: Source %s holds credentials: give them in SourceUsername and SourcePassword", ErrInvalidOptions, redact.URL(source))
	}
	if _, err := name.ParseReference(strings.TrimPrefix(source, "docker://")); err != nil {
		return fmt.Errorf("%w: Source %s is not an image reference: want docker://REGISTRY/REPO:TAG or docker://REGISTRY/REPO@sha256:<64 hex digits>", ErrInvalidOptions, redact.URL(source))
	}
	return nil
}

// staticKeychain answers every registry with the same credentials.
type staticKeychain struct{ auth authn.Authenticator }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) { return k.auth, nil }

// Redact returns rawURL without user info and with any query string
// replaced, so that credentials and presigned signatures never reach a log
// line, an error or an annotation; it is redact.URL.
func Redact(rawURL string) string { return redact.URL(rawURL) }
