// Command diskimporter moves a VM disk image from a URL or a file into an
// OCI registry as a single uncompressed layer, in one pass.
//
//	diskimporter import SOURCE DESTINATION
//	diskimporter import --source URL|PATH --destination REGISTRY/REPO:TAG
//	diskimporter inspect SOURCE
//	diskimporter export IMAGE PATH|-
//	diskimporter demo
//	diskimporter version
//
// Every flag can also be set from the environment: --source-ca-file is
// DISKIMPORTER_SOURCE_CA_FILE. A flag given on the command line wins.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
)

// gcPercent is the garbage collector's GOGC unless the environment sets
// one: the heap is mostly large pooled buffers, cheap to mark, and a Job's
// memory limit must cover its peak. At 50 rather than 100 an xz -T0
// import on two cores peaked at 102 MiB rather than 128, at the same speed
// (go run ./e2e/bench -rows diskimporter-xz -limits 2cores, 2026-12-06).
const gcPercent = 50

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `diskimporter moves a VM disk image into an OCI registry, fast.

Usage:
  diskimporter import SOURCE DESTINATION [flags]
  diskimporter import --source URL|PATH --destination REGISTRY/REPO:TAG [flags]
  diskimporter export REGISTRY/REPO:TAG PATH|- [flags]
  diskimporter inspect SOURCE [flags]   what an import would find, without pushing
  diskimporter warm IMAGE [flags]       put an image into this node's containerd, unpacked
  diskimporter serve --listen ADDR --allow-registry HOST [flags]
                                        the prefetch endpoint that warms this node on request
  diskimporter demo      import a generated disk into an in-process registry
  diskimporter version   print the version

Run "diskimporter COMMAND --help" (or "diskimporter help COMMAND") for a
command's flags and examples.
`

// run executes one command line and returns the exit code: 0 on success,
// 1 when the command failed, 2 for a usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		fmt.Fprintln(stderr, "diskimporter: no command given")
		return 2
	}
	switch args[0] {
	case "import":
		return runImport(ctx, args[1:], stdout, stderr)
	case "inspect":
		return runInspect(ctx, args[1:], stdout, stderr)
	case "export":
		return runExport(ctx, args[1:], stdout, stderr)
	case "warm":
		return runWarm(ctx, args[1:], stdout, stderr)
	case "serve":
		return runServe(ctx, args[1:], stdout, stderr)
	case "demo":
		return runDemo(ctx, args[1:], stdout, stderr)
	case "version", "--version":
		return runVersion(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		if len(args) > 1 && args[0] == "help" && !strings.HasPrefix(args[1], "-") {
			return run(ctx, []string{args[1], "--help"}, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "diskimporter: unknown command %s; run \"diskimporter help\"\n", escape(strconv.Quote(args[0])))
	return 2
}

const versionUsage = `Usage: diskimporter version

Prints the module version, the VCS revision the binary was built from and
the Go version it was built with.

Examples:
  diskimporter version
  # The version inside the image (its entrypoint is the binary).
  docker run --rm registry.example/diskimporter:TAG version

`

func runVersion(args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("version", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, versionUsage) }
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		return newSession("version", stdout, stderr).usageError(err)
	}
	fmt.Fprintln(stdout, version())
	return 0
}
