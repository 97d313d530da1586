package main

import (
	"context"
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
  diskimporter inspect --json docker://registry.example/disks/fedora:41
  DISKIMPORTER_SOURCE_HEADER="Authorization: Bearer $TOKEN" \
      diskimporter inspect https://files.example/db.qcow2.xz

A docker:// source is reached with the same --source-* flags as an
import's. Every flag can also be set through the environment variable named
after it (--source-ca-file is DISKIMPORTER_SOURCE_CA_FILE); a flag on the
command line wins.

Flags:
`

// inspectCLI are the inspect flags that are not importer.InspectOptions
// fields.
type inspectCLI struct {
	commonCLI
	sourceCLI
	json bool
}

func inspectFlags(o *importer.InspectOptions, c *inspectCLI) *pflag.FlagSet {
	fs := pflag.NewFlagSet("inspect", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.BoolVar(&c.json, "json", false, "print the result as JSON instead of an aligned summary")
	addSourceFlags(fs, &o.SourceOptions, &c.sourceCLI)
	addPlatformFlag(fs, &o.Platform, "image of a docker:// index to inspect")
	addRetryFlags(fs, &o.ReadOptions, 2, 30*time.Second)
	addCommonFlags(fs, &c.commonCLI, false)
	return fs
}

func runInspect(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o importer.InspectOptions
	var c inspectCLI
	s := newSession("inspect", stdout, stderr)
	fs := inspectFlags(&o, &c)
	check := func(fromEnv map[string]bool) error { return c.check(&o, fromEnv, s) }
	if code, ok := s.prepare(fs, inspectUsage, args, nil, check, &c.commonCLI, false, "source"); !ok {
		return code
	}
	o.Logger = s.logger
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	stop, err := s.servePprof()
	if err != nil {
		return s.fail(err)
	}
	defer stop()
	info, err := importer.Inspect(ctx, o)
	if err != nil {
		return s.fail(err)
	}
	if c.json {
		return s.succeed(info, false)
	}
	var b strings.Builder
	if err := writeInspectText(&b, info); err != nil {
		return s.fail(err)
	}
	fmt.Fprint(stdout, s.red.String(b.String()))
	s.writeResult(info)
	return 0
}

// check moves the inspect flags that need parsing into o, and refuses
// values the inspection cannot use.
func (c *inspectCLI) check(o *importer.InspectOptions, fromEnv map[string]bool, s *session) error {
	if err := c.sourceCLI.apply(&o.SourceOptions, fromEnv, s, "missing SOURCE: give it as the argument or --source"); err != nil {
		return err
	}
	rs := importer.ReadOptions{Connections: 1, Retries: o.Retries, StallTimeout: o.StallTimeout}
	if err := checkReadFlags(&rs); err != nil {
		return err
	}
	o.Retries, o.StallTimeout = rs.Retries, rs.StallTimeout
	return nil
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
	if p := info.XZParallel; p != nil {
		row("xz blocks", map[bool]string{true: "decoded in parallel, on every CPU the import has (sizes in the block headers, as xz -T0 writes)",
			false: "decoded one after the other (no sizes in the block headers: single-threaded xz; xz -T0 would allow parallel decoding)"}[*p])
	}
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
		refusal := printable(info.ImportRefuses)
		if h := hint("import", info.RefuseReason); h != "" {
			refusal += "; " + h
		}
		row("import", "REFUSED ("+string(info.RefuseReason)+"): "+refusal)
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
