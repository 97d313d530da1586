package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/diskimporter/diskimporter/cmd/diskimporter/podstatus"
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

// cliOptions are the flags that are not importer.Options fields.
type cliOptions struct {
	checksums        []string
	sourceSHA256     string
	sourceMD5        string
	sourceHeaders    []string
	sourceHeaderFile string
	convert          string
	pprofAddress     string
	metricsAddress   string
	metricsLinger    time.Duration
	resultFile       string
	terminationLog   string
	logFormat        string
	maxTLS           string
	http1            bool
	quiet            bool
	timeout          time.Duration
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
	fs.StringArrayVar(&c.sourceHeaders, "source-header", nil,
		"header 'Name: value' sent with every request to an http(s) source's origin, never to a redirect target on another origin; repeatable; never logged. On the command line it shows in ps: prefer DISKIMPORTER_SOURCE_HEADER (one header) or --source-header-file")
	fs.StringVar(&c.sourceHeaderFile, "source-header-file", "",
		"file of source headers, one 'Name: value' a line (blank lines and # comments skipped), such as a mounted Secret; added to --source-header")
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
	fs.DurationVar(&o.ProgressInterval, "progress-interval", 0, "how often to log progress when stderr is not a terminal (default 5s); also how often the metrics are updated")
	fs.BoolVarP(&c.quiet, "quiet", "q", false, "no progress line and no progress or info log lines; warnings, errors and the JSON result still print")
	fs.StringVar(&c.maxTLS, "tls-max-version", "1.2", "highest TLS version to the registry: 1.2 or 1.3 (the AES-GCM pin is checked on the negotiated suite either way)")
	fs.DurationVar(&c.timeout, "timeout", 0, "fail the import (nothing tagged) when it takes longer than this; 0: no limit")
	fs.StringVar(&c.pprofAddress, "pprof-address", "", "serve net/http/pprof on this address, such as 127.0.0.1:6060 (off when empty)")
	fs.StringVar(&c.metricsAddress, "metrics-address", "", "serve Prometheus metrics at /metrics on this address, such as :9090 (off when empty)")
	fs.DurationVar(&c.metricsLinger, "metrics-linger", 0, "after the import, keep serving /metrics until a scrape has read the final values, at most this long; 0: stop at once")
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
	_, err := parseFlagsPositional(fs, args)
	return err
}

// parseFlagsPositional is parseFlags for a command whose flags named
// positional may also be given, in that order, as arguments: either all of
// them or none. An argument counts as the flag given on the command line:
// giving both is an error, and the environment does not override it. It
// returns the names of the flags set from the environment.
//
// A repeatable flag (a string array) takes one value from its environment
// variable, and none when it is on the command line.
func parseFlagsPositional(fs *pflag.FlagSet, args []string, positional ...string) (fromEnv map[string]bool, err error) {
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		if len(positional) == 0 {
			return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
		}
		if fs.NArg() != len(positional) {
			// The arguments are not echoed: an unquoted
			// --source-header value splits into arguments.
			return nil, fmt.Errorf("unexpected arguments: got %d, want none or %s", fs.NArg(), strings.ToUpper(strings.Join(positional, " ")))
		}
		for i, name := range positional {
			if fs.Changed(name) {
				return nil, fmt.Errorf("%s given twice, as an argument and as --%s", strings.ToUpper(name), name)
			}
			if err := fs.Set(name, fs.Arg(i)); err != nil {
				return nil, fmt.Errorf("%s: %w", strings.ToUpper(name), err)
			}
		}
	}
	fromEnv = map[string]bool{}
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", envName(f.Name), err))
			}
			fromEnv[f.Name] = true
		}
	})
	return fromEnv, errors.Join(errs...)
}

func runImport(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o importer.Options
	var c cliOptions
	fs := importFlags(&o, &c)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, importUsage+fs.FlagUsages()) }
	usageError := func(err error) int {
		fmt.Fprintf(stderr, "diskimporter import: %v\n", err)
		return 2
	}
	fromEnv, err := parseFlagsPositional(fs, args, "source", "destination")
	if err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		// An unquoted --source-header 'Name: value' leaves its value
		// as arguments: say what is wrong with the header first.
		if _, herr := c.headers(false); herr != nil {
			return usageError(herr)
		}
		return usageError(err)
	}
	if o.SourceHeaders, err = c.headers(fromEnv["source-header"]); err != nil {
		return usageError(err)
	}

	var metrics *importMetrics
	if c.metricsAddress != "" {
		metrics = newImportMetrics(time.Now)
		o.OnRetry = metrics.retried
	}
	con := newConsole(stderr, chooseProgressMode(c.quiet, canDrawLine(stderr), os.Getenv("TERM")))
	logger, err := con.newLogger(c.logFormat)
	if err != nil {
		return usageError(err)
	}
	o.Logger = logger
	o.ProgressInterval = con.progressInterval(o.ProgressInterval)
	switch c.maxTLS {
	case "1.2":
	case "1.3":
		o.RegistryTLS.MaxVersion = tls.VersionTLS13
	default:
		fmt.Fprintf(stderr, "diskimporter import: --tls-max-version %q: want 1.2 or 1.3\n", c.maxTLS)
		return 2
	}

	// The final metrics are served after the end for --metrics-linger,
	// unless a signal (not --timeout) ends that.
	lingerCtx := ctx
	var metricsSrv *metricsServer
	finish := func(err error) {
		if metrics != nil {
			metrics.finish(err)
		}
		metricsSrv.linger(lingerCtx, c.metricsLinger, logger)
	}
	fail := func(err error) int {
		con.finish() // the failure goes below the progress line
		reason := importer.Reason(err)
		logger.Error("import failed", "reason", reason, "error", err)
		fmt.Fprintf(stderr, "diskimporter import: %s: %v\n", reason, err)
		c.writeResult(failure{Reason: reason, Message: err.Error()}, logger)
		finish(err)
		return 1
	}
	// In a Pod, progress goes to the Pod's annotations; failing to set
	// that up costs the annotations, never the import.
	reporter, err := podstatus.FromEnv(ctx, podstatus.WithLogger(logger))
	if err != nil {
		logger.Warn("not reporting progress on the pod", "error", err)
	}
	var reportMetrics func(importer.Progress)
	if metrics != nil {
		reportMetrics = metrics.report
	}
	o.OnProgress = composeProgress(con.report, reportMetrics, reporter.Report)
	if err := c.apply(&o); err != nil {
		return fail(err)
	}
	if len(o.SourceHeaders) > 0 && !isHTTPSource(o.Source) {
		logger.Warn("the source headers are ignored: the source is not an http(s) URL")
	}
	if c.pprofAddress != "" {
		stopPprof, err := servePprof(c.pprofAddress, logger)
		if err != nil {
			return fail(fmt.Errorf("%w: %w", importer.ErrInvalidOptions, err))
		}
		defer stopPprof()
	}
	if metrics != nil {
		if metricsSrv, err = serveMetrics(c.metricsAddress, metrics, logger); err != nil {
			return fail(fmt.Errorf("%w: %w", importer.ErrInvalidOptions, err))
		}
		defer metricsSrv.stop()
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
	con.finish() // the result goes below the progress line
	line, _ := json.Marshal(res)
	fmt.Fprintf(stdout, "%s\n", line)
	c.writeResult(res, logger)
	finish(nil)
	return 0
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
func (c *cliOptions) headers(fromEnv bool) (http.Header, error) {
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

// writeResult writes the result, or the failure, to --result-file and, in a
// Pod, to the termination message file.
func (c *cliOptions) writeResult(v any, logger *slog.Logger) {
	writeResult(c.resultFile, c.terminationLog, v, logger)
}

// writeResult writes v as JSON to resultFile (when set) and, in a Pod, to
// the termination message file terminationLog (when set).
func writeResult(resultFile, terminationLog string, v any, logger *slog.Logger) {
	if resultFile != "" {
		b, _ := json.Marshal(v)
		if err := os.WriteFile(resultFile, append(b, '\n'), 0o644); err != nil {
			logger.Error("writing the result file", "path", resultFile, "error", err)
		}
	}
	if os.Getenv(podstatus.EnvPodName) != "" && terminationLog != "" {
		if err := podstatus.WriteTerminationMessage(terminationLog, v); err != nil {
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

// newLogger returns a slog logger writing to w in the given format (auto:
// text on a terminal, JSON otherwise), without a progress line.
func newLogger(format string, w io.Writer) (*slog.Logger, error) {
	return newConsole(w, progressLog).newLogger(format)
}
