package kube

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/e2e/registry"
)

var (
	// cluster is the API server every test uses; nil when skipReason is set.
	cluster *Cluster
	// skipReason says why the tests cannot run here.
	skipReason string
	// binPath is the diskimporter binary under test.
	binPath string
	// reg is the registry the imports push to.
	reg *registry.Registry
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(setup(m))
}

// setup starts what the tests need, or says in skipReason why it cannot.
func setup(m *testing.M) int {
	skipReason = unavailable()
	if skipReason != "" {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "diskimporter-kube-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	logs := &registry.LockedBuffer{}
	if cluster, err = Start(ctx, dir, logs); err != nil {
		fmt.Fprintf(os.Stderr, "kube: %v\n%s\n", err, tail(logs.Bytes()))
		return 1
	}
	defer cluster.Stop()
	if reg, err = registry.Start(ctx, registry.Options{}); err != nil {
		fmt.Fprintln(os.Stderr, "kube: registry:", err)
		return 1
	}
	defer reg.Stop()
	binPath = filepath.Join(dir, "diskimporter")
	build := exec.CommandContext(ctx, "go", "build", "-o", binPath, "../../cmd/diskimporter")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "kube: go build: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// unavailable says why the API server tests cannot run here, or "".
func unavailable() string {
	if testing.Short() {
		return "-short: skipping the tests against a real kube-apiserver"
	}
	if _, err := Binary(); err != nil {
		return err.Error()
	}
	if _, err := exec.LookPath("etcd"); err != nil {
		return "etcd is not installed: apt-get install -y etcd-server"
	}
	if os.Geteuid() != 0 {
		return "not root: the importer runs in a private mount namespace (unshare -m) to read a pod's service account token where client-go does"
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		return "unshare (util-linux) is not installed"
	}
	return ""
}

// need skips t where the API server cannot run.
func need(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}

// tail is the last 8 KiB of b.
func tail(b []byte) []byte {
	if len(b) > 8<<10 {
		return b[len(b)-8<<10:]
	}
	return b
}
