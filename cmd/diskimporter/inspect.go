package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/spf13/pflag"

	"github.com/diskimporter/diskimporter/importer"
)

const inspectUsage = `Usage: diskimporter inspect [flags] SOURCE

Tells what an import of SOURCE (an http(s):// or file:// URL, a path, or
docker://REGISTRY/REPO:TAG) would find, without pushing anything: its
compression, disk format and sizes, the qcow2 header, whether an import
would refuse it and why, whether the server answers Range requests, and how
an import would learn the disk's size. It reads as little as it can: the
first 64 KiB (one Range request), what a decoder needs more, and for xz the
index at the end of the file.

SOURCE may also be given as --source (not both).

Exits 0 when SOURCE could be inspected, also when an import would refuse
it ("import" says why); 1 when it could not be read (not found, refused,
unreachable), printing "diskimporter inspect: REASON: message"; 2 for a
usage error.

Examples:
  diskimporter inspect https://cloud.example/fedora.qcow2.xz
  diskimporter inspect --output json docker://registry.example/disks/fedora:41
  DISKIMPORTER_SOURCE_HEADER="Authorization: Bearer $TOKEN" \
      diskimporter inspect https://files.example/db.qcow2.xz

Every flag can also be set through the environment variable named after it
(--source-ca-file is DISKIMPORTER_SOURCE_CA_FILE); a flag on the command line wins.

Flags:
`

// inspectCLI are the inspect flags that are not importer.InspectOptions
// fields.
type inspectCLI struct {
	output, logFormat string
	timeout           time.Duration
	headers           cliOptions // its sourceHeaders and sourceHeaderFile only
}

func inspectFlags(o *importer.InspectOptions, c *inspectCLI) *pflag.FlagSet {
	fs := pflag.NewFlagSet("inspect", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringVarP(&c.output, "output", "o", "text", "text (an aligned summary) or json")
	fs.StringVar(&o.Source, "source", "", "the source, when not given as the argument")
	fs.StringArrayVar(&c.headers.sourceHeaders, "source-header", nil,
		"header 'Name: value' sent with every request to an http(s) source's origin; repeatable; never logged. Prefer DISKIMPORTER_SOURCE_HEADER or --source-header-file")
	fs.StringVar(&c.headers.sourceHeaderFile, "source-header-file", "", "file of source headers, one 'Name: value' a line; added to --source-header")
	fs.StringVar(&o.SourceUsername, "source-username", "", "user name for a docker:// source (default: the Docker config keychain)")
	fs.StringVar(&o.SourcePassword, "source-password", "", "password for a docker:// source; prefer DISKIMPORTER_SOURCE_PASSWORD")
	fs.StringVar(&o.SourceCAFile, "source-ca-file", "", "PEM CA bundle trusted for an https or docker:// source, besides the system roots")
	fs.BoolVar(&o.SourceInsecureSkipVerify, "source-insecure-skip-tls-verify", false, "do not verify the source's certificate")
	fs.StringVar(&o.Platform, "platform", "linux/amd64", "image of a docker:// index to inspect, os/arch[/variant]")
	fs.DurationVar(&c.timeout, "timeout", time.Minute, "give up after this long; 0: no limit")
	fs.StringVar(&c.logFormat, "log-format", "auto", "log format: text, json, or auto (text on a terminal, JSON otherwise)")
	return fs
}

func runInspect(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o importer.InspectOptions
	var c inspectCLI
	fs := inspectFlags(&o, &c)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, inspectUsage+fs.FlagUsages()) }
	usageError := func(err error) int {
		fmt.Fprintf(stderr, "diskimporter inspect: %v\n", err)
		return 2
	}
	fromEnv, err := parseFlagsPositional(fs, args, "source")
	if err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		return usageError(err)
	}
	if o.Source == "" {
		return usageError(errors.New("no SOURCE given"))
	}
	if c.output != "text" && c.output != "json" {
		return usageError(fmt.Errorf("--output %q: want text or json", c.output))
	}
	if o.SourceHeaders, err = c.headers.headers(fromEnv["source-header"]); err != nil {
		return usageError(err)
	}
	logger, err := newLogger(c.logFormat, stderr)
	if err != nil {
		return usageError(err)
	}
	o.Logger = logger

	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, c.timeout,
			fmt.Errorf("%w: --timeout %s reached", context.DeadlineExceeded, c.timeout))
		defer cancel()
	}
	info, err := importer.Inspect(ctx, o)
	if err != nil {
		fmt.Fprintf(stderr, "diskimporter inspect: %s: %v\n", importer.Reason(err), err)
		return 1
	}
	if c.output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(info)
	} else {
		err = writeInspectText(stdout, info)
	}
	if err != nil {
		fmt.Fprintf(stderr, "diskimporter inspect: %v\n", err)
		return 1
	}
	return 0
}

// sizeFromText explains Info.SizeFrom.
var sizeFromText = map[string]string{
	importer.SizeFromLength:     "the source's length",
	importer.SizeFromXZIndex:    "the xz index at the end of the file",
	importer.SizeFromZstdHeader: "the zstd frame header",
	importer.SizeFromSpool:      "unknown up front: an import spools the disk to --scratch-dir",
}

// writeInspectText writes info as aligned "field  value" lines. Strings
// that come from the source (validators, a backing file name) are quoted
// when they hold anything but printable characters.
func writeInspectText(w io.Writer, info *importer.Info) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("source", printable(info.Source))
	if d := info.Docker; d != nil {
		row("image", d.Reference)
		row("layer", fmt.Sprintf("%s, %s, %s", d.Layer, d.LayerMediaType, byteCount(d.LayerSize)))
		row("disk path", printable(d.DiskPath))
	}
	row("compression", info.Compression)
	row("format", orText(info.Format, "unknown"))
	row("size as downloaded", byteCount(info.SizeAsDownloaded))
	row("disk size", byteCount(info.DiskSize))
	row("size from", info.SizeFrom+" ("+sizeFromText[info.SizeFrom]+")")
	row("virtual size", byteCount(info.VirtualSize))
	if q := info.QCOW2; q != nil {
		row("qcow2", fmt.Sprintf("version %d, %s clusters, %s compression", q.Version, units(q.ClusterSize), q.CompressionType))
	}
	if info.Format == "qcow2" {
		switch {
		case info.BackingFile != "":
			row("backing file", strconv.Quote(info.BackingFile))
		case info.BackingFileNamed:
			row("backing file", "named (past the first 64 KiB)")
		default:
			row("backing file", "none")
		}
	}
	switch info.ConvertRaw {
	case importer.ConvertRandomAccess:
		row("--convert raw", "reads the qcow2 at random (Range requests or the file), sized by its header")
	case importer.ConvertSpool:
		row("--convert raw", "spools the qcow2 first, sized by its header")
	}
	if info.ImportRefuses != "" {
		row("import", "REFUSED ("+info.RefuseReason+"): "+printable(info.ImportRefuses))
	} else {
		row("import", "would go ahead")
	}
	if info.RangeRequests != nil {
		row("range requests", map[bool]string{true: "yes", false: "no"}[*info.RangeRequests])
	}
	if info.Kind == importer.KindHTTP {
		row("etag", orText(printable(info.ETag), "none"))
		row("last modified", orText(printable(info.LastModified), "none"))
	}
	if info.Redirected {
		row("redirected", "yes")
	}
	row("bytes read", byteCount(info.BytesRead))
	return tw.Flush()
}

// byteCount writes n as bytes and, from 1 KiB, in binary units.
func byteCount(n int64) string {
	if n < 0 {
		return "unknown"
	}
	if n < 1<<10 {
		return strconv.FormatInt(n, 10) + " bytes"
	}
	return strconv.FormatInt(n, 10) + " bytes (" + units(n) + ")"
}

// units writes n in binary units, to one decimal.
func units(n int64) string {
	v, unit := float64(n), "bytes"
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"} {
		if v < 1<<10 {
			break
		}
		v, unit = v/(1<<10), u
	}
	return strings.TrimSuffix(strconv.FormatFloat(v, 'f', 1, 64), ".0") + " " + unit
}

func orText(s, none string) string {
	if s == "" {
		return none
	}
	return s
}

// printable returns s, or s quoted when it holds anything a terminal
// would not print as it is.
func printable(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
