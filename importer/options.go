package importer

import (
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

	"github.com/diskimporter/diskimporter/tlsconfig"
)

// Options configures one import. The zero value of every field but Source
// and Destination is a usable default, stated on the field.
type Options struct {
	// Source is the disk image: an http:// or https:// URL, a file:// URL,
	// a local path, or docker://REGISTRY/REPO:TAG (or @sha256:…), the disk
	// of a containerDisk image. Required.
	Source string

	// SourceHeaders are sent with every request for an http(s) source (a
	// bearer token, a cookie), to the source's origin only: never to
	// another origin a redirect leads to. They are never logged. Nil:
	// none.
	SourceHeaders http.Header

	// SourceUsername and SourcePassword authenticate to a docker:// source.
	// Empty: Keychain is asked (never the destination's Username).
	SourceUsername, SourcePassword string

	// Destination is the image reference to push to, REGISTRY/REPO:TAG.
	// Required. A reference without a tag gets "latest"; a digest
	// reference is refused, since the manifest is made by the import.
	Destination string

	// SourceCAFile is a PEM bundle trusted for an https:// source in
	// addition to the system roots. Empty: system roots only.
	SourceCAFile string

	// SourceInsecureSkipVerify turns off certificate verification of an
	// https:// source. False: verify.
	SourceInsecureSkipVerify bool

	// Connections is how many Range requests read an http(s) source at
	// once, when it answers them and has a length and an ETag or
	// Last-Modified; 1 reads one stream. Memory for reassembly is
	// Connections × ChunkSize. Zero: DefaultConnections.
	Connections int

	// ChunkSize is the length of each Range request. Zero:
	// DefaultChunkSize.
	ChunkSize int64

	// Retries is how many failures in a row (a dropped or stalled
	// connection, a 5xx, 408 or 429 answer) reading the source, or
	// uploading to the registry, are retried before the import fails; a
	// source read resumes where it stopped. Zero: DefaultRetries;
	// negative: none.
	Retries int

	// StallTimeout drops a source response that gives no byte for this
	// long, and resumes it. Zero: DefaultStallTimeout; negative: never.
	StallTimeout time.Duration

	// RegistryTLS configures the registry connection, which is always
	// pinned to AES-GCM. Zero: system roots, TLS 1.2.
	RegistryTLS tlsconfig.Options

	// PlainHTTP allows talking to the registry without TLS. False: every
	// registry request goes over https, including to loopback and private
	// addresses, where go-containerregistry would otherwise fall back to
	// plain http.
	PlainHTTP bool

	// HTTP2 lets the registry connection use HTTP/2 when the registry
	// offers it. False: HTTP/1.1, which costs 10-20% less CPU per GiB
	// than HTTP/2 for one long upload (it has no framing or flow
	// control to pay for), and is faster under a CPU limit.
	HTTP2 bool

	// Username and Password authenticate to the registry. Empty: the
	// Keychain is asked.
	Username, Password string

	// Keychain resolves registry credentials when Username is empty. Nil:
	// the Docker config keychain (authn.DefaultKeychain).
	Keychain authn.Keychain

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

	// Platform is the image platform, os/arch[/variant]. Empty:
	// linux/amd64.
	Platform string

	// DockerMediaTypes writes a Docker v2 schema 2 manifest and layer media
	// type instead of OCI ones. False: OCI.
	DockerMediaTypes bool

	// ProgressInterval is how often progress is logged. Zero: 5s.
	ProgressInterval time.Duration

	// Logger receives progress and stage logs. Nil: slog.Default().
	Logger *slog.Logger

	// OnRetry, when set, is told of every retry: a source read resumed
	// (from several goroutines at once when the source is read in
	// parallel pieces) or the layer upload started again. It should return
	// quickly.
	OnRetry func(Retry)

	// OnProgress, when set, is called with a snapshot every
	// ProgressInterval and once more at the end, with PhaseDone or
	// PhaseFailed. Calls come from one goroutine at a time and should
	// return quickly: a slow OnProgress delays the next report, never the
	// byte path.
	OnProgress func(Progress)
}

// Defaults of the Options fields whose zero value means "the default".
const (
	DefaultConnections  = 4
	DefaultChunkSize    = 8 << 20
	DefaultRetries      = 5
	DefaultStallTimeout = 60 * time.Second
)

// settings are Options after defaults and validation.
type settings struct {
	Options
	ref      name.Tag
	platform v1.Platform
	// sourceKeychain gives a docker:// source its credentials.
	sourceKeychain authn.Keychain
}

func (o Options) settings() (*settings, error) {
	s := &settings{Options: o}
	if o.Source == "" {
		return nil, fmt.Errorf("%w: no source given", ErrInvalidOptions)
	}
	if o.Destination == "" {
		return nil, fmt.Errorf("%w: no destination given", ErrInvalidOptions)
	}
	if strings.Contains(o.Destination, "@") {
		return nil, fmt.Errorf("%w: destination %q is a digest reference; give REGISTRY/REPO:TAG, the digest is made by the import", ErrInvalidDestination, o.Destination)
	}
	var nameOpts []name.Option
	if o.PlainHTTP {
		nameOpts = append(nameOpts, name.Insecure)
	}
	ref, err := name.NewTag(o.Destination, nameOpts...)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w (want REGISTRY/REPO:TAG, such as registry.example:5000/disks/fedora:41)", ErrInvalidDestination, o.Destination, err)
	}
	s.ref = ref

	if s.Keychain == nil {
		s.Keychain = authn.DefaultKeychain
	}
	if err := s.checkSource(s.Keychain); err != nil {
		return nil, err
	}

	if s.DiskName != "" && (strings.ContainsAny(s.DiskName, "/\\\x00") || s.DiskName == "." || s.DiskName == "..") {
		return nil, fmt.Errorf("%w: disk name %q must be a plain file name", ErrInvalidOptions, s.DiskName)
	}
	switch s.Format {
	case "", "raw", "qcow2", "iso":
	default:
		return nil, fmt.Errorf("%w: format %q: want raw, qcow2 or iso", ErrInvalidOptions, s.Format)
	}
	if s.MaxSize < 0 {
		return nil, fmt.Errorf("%w: max size %d is negative", ErrInvalidOptions, s.MaxSize)
	}
	if s.MaxSize == 0 {
		s.MaxSize = 2 << 40
	}
	if s.MaxVirtualSize == 0 {
		s.MaxVirtualSize = uint64(s.MaxSize)
	}
	if s.SkipExisting && len(s.Checksums) == 0 {
		return nil, errSkipNeedsChecksum
	}
	switch {
	case s.Connections < 0 || s.Connections > 64:
		return nil, fmt.Errorf("%w: %d connections: want 1 to 64", ErrInvalidOptions, s.Connections)
	case s.Connections == 0:
		s.Connections = DefaultConnections
	}
	switch {
	case s.ChunkSize < 0 || s.ChunkSize > 0 && s.ChunkSize < 64<<10 || s.ChunkSize > 1<<30:
		return nil, fmt.Errorf("%w: chunk size %d: want 64 KiB to 1 GiB", ErrInvalidOptions, s.ChunkSize)
	case s.ChunkSize == 0:
		s.ChunkSize = DefaultChunkSize
	}
	switch {
	case s.Retries < 0:
		s.Retries = 0
	case s.Retries == 0:
		s.Retries = DefaultRetries
	}
	switch {
	case s.StallTimeout < 0:
		s.StallTimeout = 0
	case s.StallTimeout == 0:
		s.StallTimeout = DefaultStallTimeout
	}
	if s.ScratchDir == "" {
		s.ScratchDir = os.TempDir()
	}
	if s.ProgressInterval <= 0 {
		s.ProgressInterval = 5 * time.Second
	}
	if s.Username != "" {
		s.Keychain = staticKeychain{authn.FromConfig(authn.AuthConfig{Username: s.Username, Password: s.Password})}
	} else if s.Password != "" {
		return nil, fmt.Errorf("%w: a password was given without a username", ErrInvalidOptions)
	}
	return s, nil
}

// checkSource applies the defaults and checks of the fields that concern
// the source, shared by an import and an inspection: the platform, the
// source headers, the logger, and the source's credentials (from
// SourceUsername, or keychain).
func (s *settings) checkSource(keychain authn.Keychain) error {
	if s.Platform == "" {
		s.Platform = "linux/amd64"
	}
	p, err := v1.ParsePlatform(s.Platform)
	if err != nil || p.OS == "" || p.Architecture == "" {
		return fmt.Errorf("%w: platform %q: want os/arch[/variant], such as linux/arm64", ErrInvalidOptions, s.Platform)
	}
	s.platform = *p
	for name := range s.SourceHeaders {
		if name == "" || strings.ContainsAny(name, " :\r\n") || http.CanonicalHeaderKey(name) == "Host" {
			return fmt.Errorf("%w: source header name %q", ErrInvalidOptions, name)
		}
	}
	if s.Logger == nil {
		s.Logger = slog.Default()
	}
	s.sourceKeychain = keychain
	if s.SourceUsername != "" {
		s.sourceKeychain = staticKeychain{authn.FromConfig(authn.AuthConfig{Username: s.SourceUsername, Password: s.SourcePassword})}
	} else if s.SourcePassword != "" {
		return fmt.Errorf("%w: a source password was given without a source username", ErrInvalidOptions)
	}
	return nil
}

// staticKeychain answers every registry with the same credentials.
type staticKeychain struct{ auth authn.Authenticator }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) { return k.auth, nil }

// Redact returns rawURL without user info and with any query string
// replaced, so that credentials and presigned signatures never reach a log
// line, an error or an annotation. A string that is not a URL is returned
// as is.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return rawURL
	}
	u.User = nil
	if u.RawQuery != "" {
		u.RawQuery = "REDACTED"
	}
	u.Fragment = ""
	return u.String()
}
