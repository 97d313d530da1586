// Command diskimporter moves a VM disk image from a URL or a file into an
// OCI registry as a single uncompressed layer, in one pass.
//
//	diskimporter import --source URL|PATH --destination REGISTRY/REPO:TAG
//	diskimporter demo
//	diskimporter version
//
// Every flag can also be set from the environment: --source-ca-file is
// DISKIMPORTER_SOURCE_CA_FILE. A flag given on the command line wins.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `diskimporter moves a VM disk image into an OCI registry, fast.

Usage:
  diskimporter import --source URL|PATH --destination REGISTRY/REPO:TAG [flags]
  diskimporter demo      import a generated disk into an in-process registry
  diskimporter version   print the version

Run "diskimporter COMMAND --help" for a command's flags.
`

// run executes one command line and returns the exit code: 0 on success,
// 1 when the command failed, 2 for a usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "import":
		return runImport(ctx, args[1:], stdout, stderr)
	case "demo":
		return runDemo(ctx, args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, version())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "diskimporter: unknown command %q\n\n%s", args[0], usage)
	return 2
}
