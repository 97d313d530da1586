package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/pflag"

	"github.com/diskimporter/diskimporter/cmd/diskimporter/podstatus"
	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/export"
)

const exportUsage = `Usage: diskimporter export --source REGISTRY/REPO:TAG --output PATH|- [flags]

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

Every flag can also be set through the environment variable named after it
(--source-ca-file is DISKIMPORTER_SOURCE_CA_FILE); a flag on the command line wins.

Flags:
`

// exportCLI holds the export flags that are not export.Options fields.
type exportCLI struct {
	sparse         bool
	username       string
	password       string
	caFile         string
	insecure       bool
	logFormat      string
	resultFile     string
	terminationLog string
}

func exportFlags(o *export.Options, c *exportCLI) *pflag.FlagSet {
	fs := pflag.NewFlagSet("export", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringVar(&o.Source, "source", "", "containerDisk image, [docker://]REGISTRY/REPO:TAG or @sha256:… (required)")
	fs.StringVar(&o.Output, "output", "", "file to write the disk to, an existing block device, or - for stdout (required)")
	fs.BoolVar(&c.sparse, "sparse", true, "do not write runs of zeros to a file (it stays sparse); --sparse=false writes every byte")
	fs.StringVar(&o.Platform, "platform", "linux/amd64", "image of an index to export, os/arch[/variant]")
	o.Fetch.Connections = export.DefaultConnections
	fs.IntVar(&o.Fetch.Connections, "connections", export.DefaultConnections, "parallel Range requests reading the layer; 1 reads one stream")
	o.Fetch.ChunkSize = export.DefaultChunkSize
	fs.Var((*byteSize)(&o.Fetch.ChunkSize), "chunk-size", "length of each Range request, such as 16MiB; reassembly holds --connections × this")
	fs.IntVar(&o.Fetch.Retries, "retries", importer.DefaultRetries, "failures in a row retried reading the layer, resuming where it stopped; 0: none")
	fs.DurationVar(&o.Fetch.StallTimeout, "stall-timeout", importer.DefaultStallTimeout, "drop and resume a response that gives no byte for this long; 0: never")
	fs.StringVar(&c.username, "source-username", "", "registry user name (default: the Docker config keychain)")
	fs.StringVar(&c.password, "source-password", "", "registry password; prefer DISKIMPORTER_SOURCE_PASSWORD, a flag shows in ps")
	fs.StringVar(&c.caFile, "source-ca-file", "", "PEM CA bundle trusted for the registry, besides the system roots")
	fs.BoolVar(&c.insecure, "source-insecure-skip-tls-verify", false, "do not verify the registry's certificate")
	fs.StringVar(&c.resultFile, "result-file", "", "also write the JSON result to this file")
	fs.StringVar(&c.terminationLog, "termination-log", podstatus.DefaultTerminationMessagePath,
		"in a Pod (POD_NAME set), also write the result, at most 4 KiB, to this termination message file")
	fs.StringVar(&c.logFormat, "log-format", "auto", "log format: text, json, or auto (text on a terminal, JSON otherwise)")
	// How often a file output is synced and its state saved; hidden:
	// tests make it small to resume small disks.
	fs.Var((*byteSize)(&o.CheckpointInterval), "checkpoint-interval", "bytes between two checkpoints of a file output (default 64MiB)")
	_ = fs.MarkHidden("checkpoint-interval")
	return fs
}

func runExport(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o export.Options
	var c exportCLI
	fs := exportFlags(&o, &c)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, exportUsage+fs.FlagUsages()) }
	usageErr := func(err error) int {
		fmt.Fprintf(stderr, "diskimporter export: %v\n", err)
		return 2
	}
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		return usageErr(err)
	}
	switch {
	case o.Source == "":
		return usageErr(errors.New("--source is required"))
	case o.Output == "":
		return usageErr(errors.New("--output is required (a path, or - for stdout)"))
	case o.Fetch.Connections < 1:
		return usageErr(fmt.Errorf("--connections %d: want 1 or more", o.Fetch.Connections))
	case c.password != "" && c.username == "":
		return usageErr(errors.New("--source-password without --source-username"))
	}
	if o.Output == export.Stdout {
		if f, ok := stdout.(*os.File); ok && isTerminal(f) {
			return usageErr(errors.New("--output - would write the disk to a terminal; redirect stdout"))
		}
	}
	logger, err := newLogger(c.logFormat, stderr)
	if err != nil {
		return usageErr(err)
	}
	o.Logger = logger
	o.Dense = !c.sparse
	o.Stdout = stdout

	fail := func(err error) int {
		reason := export.Reason(err)
		logger.Error("export failed", "reason", reason, "error", err)
		fmt.Fprintf(stderr, "diskimporter export: %s: %v\n", reason, err)
		c.writeResult(failure{Reason: reason, Message: err.Error()}, logger)
		return 1
	}
	t, err := export.NewTransport(c.caFile, c.insecure)
	if err != nil {
		return fail(err)
	}
	o.Transport = t
	if c.username != "" {
		o.Keychain = exportKeychain{authn.FromConfig(authn.AuthConfig{Username: c.username, Password: c.password})}
	}

	res, err := export.Export(ctx, o)
	if err != nil {
		return fail(err)
	}
	line, _ := json.Marshal(res)
	if o.Output == export.Stdout {
		logger.Info("result", "result", json.RawMessage(line))
	} else {
		fmt.Fprintf(stdout, "%s\n", line)
	}
	c.writeResult(res, logger)
	return 0
}

// writeResult writes the result, or the failure, to --result-file and, in a
// Pod, to the termination message file.
func (c *exportCLI) writeResult(v any, logger *slog.Logger) {
	writeResult(c.resultFile, c.terminationLog, v, logger)
}

// exportKeychain answers every registry with the same credentials.
type exportKeychain struct{ auth authn.Authenticator }

func (k exportKeychain) Resolve(authn.Resource) (authn.Authenticator, error) { return k.auth, nil }
