package containerd

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStartStop starts containerd, checks the plugins a node's image
// pull needs, runs ctr against it, and checks Stop leaves nothing behind.
func TestStartStop(t *testing.T) {
	if why := CanRun(); why != "" {
		t.Skip(why)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	t.Logf("containerd ready in %v with snapshotter %s", time.Since(start).Round(time.Millisecond), c.Snapshotter)

	for _, p := range []struct{ typ, id string }{
		{"io.containerd.grpc.v1", "content"},
		{"io.containerd.grpc.v1", "images"},
		{"io.containerd.grpc.v1", "leases"},
		{"io.containerd.grpc.v1", "snapshots"},
		{"io.containerd.grpc.v1", "diff"},
		{"io.containerd.grpc.v1", "cri"},
		{"io.containerd.snapshotter.v1", c.Snapshotter},
	} {
		ok, err := c.pluginLoaded(ctx, p.typ, p.id)
		if err != nil || !ok {
			t.Errorf("plugin %s.%s not loaded (%v)\n%s", p.typ, p.id, err, c.LogTail())
		}
	}
	out, err := c.Ctr(ctx, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Server:") {
		t.Errorf("ctr version: %v\n%s", err, out)
	}
	if err := c.WriteHosts("127.0.0.1:5000", "/nonexistent/ca.pem"); err != nil {
		t.Error(err)
	}

	pid := c.Pid()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("containerd (pid %d) still runs after Stop", pid)
	}
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Errorf("%s left behind after Stop (%v)", c.Dir, err)
	}
	if err := c.Stop(); err != nil {
		t.Errorf("a second Stop: %v", err)
	}
}

// TestNative starts containerd with the native snapshotter asked for.
func TestNative(t *testing.T) {
	c := StartT(t, Options{Snapshotter: "native"})
	if c.Snapshotter != "native" {
		t.Errorf("snapshotter %s, want native", c.Snapshotter)
	}
	ok, err := c.pluginLoaded(context.Background(), "io.containerd.snapshotter.v1", "native")
	if err != nil || !ok {
		t.Errorf("native snapshotter not loaded (%v)", err)
	}
}
