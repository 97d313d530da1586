package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/diskimporter/diskimporter/importer"
)

const importUsage = `Usage:
  diskimporter import SOURCE DESTINATION [flags]
  diskimporter import --source URL|PATH --destination REGISTRY/REPO:TAG [flags]

Reads the disk once, wraps it in an uncompressed tar layer (disk/<name>,
uid 107) and pushes it over TLS pinned to AES-GCM. Prints one JSON result
line on stdout; logs go to stderr. Progress: one live line when stderr is a
terminal, a log line every --progress-interval otherwise, neither with --quiet.

Examples:
  # An image on a web server into a registry with a private CA.
  diskimporter import https://cloud.example/fedora.raw registry.example:5000/disks/fedora:41 \
      --ca-file /etc/registry-ca.pem

  # A local ISO; registry credentials from the environment, no progress output.
  DISKIMPORTER_USERNAME=ci DISKIMPORTER_PASSWORD=secret \
      diskimporter import --quiet --source ./disk.iso --destination registry.example/isos/installer:v1

  # A source behind a bearer token kept off the command line, with Prometheus
  # metrics on :9090 while it runs.
  DISKIMPORTER_SOURCE_HEADER="Authorization: Bearer $TOKEN" \
      diskimporter import https://files.example/db.qcow2.xz registry.example/disks/db:v3 \
      --metrics-address :9090

SOURCE and DESTINATION may be given as arguments or as --source and
--destination, not both. Every flag can also be set through the environment
variable named after it (--source-ca-file is DISKIMPORTER_SOURCE_CA_FILE); a
flag on the command line wins.

Flags:
`

// cliOptions are the import flags that are not importer.Options fields.
type cliOptions struct {
	commonCLI
	sourceCLI
	registryCLI
	checksums      []string
	sourceSHA256   string
	sourceMD5      string
	convert        string
	maxVirtualSize int64
	http1          bool
}

func importFlags(o *importer.Options, c *cliOptions) *pflag.FlagSet {
	fs := pflag.NewFlagSet("import", pflag.ContinueOnError)
	fs.SortFlags = false
	addSourceFlags(fs, &o.SourceOptions, &c.sourceCLI)
	fs.StringVar(&o.Destination, "destination", "", "image to write, REGISTRY/REPO:TAG")
	addRegistryFlags(fs, &o.RegistryOptions, &c.registryCLI, "")
	fs.BoolVar(&c.http1, "http1", true, "talk HTTP/1.1 to the registry; --http1=false allows HTTP/2, which costs more CPU per GiB")
	addReadFlags(fs, &o.ReadOptions, importer.DefaultConnections,
		formatSize(importer.DefaultChunkSize)+"; "+formatSize(importer.CompressedChunkSize)+" for a compressed source")
	fs.StringVar(&o.Format, "format", "", "fail unless the disk (after decompression) is in this format: raw, qcow2 or iso")
	fs.StringVar(&c.convert, "convert", "", "\"raw\" turns a qcow2 image into its raw disk (default: store the disk in its own format)")
	fs.StringArrayVar(&c.checksums, "source-checksum", nil, "expected ALGORITHM:HEX of the source as downloaded (sha256, sha512, sha1, md5); repeatable")
	fs.StringVar(&c.sourceSHA256, "source-sha256", "", "expected sha256 of the source as downloaded, in hex")
	fs.StringVar(&c.sourceMD5, "source-md5", "", "expected md5 of the source as downloaded, in hex")
	fs.BoolVar(&o.SkipExisting, "skip-existing", false, "succeed without reading or uploading when the destination already holds an image of this source (recognised by --source-checksum/-sha256/-md5)")
	fs.BoolVar(&o.DiskSHA256, "disk-sha256", false, "also compute the sha256 of the disk (and of the download, when compressed) for the result and annotations; costs a second hash pass")
	o.MaxSize = 2 << 40
	fs.Var(newSize(&o.MaxSize, 1, 1<<60), "max-size", "largest disk accepted after decompression, such as 500GiB")
	fs.Var(newSize(&c.maxVirtualSize, 0, 1<<60), "max-virtual-size", "largest virtual size a qcow2 may declare, such as 2TiB (default --max-size)")
	fs.StringVar(&o.ScratchDir, "scratch-dir", "", "where a disk of unknown size is spooled, then removed (default $TMPDIR or /tmp)")
	fs.StringVar(&o.DiskName, "disk-name", "", "file name of the disk under disk/ (default disk.img, disk.qcow2 or disk.iso)")
	addPlatformFlag(fs, &o.Platform, "image platform, and the image of a docker:// index to read")
	fs.BoolVar(&o.DockerMediaTypes, "docker-media-types", false, "write Docker v2 media types instead of OCI")
	fs.StringVar(&o.CheckpointFile, "checkpoint", "", "file to keep the layer upload's place in: a rerun with the same file, source, destination and settings goes on where the registry stands (no credential is written; removed on success)")
	addCheckpointIntervalFlag(fs, &o.CheckpointInterval)
	fs.DurationVar(&o.ProgressInterval, "progress-interval", 0, "how often to log progress when stderr is not a terminal (default 5s); also how often the metrics are updated")
	addCommonFlags(fs, &c.commonCLI, true)
	return fs
}

func runImport(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o importer.Options
	var c cliOptions
	s := newSession("import", stdout, stderr)
	fs := importFlags(&o, &c)
	// An unquoted --source-header 'Name: value' leaves its value as
	// arguments: what is wrong with the header is said first.
	explain := func() error { _, err := c.headers(false); return err }
	check := func(fromEnv map[string]bool) error { return c.check(&o, fromEnv, s) }
	if code, ok := s.prepare(fs, importUsage, args, explain, check, &c.commonCLI, true, "source", "destination"); !ok {
		return code
	}
	o.Logger = s.logger
	o.ProgressInterval = s.con.progressInterval(o.ProgressInterval)
	if len(o.SourceHeaders) > 0 && !isHTTPSource(o.Source) {
		s.logger.Warn("the source headers are ignored: the source is not an http(s) URL")
	}
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	res, err := runImportWith(ctx, s, &o)
	if err != nil {
		return s.fail(err)
	}
	return s.succeed(res, false)
}

// runImportWith runs the import with what the command line adds around
// it: pprof, the metrics, the pod's annotations.
func runImportWith(ctx context.Context, s *session, o *importer.Options) (res *importer.Result, err error) {
	err = s.instrument(ctx, func(onProgress func(importer.Progress), onRetry func(importer.Retry)) error {
		o.OnProgress, o.OnRetry = onProgress, onRetry
		res, err = importer.Run(ctx, *o)
		return err
	})
	return res, err
}

// check moves the flags that need parsing into o, and refuses values the
// importer cannot use. Every secret it finds is made known to s.
func (c *cliOptions) check(o *importer.Options, fromEnv map[string]bool, s *session) error {
	s.secret(o.Password)
	if err := c.sourceCLI.apply(&o.SourceOptions, fromEnv, s, "missing SOURCE: give it as the first argument or --source"); err != nil {
		return err
	}
	if o.Destination == "" {
		return errors.New("missing DESTINATION: give it as the second argument or --destination (REGISTRY/REPO:TAG)")
	}
	if err := checkReadFlags(&o.ReadOptions); err != nil {
		return err
	}
	if err := c.registryCLI.apply(&o.RegistryOptions); err != nil {
		return err
	}
	o.HTTP2 = !c.http1
	o.MaxVirtualSize = uint64(c.maxVirtualSize)
	return c.applyImport(o)
}

// apply moves the registry flags that need parsing into r.
func (c *registryCLI) apply(r *importer.RegistryOptions) error {
	switch c.maxTLS {
	case "1.2":
		r.RegistryTLS.MaxVersion = tls.VersionTLS12
	case "1.3":
		r.RegistryTLS.MaxVersion = tls.VersionTLS13
	default:
		return fmt.Errorf("--tls-max-version %q: want 1.2 or 1.3", c.maxTLS)
	}
	if r.Password != "" && r.Username == "" {
		return errors.New("--password without --username")
	}
	return nil
}

// isHTTPSource tells whether source is an http(s) URL, the only kind the
// source headers are sent to.
func isHTTPSource(source string) bool {
	s := strings.ToLower(source)
	return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")
}

// headers returns the source headers of --source-header (or, fromEnv,
// DISKIMPORTER_SOURCE_HEADER, where empty means none) and
// --source-header-file; nil when there are none. An error names where the bad header came from and, when it is a
// valid one, its name: never a value, which is likely a secret.
func (c *sourceCLI) headers(fromEnv bool) (http.Header, error) {
	var h http.Header
	add := func(where, line string) error {
		name, value, err := parseHeader(line)
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if h == nil {
			h = http.Header{}
		}
		h.Add(name, value)
		return nil
	}
	for i, line := range c.sourceHeaders {
		where := "DISKIMPORTER_SOURCE_HEADER"
		if !fromEnv {
			where = fmt.Sprintf("--source-header #%d", i+1)
		} else if strings.TrimSpace(line) == "" {
			continue // set but empty, as a manifest's value: "": none
		}
		if err := add(where, line); err != nil {
			return nil, err
		}
	}
	if c.sourceHeaderFile != "" {
		f, err := os.Open(c.sourceHeaderFile)
		if err != nil {
			return nil, fmt.Errorf("--source-header-file: %w", err)
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for n := 1; sc.Scan(); n++ {
			line := strings.TrimSuffix(sc.Text(), "\r")
			if t := strings.TrimSpace(line); t == "" || strings.HasPrefix(t, "#") {
				continue
			}
			if err := add(fmt.Sprintf("--source-header-file %s line %d", c.sourceHeaderFile, n), line); err != nil {
				return nil, err
			}
		}
		if err := sc.Err(); err != nil {
			// bufio.ErrTooLong and read errors hold no content.
			return nil, fmt.Errorf("--source-header-file %s: %w", c.sourceHeaderFile, err)
		}
	}
	return h, nil
}

// reservedHeaders are set by diskimporter or Go's HTTP client for each
// request; a source header may not replace them.
var reservedHeaders = map[string]bool{
	"Host": true, "Range": true, "If-Range": true, "Accept-Encoding": true,
	"Content-Length": true, "Transfer-Encoding": true, "Connection": true, "Keep-Alive": true,
	"Te": true, "Trailer": true, "Upgrade": true, "Proxy-Connection": true,
}

// parseHeader parses "Name: value". The error holds the name only when it
// is a valid header name, and never the value.
func parseHeader(line string) (name, value string, err error) {
	name, value, ok := strings.Cut(line, ":")
	if !ok {
		return "", "", errors.New("want 'Name: value' (the header is not shown)")
	}
	if !validHeaderName(name) {
		return "", "", errors.New("the header name is not a valid HTTP field name; want 'Name: value' (the header is not shown)")
	}
	name = http.CanonicalHeaderKey(name)
	if reservedHeaders[name] {
		return "", "", fmt.Errorf("header %s is set by diskimporter itself", name)
	}
	value = strings.Trim(value, " \t")
	if value == "" {
		return "", "", fmt.Errorf("header %s has an empty value (quote the whole header: --source-header '%s: value')", name, name)
	}
	for i := 0; i < len(value); i++ {
		if b := value[i]; b < ' ' && b != '\t' || b == 0x7f {
			return "", "", fmt.Errorf("header %s: a control character in the value (the value is not shown)", name)
		}
	}
	return name, value, nil
}

// validHeaderName tells whether s is an HTTP field name: a token
// (RFC 9110, section 5.1).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		switch {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0:
		default:
			return false
		}
	}
	return true
}

// applyImport moves the import's own flags that need parsing into o.
func (c *cliOptions) applyImport(o *importer.Options) error {
	sums := c.checksums
	if c.sourceSHA256 != "" {
		sums = append(sums, "sha256:"+c.sourceSHA256)
	}
	if c.sourceMD5 != "" {
		sums = append(sums, "md5:"+c.sourceMD5)
	}
	for _, v := range sums {
		sum, err := importer.ParseChecksum(v)
		if err != nil {
			return err
		}
		o.Checksums = append(o.Checksums, sum)
	}
	switch c.convert {
	case "":
	case "raw":
		o.ConvertRaw = true
	default:
		return fmt.Errorf("%w: --convert %q: the only conversion is raw", importer.ErrInvalidOptions, c.convert)
	}
	return nil
}
