// Package containerd runs a real containerd (the distribution's package,
// 1.6 on Debian 12) for end-to-end tests of what diskimporter puts on a
// node: its own root, state, gRPC and ttrpc sockets under a temporary
// directory, the content, images, leases, snapshots, diff and CRI plugins
// loaded, and nothing of the host's containerd touched.
//
// Start writes a config.toml and runs "containerd --config FILE" as a
// child process, as root (containerd mounts its snapshots), and returns
// once its socket answers the version service and the snapshotter is
// known to work: overlayfs where the kernel mounts it, else native.
// StartT skips the test, saying why, where containerd cannot run (not
// root, containerd not installed).
package containerd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	introspection "github.com/containerd/containerd/api/services/introspection/v1"
	version "github.com/containerd/containerd/api/services/version/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"
)

const (
	// readyTimeout bounds the wait for the socket to answer.
	readyTimeout = 30 * time.Second
	// termGrace is how long Stop waits after SIGTERM before SIGKILL.
	termGrace = 10 * time.Second
	// Namespace is the namespace the kubelet's CRI plugin uses.
	Namespace = "k8s.io"
)

// Options configures Start. The zero value is a usable default.
type Options struct {
	// Snapshotter is the CRI plugin's snapshotter. Empty: overlayfs when
	// containerd's overlayfs plugin loads here, else native.
	Snapshotter string
	// LogOutput receives containerd's log. Nil: discarded (the last
	// 64 KiB are kept for errors and LogTail either way).
	LogOutput io.Writer
	// Debug runs containerd with log level debug.
	Debug bool
}

// Containerd is a running containerd started by Start. Its exported fields
// are read-only.
type Containerd struct {
	// Address is the path of its gRPC socket.
	Address string
	// Dir holds config.toml, root/, state/, the sockets and hosts/.
	Dir string
	// Root and State are containerd's root and state directories.
	Root, State string
	// ConfigFile is the config containerd runs with.
	ConfigFile string
	// HostsDir is the CRI plugin's registry config_path: a directory of
	// HOST[:PORT]/hosts.toml files (see WriteHosts), which ctr reads too
	// with --hosts-dir.
	HostsDir string
	// Snapshotter is the CRI plugin's snapshotter: overlayfs or native.
	Snapshotter string
	// DebugAddress is containerd's debug socket, which serves Go's pprof
	// (http://x/debug/pprof/profile?seconds=N through the socket): where
	// containerd spends its CPU during a benchmark.
	DebugAddress string

	cmd      *exec.Cmd
	done     chan struct{}
	waitErr  error
	logs     *tail
	stopOnce sync.Once
	stopErr  error
}

// CanRun says why containerd cannot run here, or "" when it can.
func CanRun() string {
	if os.Geteuid() != 0 {
		return "containerd needs root (it mounts snapshots): run the tests as root"
	}
	if _, err := exec.LookPath("containerd"); err != nil {
		return "containerd is not installed: apt-get install -y containerd"
	}
	return ""
}

// Start runs containerd as o says and waits until its socket answers. ctx
// bounds only the start.
func Start(ctx context.Context, o Options) (*Containerd, error) {
	if why := CanRun(); why != "" {
		return nil, errors.New("containerd: " + why)
	}
	snapshotter := o.Snapshotter
	if snapshotter == "" {
		snapshotter = "overlayfs"
	}
	c, err := start(ctx, o, snapshotter)
	if err != nil || o.Snapshotter != "" {
		return c, err
	}
	// The default: overlayfs only where its plugin loaded.
	ok, err := c.pluginLoaded(ctx, "io.containerd.snapshotter.v1", "overlayfs")
	if err != nil || ok {
		if err != nil {
			c.Stop()
		}
		return c, err
	}
	if err := c.Stop(); err != nil {
		return nil, err
	}
	return start(ctx, o, "native")
}

func start(ctx context.Context, o Options, snapshotter string) (_ *Containerd, retErr error) {
	bin, err := exec.LookPath("containerd")
	if err != nil {
		return nil, fmt.Errorf("containerd: %w", err)
	}
	// A short path: a unix socket's path is limited to 107 bytes.
	dir, err := os.MkdirTemp("", "di-containerd-")
	if err != nil {
		return nil, fmt.Errorf("containerd: %w", err)
	}
	c := &Containerd{
		Dir:          dir,
		Address:      filepath.Join(dir, "containerd.sock"),
		Root:         filepath.Join(dir, "root"),
		State:        filepath.Join(dir, "state"),
		ConfigFile:   filepath.Join(dir, "config.toml"),
		HostsDir:     filepath.Join(dir, "hosts"),
		Snapshotter:  snapshotter,
		DebugAddress: filepath.Join(dir, "debug.sock"),
		done:         make(chan struct{}),
		logs:         &tail{out: o.LogOutput},
	}
	defer func() {
		if retErr != nil {
			c.Stop()
		}
	}()
	if err := os.MkdirAll(c.HostsDir, 0o755); err != nil {
		return nil, fmt.Errorf("containerd: %w", err)
	}
	if err := os.WriteFile(c.ConfigFile, []byte(c.config(o.Debug)), 0o600); err != nil {
		return nil, fmt.Errorf("containerd: %w", err)
	}
	c.cmd = exec.Command(bin, "--config", c.ConfigFile)
	c.cmd.Stdout, c.cmd.Stderr = c.logs, c.logs
	// Its own process group, and killed with the test process.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("containerd: starting %s: %w", bin, err)
	}
	go func() {
		c.waitErr = c.cmd.Wait()
		close(c.done)
	}()
	if err := c.waitReady(ctx); err != nil {
		return nil, fmt.Errorf("containerd: %w\n%s", err, c.LogTail())
	}
	return c, nil
}

// config is containerd's config.toml: everything under Dir, the plugins
// that would touch the host (opt's /opt/containerd) pointed there too, and
// no TCP listener.
func (c *Containerd) config(debug bool) string {
	level := "info"
	if debug {
		level = "debug"
	}
	return fmt.Sprintf(`version = 2
root = %q
state = %q

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  address = %q
  level = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = %q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = %q
`, c.Root, c.State, c.Address, c.Address+".ttrpc", c.DebugAddress, level, filepath.Join(c.Dir, "opt"), c.Snapshotter,
		filepath.Join(c.Dir, "cni", "bin"), filepath.Join(c.Dir, "cni", "net.d"), c.HostsDir)
}

// waitReady waits until the socket answers the version service.
func (c *Containerd) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var last error
	for {
		select {
		case <-c.done:
			return fmt.Errorf("exited before it was ready: %v", c.waitErr)
		default:
		}
		if _, err := os.Stat(c.Address); err == nil {
			conn, err := c.Dial()
			if err == nil {
				_, err = version.NewVersionClient(conn).Version(ctx, &emptypb.Empty{})
				conn.Close()
				if err == nil {
					return nil
				}
			}
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready after %v (last: %v)", readyTimeout, last)
		case <-c.done:
			return fmt.Errorf("exited before it was ready: %v", c.waitErr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// pluginLoaded tells whether containerd's plugin of type typ and id id
// loaded without an error.
func (c *Containerd) pluginLoaded(ctx context.Context, typ, id string) (bool, error) {
	conn, err := c.Dial()
	if err != nil {
		return false, err
	}
	defer conn.Close()
	resp, err := introspection.NewIntrospectionClient(conn).Plugins(ctx, &introspection.PluginsRequest{
		Filters: []string{fmt.Sprintf("type==%s,id==%s", typ, id)},
	})
	if err != nil {
		return false, fmt.Errorf("containerd: listing plugins: %w", err)
	}
	for _, p := range resp.Plugins {
		if p.Type == typ && p.ID == id {
			return p.InitErr == nil, nil
		}
	}
	return false, nil
}

// StartT is Start for tests: it skips t where containerd cannot run, fails
// it when containerd does not start, and stops containerd when t ends.
func StartT(t testing.TB, o Options) *Containerd {
	t.Helper()
	if why := CanRun(); why != "" {
		t.Skip(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*readyTimeout)
	defer cancel()
	c, err := Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stopping containerd: %v", err)
		}
	})
	return c
}

// Dial opens a gRPC connection to the socket. The caller closes it.
func (c *Containerd) Dial() (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+c.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// Ctr returns the command ctr ARGS against this containerd, in namespace
// k8s.io.
func (c *Containerd) Ctr(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ctr", append([]string{"--address", c.Address, "--namespace", Namespace}, args...)...)
}

// WriteHosts writes HostsDir/HOST/hosts.toml for the registry at host
// (HOST:PORT), served over https with a certificate caFile trusts: what
// the CRI plugin's config_path and ctr --hosts-dir read.
func (c *Containerd) WriteHosts(host, caFile string) error {
	dir := filepath.Join(c.HostsDir, host)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	toml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = %q\n",
		"https://"+host, "https://"+host, caFile)
	return os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(toml), 0o644)
}

// Pid is containerd's process id.
func (c *Containerd) Pid() int { return c.cmd.Process.Pid }

// LogTail is the last 64 KiB of containerd's log.
func (c *Containerd) LogTail() []byte { return c.logs.bytes() }

// Stop ends containerd (SIGTERM, then SIGKILL after 10 s), unmounts what
// it left mounted under Dir and removes Dir. It may be called more than
// once.
func (c *Containerd) Stop() error {
	c.stopOnce.Do(func() { c.stopErr = c.stop() })
	return c.stopErr
}

func (c *Containerd) stop() error {
	if c.cmd != nil && c.cmd.Process != nil {
		c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(termGrace):
			c.cmd.Process.Kill()
			<-c.done
		}
	}
	var errs []error
	for _, m := range mountsUnder(c.Dir) {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", m, err))
		}
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// mountsUnder lists the mount points under dir, deepest first.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil || dir == "" {
		return nil
	}
	var ms []string
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			ms = append(ms, f[4])
		}
	}
	// Deepest first: a mount inside another goes before it.
	for i, j := 0, len(ms)-1; i < j; i, j = i+1, j-1 {
		ms[i], ms[j] = ms[j], ms[i]
	}
	return ms
}

// tail keeps the last 64 KiB written to it, and copies everything to out.
type tail struct {
	mu  sync.Mutex
	out io.Writer
	buf []byte
}

const tailSize = 64 << 10

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.out != nil {
		t.out.Write(p)
	}
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailSize {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-tailSize:]...)
	}
	return len(p), nil
}

func (t *tail) bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return bytes.Clone(t.buf)
}
