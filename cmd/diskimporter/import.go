package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/diskimporter/diskimporter/cmd/diskimporter/podstatus"
	"github.com/diskimporter/diskimporter/importer"
)

const importUsage = `Usage: diskimporter import --source URL|PATH --destination REGISTRY/REPO:TAG [flags]

Reads the disk once, wraps it in an uncompressed tar layer (disk/<name>,
uid 107) and pushes it over TLS pinned to AES-GCM. Prints one JSON result
line on stdout; logs go to stderr.

Examples:
  diskimporter import --source https://cloud.example/fedora.raw \
      --destination registry.example:5000/disks/fedora:41 --ca-file /etc/registry-ca.pem
  DISKIMPORTER_USERNAME=ci DISKIMPORTER_PASSWORD=secret \
      diskimporter import --source ./disk.iso --destination registry.example/isos/installer:v1

Every flag can also be set through the environment variable named after it
(--source-ca-file is DISKIMPORTER_SOURCE_CA_FILE); a flag on the command line wins.

Flags:
`

// cliOptions are the flags that are not importer.Options fields.
type cliOptions struct {
	checksums      []string
	sourceSHA256   string
	sourceMD5      string
	convert        string
	pprofAddress   string
	resultFile     string
	terminationLog string
	logFormat      string
	maxTLS         string
	http1          bool
	timeout        time.Duration
}

func importFlags(o *importer.Options, c *cliOptions) *pflag.FlagSet {
	fs := pflag.NewFlagSet("import", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringVar(&o.Source, "source", "", "disk image: http(s):// URL, file:// URL, path, or docker://REGISTRY/REPO:TAG of a containerDisk (required)")
	fs.StringVar(&o.Destination, "destination", "", "image to write, REGISTRY/REPO:TAG (required)")
	fs.StringVar(&o.Username, "username", "", "registry user name (default: the Docker config keychain)")
	fs.StringVar(&o.Password, "password", "", "registry password; prefer DISKIMPORTER_PASSWORD, a flag shows in ps")
	fs.StringVar(&o.RegistryTLS.CAFile, "ca-file", "", "PEM CA bundle trusted for the registry, besides the system roots")
	fs.BoolVar(&o.RegistryTLS.InsecureSkipVerify, "insecure-skip-tls-verify", false, "do not verify the registry's certificate (the AES-GCM pin still holds)")
	fs.StringVar(&o.RegistryTLS.ClientCertFile, "client-cert", "", "PEM client certificate for the registry")
	fs.StringVar(&o.RegistryTLS.ClientKeyFile, "client-key", "", "PEM key of --client-cert")
	fs.BoolVar(&o.PlainHTTP, "plain-http", false, "allow plain http to the registry (never by default, even on loopback)")
	fs.BoolVar(&c.http1, "http1", true, "talk HTTP/1.1 to the registry; --http1=false allows HTTP/2, which costs more CPU per GiB")
	fs.IntVar(&o.Connections, "connections", importer.DefaultConnections, "parallel Range requests reading an http(s) source that answers them; 1 reads one stream")
	o.ChunkSize = importer.DefaultChunkSize
	fs.Var((*byteSize)(&o.ChunkSize), "chunk-size", "length of each Range request, such as 8MiB; reassembly holds --connections × this")
	fs.IntVar(&o.Retries, "retries", importer.DefaultRetries, "failures in a row retried reading the source (resuming where it stopped) or uploading; 0: none")
	fs.DurationVar(&o.StallTimeout, "stall-timeout", importer.DefaultStallTimeout, "drop and resume a source response that gives no byte for this long; 0: never")
	fs.StringVar(&o.SourceUsername, "source-username", "", "user name for a docker:// source (default: the Docker config keychain)")
	fs.StringVar(&o.SourcePassword, "source-password", "", "password for a docker:// source; prefer DISKIMPORTER_SOURCE_PASSWORD")
	fs.StringVar(&o.SourceCAFile, "source-ca-file", "", "PEM CA bundle trusted for an https source, besides the system roots")
	fs.BoolVar(&o.SourceInsecureSkipVerify, "source-insecure-skip-tls-verify", false, "do not verify the source's certificate")
	fs.StringVar(&o.Format, "format", "", "fail unless the disk (after decompression) is in this format: raw, qcow2 or iso")
	fs.StringVar(&c.convert, "convert", "", "\"raw\" turns a qcow2 image into its raw disk (default: store the disk in its own format)")
	fs.StringArrayVar(&c.checksums, "source-checksum", nil, "expected ALGORITHM:HEX of the source as downloaded (sha256, sha512, sha1, md5); repeatable")
	fs.StringVar(&c.sourceSHA256, "source-sha256", "", "expected sha256 of the source as downloaded, in hex")
	fs.StringVar(&c.sourceMD5, "source-md5", "", "expected md5 of the source as downloaded, in hex")
	fs.BoolVar(&o.SkipExisting, "skip-existing", false, "succeed without reading or uploading when the destination already holds an image of this source (recognised by --source-checksum/-sha256/-md5)")
	fs.BoolVar(&o.DiskSHA256, "disk-sha256", false, "also compute the sha256 of the disk (and of the download, when compressed) for the result and annotations; costs a second hash pass")
	fs.Int64Var(&o.MaxSize, "max-size", 0, "largest disk accepted after decompression, in bytes (default 2 TiB)")
	fs.Uint64Var(&o.MaxVirtualSize, "max-virtual-size", 0, "largest virtual size a qcow2 may declare, in bytes (default --max-size)")
	fs.StringVar(&o.ScratchDir, "scratch-dir", "", "where a disk of unknown size is spooled, then removed (default $TMPDIR or /tmp)")
	fs.StringVar(&o.DiskName, "disk-name", "", "file name of the disk under disk/ (default disk.img, disk.qcow2 or disk.iso)")
	fs.StringVar(&o.Platform, "platform", "linux/amd64", "image platform os/arch[/variant]")
	fs.BoolVar(&o.DockerMediaTypes, "docker-media-types", false, "write Docker v2 media types instead of OCI")
	fs.DurationVar(&o.ProgressInterval, "progress-interval", 0, "how often to log progress (default 5s)")
	fs.StringVar(&c.maxTLS, "tls-max-version", "1.2", "highest TLS version to the registry: 1.2 or 1.3 (the AES-GCM pin is checked on the negotiated suite either way)")
	fs.DurationVar(&c.timeout, "timeout", 0, "fail the import (nothing tagged) when it takes longer than this; 0: no limit")
	fs.StringVar(&c.pprofAddress, "pprof-address", "", "serve net/http/pprof on this address, such as 127.0.0.1:6060 (off when empty)")
	fs.StringVar(&c.resultFile, "result-file", "", "also write the JSON result to this file")
	fs.StringVar(&c.terminationLog, "termination-log", podstatus.DefaultTerminationMessagePath,
		"in a Pod (POD_NAME set), also write the result, at most 4 KiB, to this termination message file")
	fs.StringVar(&c.logFormat, "log-format", "auto", "log format: text, json, or auto (text on a terminal, JSON otherwise)")
	return fs
}

// byteSize is a pflag.Value of a byte count written as a number with an
// optional KiB, MiB or GiB suffix.
type byteSize int64

func (b *byteSize) String() string {
	n := int64(*b)
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"GiB", 30}, {"MiB", 20}, {"KiB", 10}} {
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

func (b *byteSize) Set(s string) error {
	shift := uint(0)
	for suffix, sh := range map[string]uint{"KiB": 10, "MiB": 20, "GiB": 30} {
		if rest, ok := strings.CutSuffix(s, suffix); ok {
			s, shift = rest, sh
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > 1<<40>>shift {
		return fmt.Errorf("%q: want a byte count such as 8MiB (suffixes KiB, MiB, GiB)", s)
	}
	*b = byteSize(n << shift)
	return nil
}

func (b *byteSize) Type() string { return "size" }

// envName is the environment variable that sets a flag.
func envName(flag string) string {
	return "DISKIMPORTER_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// parseFlags parses args, then fills every flag not given on the command
// line from its environment variable.
func parseFlags(fs *pflag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", envName(f.Name), err))
			}
		}
	})
	return errors.Join(errs...)
}

func runImport(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o importer.Options
	var c cliOptions
	fs := importFlags(&o, &c)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, importUsage+fs.FlagUsages()) }
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "diskimporter import: %v\n", err)
		return 2
	}
	logger, err := newLogger(c.logFormat, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "diskimporter import: %v\n", err)
		return 2
	}
	o.Logger = logger
	switch c.maxTLS {
	case "1.2":
	case "1.3":
		o.RegistryTLS.MaxVersion = tls.VersionTLS13
	default:
		fmt.Fprintf(stderr, "diskimporter import: --tls-max-version %q: want 1.2 or 1.3\n", c.maxTLS)
		return 2
	}

	fail := func(err error) int {
		reason := importer.Reason(err)
		logger.Error("import failed", "reason", reason, "error", err)
		fmt.Fprintf(stderr, "diskimporter import: %s: %v\n", reason, err)
		c.writeResult(failure{Reason: reason, Message: err.Error()}, logger)
		return 1
	}
	// In a Pod, progress goes to the Pod's annotations; failing to set
	// that up costs the annotations, never the import.
	reporter, err := podstatus.FromEnv(ctx, podstatus.WithLogger(logger))
	if err != nil {
		logger.Warn("not reporting progress on the pod", "error", err)
	}
	o.OnProgress = reporter.Report
	if err := c.apply(&o); err != nil {
		return fail(err)
	}
	if c.pprofAddress != "" {
		stopPprof, err := servePprof(c.pprofAddress, logger)
		if err != nil {
			return fail(fmt.Errorf("%w: %w", importer.ErrInvalidOptions, err))
		}
		defer stopPprof()
	}

	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, c.timeout,
			fmt.Errorf("%w: --timeout %s reached", context.DeadlineExceeded, c.timeout))
		defer cancel()
	}
	res, err := importer.Run(ctx, o)
	if err != nil {
		return fail(err)
	}
	line, _ := json.Marshal(res)
	fmt.Fprintf(stdout, "%s\n", line)
	c.writeResult(res, logger)
	return 0
}

// writeResult writes the result, or the failure, to --result-file and, in a
// Pod, to the termination message file.
func (c *cliOptions) writeResult(v any, logger *slog.Logger) {
	if c.resultFile != "" {
		b, _ := json.Marshal(v)
		if err := os.WriteFile(c.resultFile, append(b, '\n'), 0o644); err != nil {
			logger.Error("writing the result file", "path", c.resultFile, "error", err)
		}
	}
	if os.Getenv(podstatus.EnvPodName) != "" && c.terminationLog != "" {
		if err := podstatus.WriteTerminationMessage(c.terminationLog, v); err != nil {
			logger.Error("writing the termination message", "error", err)
		}
	}
}

// apply moves the flags that need parsing into o.
func (c *cliOptions) apply(o *importer.Options) error {
	o.HTTP2 = !c.http1
	if o.Connections < 1 {
		return fmt.Errorf("%w: --connections %d: want 1 or more", importer.ErrInvalidOptions, o.Connections)
	}
	// On the command line 0 means none; in Options it means the default.
	if o.Retries == 0 {
		o.Retries = -1
	}
	if o.StallTimeout == 0 {
		o.StallTimeout = -1
	}
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

// failure is the result written on error.
type failure struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// newLogger returns a slog logger writing to w in the given format.
func newLogger(format string, w io.Writer) (*slog.Logger, error) {
	switch format {
	case "auto":
		if f, ok := w.(*os.File); ok && isTerminal(f) {
			format = "text"
		} else {
			format = "json"
		}
	case "text", "json":
	default:
		return nil, fmt.Errorf("--log-format %q: want text, json or auto", format)
	}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, nil)), nil
	}
	return slog.New(slog.NewJSONHandler(w, nil)), nil
}

// isTerminal reports whether f is a character device, as a terminal is.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
