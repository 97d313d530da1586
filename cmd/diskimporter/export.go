package main

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/export"
)

const exportUsage = `Usage:
  diskimporter export REGISTRY/REPO:TAG PATH|- [flags]
  diskimporter export --source REGISTRY/REPO:TAG --output PATH|- [flags]

Writes the disk of a containerDisk image out of a registry: read once, in
parallel Range requests, its layer's sha256 checked on the way. A file is
written sparse (runs of zeros are not written) as PATH.partial, and renamed
to PATH only once the layer's digest and size match the manifest; killed and
run again with the same arguments, it goes on from PATH.partial (and its
state file PATH.partial.state) instead of from zero. An existing block device
is written in place, every byte. "--output -" streams the disk to stdout, in
order, before its digest is known: the exit code says whether it was right.

Prints one JSON result line on stdout (on stderr's log with --output -);
logs go to stderr.

Examples:
  diskimporter export --source registry.example:5000/disks/fedora:41 --output /var/lib/disks/fedora.img
  diskimporter export --source docker://registry.example/disks/fedora@sha256:… --output /dev/vdb
  diskimporter export --source registry.example/disks/fedora:41 --output - | qemu-img info /dev/stdin

The registry is named with the same flags as import's destination
(--username, --password, --ca-file, --plain-http, ...). SOURCE and OUTPUT
may be given as arguments or as --source and --output, not both. Every flag
can also be set through the environment variable named after it (--ca-file
is DISKIMPORTER_CA_FILE); a flag on the command line wins.

Flags:
`

// exportCLI holds the export flags that are not export.Options fields.
type exportCLI struct {
	commonCLI
	registryCLI
	sparse bool
}

func exportFlags(o *export.Options, c *exportCLI) *pflag.FlagSet {
	fs := pflag.NewFlagSet("export", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringVar(&o.Source, "source", "", "containerDisk image, [docker://]REGISTRY/REPO:TAG or @sha256:…")
	fs.StringVar(&o.Output, "output", "", "file to write the disk to, an existing block device, or - for stdout")
	fs.BoolVar(&c.sparse, "sparse", true, "do not write runs of zeros to a file (it stays sparse); --sparse=false writes every byte")
	addPlatformFlag(fs, &o.Platform, "image of an index to export")
	// The registry is export's only remote: it has import's registry
	// flags, and the --source-* spellings of earlier versions.
	addRegistryFlags(fs, &o.RegistryOptions, &c.registryCLI, "source-")
	addReadFlags(fs, &o.ReadOptions, export.DefaultConnections, formatSize(export.DefaultChunkSize))
	addCommonFlags(fs, &c.commonCLI, true)
	addCheckpointIntervalFlag(fs, &o.CheckpointInterval)
	return fs
}

func runExport(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o export.Options
	var c exportCLI
	s := newSession("export", stdout, stderr)
	fs := exportFlags(&o, &c)
	check := func(map[string]bool) error { s.secret(o.Password); return c.check(&o, stdout) }
	if code, ok := s.prepare(fs, exportUsage, args, nil, check, &c.commonCLI, true, "source", "output"); !ok {
		return code
	}
	atLeastProcs(exportProcs)
	o.Logger = s.logger
	o.ProgressInterval = s.con.progressInterval(0)
	o.Dense = !c.sparse
	o.Stdout = stdout
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	var res *export.Result
	err := s.instrument(ctx, func(onProgress func(importer.Progress), onRetry func(importer.Retry)) (err error) {
		o.OnProgress, o.OnRetry = onProgress, onRetry
		res, err = export.Export(ctx, o)
		return err
	})
	if err != nil {
		return s.fail(err)
	}
	return s.succeed(res, o.Output == export.Stdout)
}

// check refuses export flags the exporter cannot use.
func (c *exportCLI) check(o *export.Options, stdout io.Writer) error {
	switch {
	case o.Source == "":
		return errors.New("missing SOURCE: give it as the first argument or --source")
	case o.Output == "":
		return errors.New("missing OUTPUT: give it as the second argument or --output (a path, or - for stdout)")
	}
	if err := importer.CheckSource("docker://" + strings.TrimPrefix(o.Source, "docker://")); err != nil {
		return err
	}
	if o.Output == export.Stdout {
		if f, ok := stdout.(*os.File); ok && isTerminal(f) {
			return errors.New("--output - would write the disk to a terminal; redirect stdout")
		}
	}
	if err := checkReadFlags(&o.ReadOptions); err != nil {
		return err
	}
	return c.registryCLI.apply(&o.RegistryOptions)
}
