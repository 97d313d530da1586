package registry

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

const (
	// MinIOModule and MinIOVersion are the S3 server Options.S3 runs: the
	// last version the module proxy serves (its repository is archived), a
	// 150 MB binary built once with go install (a few minutes) and cached
	// beside the registry's.
	MinIOModule  = "github.com/minio/minio"
	MinIOVersion = "v0.0.0-20260212201848-7aac2a2c5b7c"
	// s3Region is the region the store and the registry's driver agree on.
	s3Region = "us-east-1"
)

// S3Options puts the registry's storage in a real S3 store (MinIO on
// loopback, over TLS with the registry's own certificate) with redirects
// on: a blob GET is answered 307 with a presigned URL of the store.
type S3Options struct {
	// RedirectEndpoint, if set (https://HOST:PORT), is the host the
	// presigned URLs name instead of the store's (distribution's
	// redirectendpoint). The signature covers it, so whatever listens
	// there must forward to Registry.Store.Addr with the Host it received.
	RedirectEndpoint string
}

// Store is the running S3 store of a registry started with Options.S3.
type Store struct {
	// Addr is its 127.0.0.1:PORT, speaking TLS with the registry's
	// certificate (trusted through Registry.CAFile).
	Addr string
	// Bucket holds the registry's data.
	Bucket string
	// AccessKey and SecretKey are its root credentials.
	AccessKey, SecretKey string
	p                    *proc
}

// startStore builds (once) and starts MinIO with its data under r.Dir,
// waits until it is live and creates the bucket. A port taken between
// its choice and MinIO's bind (by a test running beside) is chosen again,
// as the registry's is.
func (r *Registry) startStore(ctx context.Context, o Options) error {
	bin, err := Tool(ctx, "minio", MinIOModule, MinIOVersion)
	if err != nil {
		return err
	}
	dir := filepath.Join(r.Dir, "store")
	certs := filepath.Join(dir, "certs")
	if err := os.MkdirAll(certs, 0o700); err != nil {
		return err
	}
	for from, to := range map[string]string{"cert.pem": "public.crt", "key.pem": "private.key"} {
		if err := copyFile(filepath.Join(r.Dir, from), filepath.Join(certs, to)); err != nil {
			return err
		}
	}
	var lastErr error
	for range portAttempts {
		err := r.launchStore(ctx, bin, dir, o)
		if !errors.Is(err, errPortInUse) {
			return err
		}
		lastErr = err
	}
	return fmt.Errorf("registry: S3 store: gave up after %d attempts: %w", portAttempts, lastErr)
}

// launchStore starts MinIO on ports of its own and creates the bucket.
func (r *Registry) launchStore(ctx context.Context, bin, dir string, o Options) error {
	port, err := pickPort()
	if err != nil {
		return err
	}
	console, err := FreePort()
	if err != nil {
		return err
	}
	s := &Store{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Bucket: "registry",
		AccessKey: "di" + randomHex(8), SecretKey: randomToken(24)}
	cmd := exec.Command(bin, "server", "--quiet", "--address", s.Addr,
		"--console-address", "127.0.0.1:"+strconv.Itoa(console), "--certs-dir", filepath.Join(dir, "certs"), filepath.Join(dir, "data"))
	if o.CPUs != "" {
		cmd = exec.Command("taskset", append([]string{"-c", o.CPUs}, cmd.Args...)...)
	}
	cmd.Env = append(childEnv(), "MINIO_ROOT_USER="+s.AccessKey, "MINIO_ROOT_PASSWORD="+s.SecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "HOME="+dir)
	s.p = &proc{cmd: cmd, logs: &tailWriter{out: o.LogOutput}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = s.p.logs, s.p.logs
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("registry: starting %s: %w", bin, err)
	}
	go func() {
		s.p.err = cmd.Wait()
		close(s.p.done)
	}()
	r.Store = s
	return s.createBucket(ctx, r.TLSConfig())
}

// createBucket creates s.Bucket with a PUT signed with AWS Signature
// Version 4 (so that no S3 client library is needed), asking again until
// the store is up and initialized.
func (s *Store) createBucket(ctx context.Context, tlsc *tls.Config) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsc, Proxy: nil}}
	defer c.CloseIdleConnections()
	var last string
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, "https://"+s.Addr+"/"+s.Bucket, nil)
		if err != nil {
			return err
		}
		s.sign(req, time.Now().UTC())
		resp, err := c.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status + ": " + string(body)
			if resp.StatusCode != http.StatusServiceUnavailable {
				return fmt.Errorf("registry: creating bucket %s: %s", s.Bucket, last)
			}
		} else {
			last = err.Error()
		}
		select {
		case <-s.p.done:
			if tail := s.p.logs.tail(); bytes.Contains(tail, []byte("already in use")) {
				return fmt.Errorf("%w: the S3 store's %s", errPortInUse, s.Addr)
			}
			return fmt.Errorf("registry: the S3 store exited during startup (%v):\n%s", s.p.err, s.p.logs.tail())
		case <-ctx.Done():
			return fmt.Errorf("registry: the S3 store at %s: no bucket (%s): %w\n%s", s.Addr, last, ctx.Err(), s.p.logs.tail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// sign signs req, which has no body, with AWS Signature Version 4
// (docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html),
// for a path that needs no escaping and no query.
func (s *Store) sign(req *http.Request, now time.Time) {
	const emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	stamp, day := now.Format("20060102T150405Z"), now.Format("20060102")
	req.Header.Set("X-Amz-Date", stamp)
	req.Header.Set("X-Amz-Content-Sha256", emptySHA256)
	const signed = "host;x-amz-content-sha256;x-amz-date"
	canonical := req.Method + "\n" + req.URL.Path + "\n\n" +
		"host:" + req.URL.Host + "\nx-amz-content-sha256:" + emptySHA256 + "\nx-amz-date:" + stamp + "\n\n" +
		signed + "\n" + emptySHA256
	scope := day + "/" + s3Region + "/s3/aws4_request"
	sum := sha256.Sum256([]byte(canonical))
	toSign := "AWS4-HMAC-SHA256\n" + stamp + "\n" + scope + "\n" + hex.EncodeToString(sum[:])
	key := []byte("AWS4" + s.SecretKey)
	for _, part := range []string{day, s3Region, "s3", "aws4_request", toSign} {
		key = hmacSHA256(key, part)
	}
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential="+s.AccessKey+"/"+scope+
		", SignedHeaders="+signed+", Signature="+hex.EncodeToString(key))
}

func hmacSHA256(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}

// copyFile copies the file from to to, mode 0600.
func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o600)
}

// stopStore stops the store, if there is one.
func (r *Registry) stopStore() {
	if r.Store != nil && r.Store.p != nil {
		r.Store.p.signal(syscall.SIGTERM)
		select {
		case <-r.Store.p.done:
		case <-time.After(termGrace):
			_ = r.Store.p.kill()
		}
	}
}

// s3Params are the registry's storage settings for the store, or nil.
func (r *Registry) s3Params(o *S3Options) *s3Params {
	if o == nil {
		return nil
	}
	return &s3Params{endpoint: "https://" + r.Store.Addr, bucket: r.Store.Bucket,
		accessKey: r.Store.AccessKey, secretKey: r.Store.SecretKey, redirectEndpoint: o.RedirectEndpoint}
}
