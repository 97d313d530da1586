package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/diskimporter/diskimporter/cmd/diskimporter/podstatus"
	"github.com/diskimporter/diskimporter/importer"
)

// Every flag that more than one command takes is defined here, once, with
// one name and one meaning: import, inspect and export register the groups
// that apply to them.

// commonCLI are the flags of every command that does work.
type commonCLI struct {
	quiet          bool
	logFormat      string
	pprofAddress   string
	metricsAddress string
	metricsLinger  time.Duration
	resultFile     string
	terminationLog string
	timeout        time.Duration
}

// addCommonFlags registers the common flags; metrics adds
// --metrics-address and --metrics-linger, for a command that reports
// progress.
func addCommonFlags(fs *pflag.FlagSet, c *commonCLI, metrics bool) {
	addLogFlags(fs, c)
	fs.DurationVar(&c.timeout, "timeout", 0, "fail (reason Timeout; nothing tagged, partial output kept for a resume) when the command takes longer than this; 0: no limit")
	fs.StringVar(&c.resultFile, "result-file", "", "also write the JSON result (or the failure) to this file")
	fs.StringVar(&c.terminationLog, "termination-log", podstatus.DefaultTerminationMessagePath,
		"in a Pod (POD_NAME set), also write the result, at most 4 KiB, to this termination message file")
	if metrics {
		addMetricsAddressFlag(fs, &c.metricsAddress)
		fs.DurationVar(&c.metricsLinger, "metrics-linger", 0, "after the end, keep serving /metrics until a scrape has read the final values, at most this long; 0: stop at once")
	}
}

// addLogFlags registers what every command, a server too, is told about
// its logs and profiling: -q, --log-format and --pprof-address.
func addLogFlags(fs *pflag.FlagSet, c *commonCLI) {
	addQuietFlag(fs, &c.quiet)
	fs.StringVar(&c.logFormat, "log-format", "auto", "log format: text, json, or auto (text on a terminal, JSON otherwise)")
	fs.StringVar(&c.pprofAddress, "pprof-address", "", "serve net/http/pprof (without the command line) on this address, such as 127.0.0.1:6060 (off when empty)")
}

// addCheckpointIntervalFlag registers --checkpoint-interval: how much
// work a failed or killed run may have to do again.
func addCheckpointIntervalFlag(fs *pflag.FlagSet, p *int64) {
	fs.Var(newSize(p, 1<<20, 1<<40), "checkpoint-interval",
		"bytes between two checkpoints from which a failed upload or a killed export goes on, 1MiB to 1TiB (default 64MiB)")
}

// addQuietFlag registers -q, --quiet.
func addQuietFlag(fs *pflag.FlagSet, quiet *bool) {
	fs.BoolVarP(quiet, "quiet", "q", false, "no progress line and no progress or info log lines; warnings, errors and the JSON result still print")
}

// addMetricsAddressFlag registers --metrics-address.
func addMetricsAddressFlag(fs *pflag.FlagSet, addr *string) {
	fs.StringVar(addr, "metrics-address", "", "serve Prometheus metrics at /metrics on this address, such as :9090 (off when empty)")
}

// addReadFlags registers how remote bytes are read, with the command's
// defaults; chunkDefault says what the command does without --chunk-size,
// which leaves ReadOptions.ChunkSize zero (the library's default). On the
// command line 0 retries means none and a 0 stall timeout never;
// checkReadFlags maps them to importer.ReadOptions.
func addReadFlags(fs *pflag.FlagSet, r *importer.ReadOptions, defConnections int, chunkDefault string) {
	fs.IntVar(&r.Connections, "connections", defConnections, "most parallel Range requests (1 to 64) reading an object whose server answers them: it starts with 2 and adds more while they make the read faster; 1 reads one stream")
	fs.Var(newSize(&r.ChunkSize, importer.MinChunkSize, importer.MaxChunkSize), "chunk-size",
		"length of each Range request, 64KiB to 1GiB; reassembly holds --connections × this (default "+chunkDefault+")")
	addRetryFlags(fs, r, importer.DefaultRetries, importer.DefaultStallTimeout)
}

// addRetryFlags registers how failed reads are retried, with the
// command's defaults.
func addRetryFlags(fs *pflag.FlagSet, r *importer.ReadOptions, defRetries int, defStall time.Duration) {
	fs.IntVar(&r.Retries, "retries", defRetries, "failures in a row (drop, stall, 5xx, 408, 429, wrong bytes) retried, resuming where the read stopped; 0: none")
	fs.DurationVar(&r.StallTimeout, "stall-timeout", defStall, "drop and resume a response that gives no byte (or no headers) for this long; fail a registry connection that takes none; 0: never")
}

// checkReadFlags refuses read flags the importer cannot use and maps the
// command line's zeros (none, never) to importer.ReadOptions's negatives.
func checkReadFlags(r *importer.ReadOptions) error {
	switch {
	case r.Connections < 1 || r.Connections > 64:
		return fmt.Errorf("--connections %d: want 1 to 64", r.Connections)
	case r.Retries < 0:
		return fmt.Errorf("--retries %d: want 0 (none) or more", r.Retries)
	case r.StallTimeout < 0:
		return fmt.Errorf("--stall-timeout %s: want 0 (never) or more", r.StallTimeout)
	}
	if r.Retries == 0 {
		r.Retries = -1
	}
	if r.StallTimeout == 0 {
		r.StallTimeout = -1
	}
	return nil
}

// registryCLI are the registry flags that are not importer.RegistryOptions
// fields.
type registryCLI struct {
	maxTLS string
}

// addRegistryFlags registers how to reach the registry a command writes to
// or, for a command whose only remote is a registry (export), reads from.
// aliasPrefix, when not empty, also registers each under a hidden name
// with that prefix (export's --source-username), the spelling of earlier
// versions.
func addRegistryFlags(fs *pflag.FlagSet, r *importer.RegistryOptions, c *registryCLI, aliasPrefix string) {
	str := func(p *string, name, usage string) {
		fs.StringVar(p, name, "", usage)
		if aliasPrefix != "" {
			fs.StringVar(p, aliasPrefix+name, "", usage)
			_ = fs.MarkHidden(aliasPrefix + name)
		}
	}
	str(&r.Username, "username", "registry user name (default: the Docker config keychain)")
	str(&r.Password, "password", "registry password; prefer DISKIMPORTER_PASSWORD, a flag shows in ps")
	str(&r.RegistryTLS.CAFile, "ca-file", "PEM CA bundle trusted for the registry, besides the system roots")
	fs.BoolVar(&r.RegistryTLS.InsecureSkipVerify, "insecure-skip-tls-verify", false, "do not verify the registry's certificate")
	if aliasPrefix != "" {
		fs.BoolVar(&r.RegistryTLS.InsecureSkipVerify, aliasPrefix+"insecure-skip-tls-verify", false, "do not verify the registry's certificate")
		_ = fs.MarkHidden(aliasPrefix + "insecure-skip-tls-verify")
	}
	fs.StringVar(&r.RegistryTLS.ClientCertFile, "client-cert", "", "PEM client certificate for the registry")
	fs.StringVar(&r.RegistryTLS.ClientKeyFile, "client-key", "", "PEM key of --client-cert")
	fs.BoolVar(&r.PlainHTTP, "plain-http", false, "allow plain http to the registry (never by default, even on loopback)")
	fs.StringVar(&c.maxTLS, "tls-max-version", "1.2", "highest TLS version to the registry: 1.2 or 1.3 (a push checks the AES-GCM pin on the negotiated suite either way)")
}

// sourceCLI are the source flags that are not importer.SourceOptions
// fields.
type sourceCLI struct {
	sourceHeaders    []string
	sourceHeaderFile string
}

// addSourceFlags registers where a source is and how it is reached, for a
// command that reads a source (import, inspect).
func addSourceFlags(fs *pflag.FlagSet, s *importer.SourceOptions, c *sourceCLI) {
	fs.StringVar(&s.Source, "source", "", "disk image: http(s):// URL, file:// URL, path, or docker://REGISTRY/REPO:TAG of a containerDisk")
	fs.StringArrayVar(&c.sourceHeaders, "source-header", nil,
		"header 'Name: value' sent with every request to an http(s) source's origin, never to a redirect target on another origin; repeatable; never logged. On the command line it shows in ps: prefer DISKIMPORTER_SOURCE_HEADER (one header) or --source-header-file")
	fs.StringVar(&c.sourceHeaderFile, "source-header-file", "",
		"file of source headers, one 'Name: value' a line (blank lines and # comments skipped), such as a mounted Secret; added to --source-header")
	fs.StringVar(&s.SourceUsername, "source-username", "", "user name for a docker:// source (default: the Docker config keychain)")
	fs.StringVar(&s.SourcePassword, "source-password", "", "password for a docker:// source; prefer DISKIMPORTER_SOURCE_PASSWORD")
	fs.StringVar(&s.SourceCAFile, "source-ca-file", "", "PEM CA bundle trusted for an https or docker:// source, besides the system roots")
	fs.BoolVar(&s.SourceInsecureSkipVerify, "source-insecure-skip-tls-verify", false, "do not verify the source's certificate")
	fs.BoolVar(&s.SourcePlainHTTP, "source-plain-http", false, "allow plain http to a docker:// source's registry (never by default, even on loopback)")
}

// apply moves the source flags that need parsing into o and checks the
// source (missing names what to give, as import or inspect takes it);
// every secret it finds is made known to s.
func (c *sourceCLI) apply(o *importer.SourceOptions, fromEnv map[string]bool, s *session, missing string) error {
	if o.Source == "" {
		return errors.New(missing)
	}
	if err := importer.CheckSource(o.Source); err != nil {
		return err
	}
	var err error
	if o.SourceHeaders, err = c.headers(fromEnv["source-header"]); err != nil {
		return err
	}
	for _, vs := range o.SourceHeaders {
		for _, v := range vs {
			s.secret(v)
		}
	}
	s.secret(o.SourcePassword)
	return nil
}

// addPlatformFlag registers --platform.
func addPlatformFlag(fs *pflag.FlagSet, p *string, usage string) {
	fs.StringVar(p, "platform", "linux/amd64", usage+", os/arch[/variant]")
}

// size is a pflag.Value of a byte count written as a number with an
// optional unit (B, KiB, MiB, GiB, TiB, or kB, MB, GB, TB), within
// [min, max].
type size struct {
	p        *int64
	min, max int64
}

func newSize(p *int64, min, max int64) *size { return &size{p: p, min: min, max: max} }

// units are the suffixes a size takes, longest first where one ends
// another.
var sizeUnits = []struct {
	suffix string
	n      int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"kB", 1e3}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
}

func (s *size) String() string {
	if s.p == nil {
		return "0"
	}
	return formatSize(*s.p)
}

// formatSize writes n in the largest binary unit that divides it.
func formatSize(n int64) string {
	for i := 3; i >= 0; i-- {
		if u := sizeUnits[i]; n != 0 && n%u.n == 0 {
			return strconv.FormatInt(n/u.n, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

func (s *size) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	if n < s.min || n > s.max {
		return fmt.Errorf("%q: want %s to %s", v, formatSize(s.min), formatSize(s.max))
	}
	*s.p = n
	return nil
}

func (s *size) Type() string { return "size" }

// parseSize parses a byte count with an optional unit.
func parseSize(v string) (int64, error) {
	num, mult := strings.TrimSpace(v), int64(1)
	for _, u := range sizeUnits {
		if rest, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(rest), u.n
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q: want a byte count such as 8MiB or 2TiB (units B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)", v)
	}
	return n * mult, nil
}

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
	if err := setPositional(fs, positional); err != nil {
		return nil, err
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

// setPositional sets the flags named positional from the arguments: all
// of them in order, or those not given as flags.
func setPositional(fs *pflag.FlagSet, positional []string) error {
	if fs.NArg() == 0 {
		return nil
	}
	names := positional
	if fs.NArg() != len(positional) {
		names = nil
		for _, name := range positional {
			if !fs.Changed(name) {
				names = append(names, name)
			}
		}
	}
	// The arguments are not echoed: an unquoted --source-header value
	// splits into arguments.
	want := strings.ToUpper(strings.Join(positional, " "))
	switch {
	case len(positional) == 0:
		return fmt.Errorf("unexpected arguments: got %d, want none", fs.NArg())
	case fs.NArg() < len(names):
		return fmt.Errorf("missing %s: got %d argument(s), want %s", strings.ToUpper(strings.Join(names[fs.NArg():], " ")), fs.NArg(), want)
	case fs.NArg() > len(names):
		return fmt.Errorf("unexpected arguments: got %d, want none or %s", fs.NArg(), want)
	}
	for i, name := range names {
		if fs.Changed(name) {
			return fmt.Errorf("%s given twice, as an argument and as --%s", strings.ToUpper(name), name)
		}
		if err := fs.Set(name, fs.Arg(i)); err != nil {
			return fmt.Errorf("%s: %w", strings.ToUpper(name), err)
		}
	}
	return nil
}
