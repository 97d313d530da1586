package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/diskimporter/diskimporter/e2e/containerd"
	"github.com/diskimporter/diskimporter/e2e/registry"
)

// The warm rows (-warm) compare how a node gets a containerDisk: with
// containerd's own fetch (one stream per layer), or with diskimporter warm
// first (parallel Range requests written into containerd) and the same
// fetch after it (now local). They read the pull rows' registries on a
// real S3 store (pull.go): unthrottled, or through the pacer of each
// connection to -pull-throttle. The node side (containerd, ctr,
// diskimporter) runs on core 0, the registries, MinIO and the pacer on
// core 1; every row starts from a fresh containerd root.

// warmRow is one measured way of getting the image onto the node.
type warmRow struct {
	name string
	// prepare, when set, runs first, untimed.
	prepare func(ctx context.Context, n *warmNode) error
	run     func(ctx context.Context, n *warmNode) error
}

// warmNode is a fresh containerd and what the rows run against it.
type warmNode struct {
	c        *containerd.Containerd
	ref      string // REGISTRY/REPO:TAG, the registry named through store's forwarder
	reg      *registry.Registry
	importer string
}

// benchWarm runs the warm rows on a disk of size bytes and prints the table.
func benchWarm(ctx context.Context, size int64) error {
	if why := containerd.CanRun(); why != "" {
		return fmt.Errorf("the warm rows need containerd: %s", why)
	}
	s, cleanup, err := newSetup(ctx, size)
	defer cleanup()
	if err != nil {
		return err
	}
	fmt.Printf("warm rows: %d MiB disk, the pull rows' registries on MinIO (S3) on core 1; node side on core 0; throttled: %s per connection\n\n",
		size>>20, rateString(pullRate))
	fmt.Printf("%-60s %10s %10s\n", "row", "seconds", "MiB/s")
	for _, kind := range []string{fastStore, throttledStore} {
		if err := warmTable(ctx, s, kind, size); err != nil {
			return err
		}
	}
	return nil
}

// warmTable runs each row against a fresh containerd, reading the pull
// rows' registry on S3 of kind (fastStore or throttledStore).
func warmTable(ctx context.Context, s *setup, kind string, size int64) error {
	p, err := s.pullSource(ctx, kind)
	if err != nil {
		return err
	}
	for _, row := range warmRows() {
		secs, err := runWarmRow(ctx, s, p.reg, p.ref, row)
		if err != nil {
			return fmt.Errorf("%s (%s): %w", row.name, kind, err)
		}
		fmt.Printf("%-60s %10.2f %10.1f\n", row.name+" ("+kind+")", secs, float64(size)/(1<<20)/secs)
	}
	return nil
}

// warmRows are the rows, each timed from a fresh containerd.
func warmRows() []warmRow {
	fetch := func(ctx context.Context, n *warmNode) error { return n.ctr(ctx, "content", "fetch") }
	noUnpack := func(ctx context.Context, n *warmNode) error { return n.warm(ctx, "--unpack=false") }
	return []warmRow{
		{"ctr content fetch (containerd's own)", nil, fetch},
		{"diskimporter warm --unpack=false", nil, noUnpack},
		{"diskimporter warm --unpack=false, then ctr content fetch", nil, func(ctx context.Context, n *warmNode) error {
			if err := noUnpack(ctx, n); err != nil {
				return err
			}
			return fetch(ctx, n)
		}},
		{"the unpack alone (diskimporter warm, blobs present)", noUnpack, func(ctx context.Context, n *warmNode) error { return n.warm(ctx) }},
		{"diskimporter warm (fetch and unpack)", nil, func(ctx context.Context, n *warmNode) error { return n.warm(ctx) }},
	}
}

// runWarmRow runs row against a fresh containerd pinned to core 0 and
// returns its wall time.
func runWarmRow(ctx context.Context, s *setup, reg *registry.Registry, ref string, row warmRow) (float64, error) {
	c, err := containerd.Start(ctx, containerd.Options{})
	if err != nil {
		return 0, err
	}
	defer c.Stop()
	if out, err := exec.Command("taskset", "-a", "-p", "-c", "0", strconv.Itoa(c.Pid())).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("pinning containerd: %v: %s", err, out)
	}
	if err := c.WriteHosts(reg.Addr, reg.CAFile); err != nil {
		return 0, err
	}
	n := &warmNode{c: c, ref: ref, reg: reg, importer: s.importer}
	if row.prepare != nil {
		if err := row.prepare(ctx, n); err != nil {
			return 0, err
		}
	}
	start := time.Now()
	err = row.run(ctx, n)
	return time.Since(start).Seconds(), err
}

// ctr runs "ctr -n k8s.io SUBCOMMAND… REF" on core 0 with the registry's
// credentials and CA.
func (n *warmNode) ctr(ctx context.Context, args ...string) error {
	args = append(args, "--hosts-dir", n.c.HostsDir, "--user", n.reg.Username+":"+n.reg.Password, n.ref)
	cmd := n.c.Ctr(ctx, args...)
	cmd.Args = append([]string{"taskset", "-c", "0"}, cmd.Args...)
	cmd.Path, _ = exec.LookPath("taskset")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %v: %s", cmd.Args[3:], err, out)
	}
	return nil
}

// warm runs "diskimporter warm REF" on core 0 against the node.
func (n *warmNode) warm(ctx context.Context, extra ...string) error {
	args := append([]string{"-c", "0", n.importer, "warm", n.ref, "--containerd-address", n.c.Address,
		"--snapshotter", n.c.Snapshotter, "--ca-file", n.reg.CAFile, "--log-format", "json", "-q"}, extra...)
	cmd := exec.CommandContext(ctx, "taskset", args...)
	cmd.Env = append(os.Environ(), "DISKIMPORTER_USERNAME="+n.reg.Username, "DISKIMPORTER_PASSWORD="+n.reg.Password)
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("diskimporter warm: %w: %s", err, exitStderr(err))
	}
	var res struct{ Recorded bool }
	if err := json.Unmarshal(out, &res); err != nil {
		return fmt.Errorf("diskimporter warm's result %q: %w", out, err)
	}
	return nil
}

// exitStderr is what a failed command printed on stderr.
func exitStderr(err error) []byte {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.Stderr
	}
	return nil
}
