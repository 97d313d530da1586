package main

import (
	"context"
	"errors"
	"io"
	"strings"

	"github.com/spf13/pflag"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/warm"
)

const warmUsage = `Usage:
  diskimporter warm [flags] REGISTRY/REPO:TAG|REGISTRY/REPO@sha256:…

Puts an image into this node's containerd before a pod needs it: every blob
containerd lacks is read from the registry in parallel Range requests
(containerd reads a layer in one stream) and written into containerd's
content store over its socket, which checks each blob's digest; the image
is recorded as the kubelet's pull would record it and, unless --unpack=false,
unpacked into the CRI snapshotter. A pod with imagePullPolicy IfNotPresent
then starts without downloading or unpacking its disk. Run again, it reads
nothing; killed, it goes on from what containerd's ingest holds.

Prints one JSON result line on stdout; logs go to stderr.

Examples:
  diskimporter warm registry.example:5000/disks/fedora:41 --ca-file /etc/registry-ca.pem
  diskimporter warm docker://registry.example/disks/fedora@sha256:… --containerd-address /run/k3s/containerd/containerd.sock

The registry is named with the same flags as export's (--username,
--password, --ca-file, --plain-http, ...). Every flag can also be set
through the environment variable named after it (--containerd-address is
DISKIMPORTER_CONTAINERD_ADDRESS); a flag on the command line wins.

Flags:
`

// warmCLI holds the warm flags that are not warm.Options fields.
type warmCLI struct {
	commonCLI
	registryCLI
	image string
}

func warmFlags(o *warm.Options, c *warmCLI) *pflag.FlagSet {
	fs := pflag.NewFlagSet("warm", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringVar(&c.image, "image", "", "the image, [docker://]REGISTRY/REPO:TAG or @sha256:…")
	addNodeFlags(fs, o)
	addRegistryFlags(fs, &o.RegistryOptions, &c.registryCLI, "")
	addReadFlags(fs, &o.ReadOptions, warm.DefaultConnections, formatSize(warm.DefaultChunkSize))
	addCommonFlags(fs, &c.commonCLI, true)
	return fs
}

// addNodeFlags registers where the node's containerd is and how the image
// is put there, for warm and serve.
func addNodeFlags(fs *pflag.FlagSet, o *warm.Options) {
	fs.StringVar(&o.Platform, "platform", "", "image of an index to warm, os/arch[/variant] (default: this node's, linux/"+runtimeArch+")")
	fs.StringVar(&o.Address, "containerd-address", warm.DefaultAddress, "containerd's gRPC socket")
	fs.StringVar(&o.Namespace, "containerd-namespace", warm.DefaultNamespace, "containerd namespace (the kubelet's is k8s.io)")
	fs.BoolVar(&o.Unpack, "unpack", true, "unpack the layers into --snapshotter, as the kubelet's pull would")
	fs.StringVar(&o.Snapshotter, "snapshotter", warm.DefaultSnapshotter, "containerd snapshotter to unpack into (the CRI plugin's)")
}

func runWarm(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o warm.Options
	var c warmCLI
	s := newSession("warm", stdout, stderr)
	fs := warmFlags(&o, &c)
	check := func(map[string]bool) error { s.secret(o.Password); return c.check(&o) }
	if code, ok := s.prepare(fs, warmUsage, args, nil, check, &c.commonCLI, true, "image"); !ok {
		return code
	}
	o.Logger = s.logger
	o.ProgressInterval = s.con.progressInterval(0)
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	var res *warm.Result
	err := s.instrument(ctx, func(onProgress func(importer.Progress), onRetry func(importer.Retry)) (err error) {
		o.OnProgress, o.OnRetry = onProgress, onRetry
		res, err = warm.Warm(ctx, c.image, o)
		return err
	})
	if err != nil {
		return s.fail(err)
	}
	return s.succeed(res, false)
}

// check refuses warm flags the warmer cannot use.
func (c *warmCLI) check(o *warm.Options) error {
	if c.image == "" {
		return errors.New("missing IMAGE: give it as the argument or --image")
	}
	if err := importer.CheckSource("docker://" + strings.TrimPrefix(c.image, "docker://")); err != nil {
		return err
	}
	return checkNodeFlags(o, &c.registryCLI)
}

// checkNodeFlags checks the flags warm and serve share.
func checkNodeFlags(o *warm.Options, c *registryCLI) error {
	if err := checkReadFlags(&o.ReadOptions); err != nil {
		return err
	}
	return c.apply(&o.RegistryOptions)
}
