// Package kube runs a real kube-apiserver (Version, built by Build) on a
// real etcd (Debian's etcd-server) on loopback, for the tests that hold
// the manifests to least privilege. There is no kubelet, scheduler or
// controller manager: the tests create what those would.
package kube

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/diskimporter/diskimporter/e2e/registry"
	"k8s.io/client-go/rest"
)

// readyTimeout bounds how long Start waits for etcd and the API server.
const readyTimeout = 90 * time.Second

// Cluster is a running etcd and kube-apiserver.
type Cluster struct {
	// Host is the API server's https://127.0.0.1:PORT.
	Host string
	// Port is its port.
	Port int
	// CAFile holds the certificate that signed its serving certificate,
	// what a pod's ca.crt holds.
	CAFile string
	// token is the administrator's bearer token (group system:masters).
	token string
	procs []*exec.Cmd
}

// Start starts etcd and the API server with their data under dir, their
// output to log, and returns once /readyz answers 200.
func Start(ctx context.Context, dir string, log io.Writer) (_ *Cluster, err error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		return nil, errors.New("etcd is not installed: apt-get install -y etcd-server")
	}
	c := &Cluster{token: randomHex(16)}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	etcdPort, err := c.startEtcd(etcd, dir, log)
	if err != nil {
		return nil, err
	}
	if err := c.startAPIServer(bin, dir, etcdPort, log); err != nil {
		return nil, err
	}
	return c, c.waitReady(ctx)
}

// startEtcd starts etcd with its data under dir and returns its client port.
func (c *Cluster) startEtcd(bin, dir string, log io.Writer) (int, error) {
	client, err := registry.FreePort()
	if err != nil {
		return 0, err
	}
	peer, err := registry.FreePort()
	if err != nil {
		return 0, err
	}
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)
	clientURL := "http://127.0.0.1:" + strconv.Itoa(client)
	return client, c.start(log, bin,
		"--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default="+peerURL)
}

// startAPIServer writes the API server's keys and starts it.
func (c *Cluster) startAPIServer(bin, dir string, etcdPort int, log io.Writer) error {
	saKey, err := writeKey(filepath.Join(dir, "sa.key"))
	if err != nil {
		return err
	}
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(c.token+",admin,admin,system:masters\n"), 0o600); err != nil {
		return err
	}
	certDir := filepath.Join(dir, "certs")
	if c.Port, err = registry.FreePort(); err != nil {
		return err
	}
	c.Host = "https://127.0.0.1:" + strconv.Itoa(c.Port)
	// The self-signed serving certificate it writes holds the CA that
	// signed it after the leaf: a pod's ca.crt.
	c.CAFile = filepath.Join(certDir, "apiserver.crt")
	return c.start(log, bin,
		"--etcd-servers", "http://127.0.0.1:"+strconv.Itoa(etcdPort),
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(c.Port), "--cert-dir", certDir,
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", saKey, "--service-account-signing-key-file", saKey,
		"--token-auth-file", tokens,
		"--authorization-mode", "RBAC",
		"--enable-priority-and-fairness=false")
}

// start starts one process of the cluster.
func (c *Cluster) start(log io.Writer, bin string, args ...string) error {
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group, killed with the test binary.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", bin, err)
	}
	c.procs = append(c.procs, cmd)
	return nil
}

// waitReady polls /readyz until it answers 200, a process exits or ctx
// (bounded by readyTimeout) ends.
func (c *Cluster) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		if c.ready(ctx) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver at %s not ready: %w", c.Host, ctx.Err())
		case <-tick.C:
		}
	}
}

// ready reports whether /readyz answers 200. The client is made anew each
// time: the API server writes its certificate once it starts.
func (c *Cluster) ready(ctx context.Context) bool {
	client, err := rest.HTTPClientFor(c.Config())
	if err != nil {
		return false
	}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Host+"/readyz", nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Config is the administrator's client configuration.
func (c *Cluster) Config() *rest.Config {
	return c.TokenConfig(c.token)
}

// TokenConfig is a client configuration that authenticates with token.
func (c *Cluster) TokenConfig(token string) *rest.Config {
	return &rest.Config{Host: c.Host, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAFile: c.CAFile}}
}

// Stop kills the API server and etcd and waits for them.
func (c *Cluster) Stop() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		p := c.procs[i]
		_ = syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
		_ = p.Wait()
	}
	c.procs = nil
}

// writeKey writes a new ECDSA P-256 private key, the service account
// token signing key, to path.
func writeKey(path string) (string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", err
	}
	return path, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
