package main

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/diskimporter/diskimporter/e2e/registry"
)

// pullRate is the per-connection rate of the throttled object store of
// the pull rows.
var pullRate float64

// The pull rows read the imported disk back out of a registry. A "front"
// registry on loopback proxies the real one but answers blob GETs with a
// 307 to an object store on another port, as registries backed by S3 or
// GCS do, with a presigned-looking query. The store serves the blob file
// from the real registry's storage (Range, Last-Modified), each
// connection paced to pullRate (the throttled front) or not (the fast
// front).
var pullRows = map[string]bool{
	"pull-export-1": true, "pull-export-4": true, "pull-export-8": true, "pull-export-16": true,
	"pull-crane": true, "pull-oras": true,
	"pull-export-fast-1": true, "pull-export-fast-8": true, "pull-curl-fast": true,
	"pull-export-direct": true,
}

// pull is what the pull rows share, made on the first of them.
type pull struct {
	dockerConfig string // a Docker config.json with credentials for both fronts
	ref          string // REPO:TAG on the front registries' host
	digest       string // the layer blob's digest
	throttled    string // host:port of the throttled front
	fast         string // host:port of the fast front
	fastStoreURL string // the blob's presigned URL at the fast store
	caFile       string // trusted for both fronts and stores
}

func (s *setup) preparePull(ctx context.Context) (*pull, error) {
	if s.pull != nil {
		return s.pull, nil
	}
	// The disk, imported once (untimed).
	repo := s.reg.Addr + "/bench/pull:v1"
	cmd := exec.CommandContext(ctx, s.importer, "import", "--source", s.sourceURL+"disk.img", "--destination", repo,
		"--ca-file", s.reg.CAFile, "--log-format", "json")
	cmd.Env = append(os.Environ(), "DISKIMPORTER_USERNAME="+s.reg.Username, "DISKIMPORTER_PASSWORD="+s.reg.Password)
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("importing the disk for the pull rows: %w", err)
	}
	var res struct {
		LayerDigest string `json:"layer_digest"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return nil, err
	}
	hex := strings.TrimPrefix(res.LayerDigest, "sha256:")
	blobFile := filepath.Join(s.reg.DataDir, "docker/registry/v2/blobs/sha256", hex[:2], hex, "data")
	if _, err := os.Stat(blobFile); err != nil {
		return nil, fmt.Errorf("the layer blob in the registry's storage: %w", err)
	}

	p := &pull{ref: "bench/pull:v1", digest: res.LayerDigest}
	var storeURL string
	if p.throttled, _, err = s.front(blobFile, pullRate); err != nil {
		return nil, err
	}
	if p.fast, storeURL, err = s.front(blobFile, 0); err != nil {
		return nil, err
	}
	p.fastStoreURL = storeURL + "/blob?X-Amz-Signature=bench"
	// httptest servers share one certificate: its PEM trusts them all.
	p.caFile = filepath.Join(s.dir, "front-ca.pem")
	srv := httptest.NewUnstartedServer(nil)
	srv.StartTLS()
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	srv.Close()
	if err := os.WriteFile(p.caFile, caPEM, 0o644); err != nil {
		return nil, err
	}
	if p.dockerConfig, err = s.dockerConfigFile("docker-pull", p.throttled, p.fast); err != nil {
		return nil, err
	}
	s.pull = p
	return p, nil
}

// front starts a store serving blobFile (each connection paced to rate,
// unless 0) and a registry front proxying s.reg but redirecting blob GETs
// to the store. It returns the front's host:port and the store's URL.
func (s *setup) front(blobFile string, rate float64) (string, string, error) {
	store := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			http.Error(w, "only one auth mechanism allowed", http.StatusBadRequest) // as S3 answers
			return
		}
		http.ServeFile(w, r, blobFile)
	}))
	if rate > 0 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", "", err
		}
		store.Listener = throttledListener{Listener: ln, rate: rate}
	}
	store.StartTLS()

	upstream, err := url.Parse("https://" + s.reg.Addr)
	if err != nil {
		return "", "", err
	}
	proxy := httputil.NewSingleHostReverseProxy(upstream)
	pool, err := caPool(s.reg.CAFile)
	if err != nil {
		return "", "", err
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig.RootCAs = pool
	proxy.Transport = t
	front := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			http.Redirect(w, r, store.URL+"/blob?X-Amz-Signature=bench", http.StatusTemporaryRedirect)
			return
		}
		r.Host = upstream.Host
		proxy.ServeHTTP(w, r)
	}))
	return strings.TrimPrefix(front.URL, "https://"), store.URL, nil
}

// pullClient returns how a pull row runs.
func (s *setup) pullClient(ctx context.Context, row string) (*client, error) {
	p, err := s.preparePull(ctx)
	if err != nil {
		return nil, err
	}
	out := filepath.Join(s.dir, "pulled-"+row)
	os.Remove(out)
	host, note := p.throttled, "store "+rateString(pullRate)+" per connection"
	if strings.Contains(row, "-fast") {
		host, note = p.fast, "store unthrottled"
	}
	export := func(conns, registryHost, caFile string) *client {
		return &client{
			argv: []string{s.importer, "export", "--source", registryHost + "/" + p.ref, "--output", out,
				"--connections", conns, "--source-ca-file", caFile, "--log-format", "json"},
			env:  []string{"DISKIMPORTER_SOURCE_USERNAME=" + s.reg.Username, "DISKIMPORTER_SOURCE_PASSWORD=" + s.reg.Password},
			note: note + "; --connections " + conns,
			check: func([]byte) (string, error) {
				return note + "; --connections " + conns, s.checkPulled(out, false)
			},
		}
	}
	switch row {
	case "pull-export-1", "pull-export-4", "pull-export-8", "pull-export-16":
		return export(strings.TrimPrefix(row, "pull-export-"), host, p.caFile), nil
	case "pull-export-fast-1", "pull-export-fast-8":
		return export(strings.TrimPrefix(row, "pull-export-fast-"), host, p.caFile), nil
	case "pull-export-direct":
		c := export("8", s.reg.Addr, s.reg.CAFile)
		c.note = "the distribution registry serving the blob itself; --connections 8"
		c.check = func([]byte) (string, error) { return c.note, s.checkPulled(out, false) }
		return c, nil
	case "pull-curl-fast":
		return &client{
			argv:  []string{"curl", "-sSf", "--cacert", p.caFile, "-o", out, p.fastStoreURL},
			note:  "curl of the presigned URL, one stream, unthrottled; the whole blob",
			check: func([]byte) (string, error) { return "curl, one stream, store unthrottled", s.checkPulled(out, true) },
		}, nil
	case "pull-crane":
		bin, err := registry.Tool(ctx, "crane", craneModule, craneVersion)
		if err != nil {
			return nil, err
		}
		return &client{
			argv:  []string{"bash", "-c", `"$0" blob "$1" > "$2"`, bin, host + "/bench/pull@" + p.digest, out},
			env:   []string{"DOCKER_CONFIG=" + filepath.Dir(p.dockerConfig), "SSL_CERT_FILE=" + p.caFile},
			note:  note + "; crane blob REF@DIGEST > file; the whole blob",
			check: func([]byte) (string, error) { return note + "; crane blob, the whole blob", s.checkPulled(out, true) },
		}, nil
	case "pull-oras":
		bin, err := registry.Tool(ctx, "oras", orasModule, orasVersion)
		if err != nil {
			return nil, err
		}
		return &client{
			argv: []string{bin, "blob", "fetch", "--no-tty", "--ca-file", p.caFile, "--registry-config", p.dockerConfig,
				"--output", out, host + "/bench/pull@" + p.digest},
			note: note + "; oras blob fetch; the whole blob",
			check: func([]byte) (string, error) {
				return note + "; oras blob fetch, the whole blob", s.checkPulled(out, true)
			},
		}, nil
	}
	return nil, fmt.Errorf("unknown pull row %q", row)
}

// checkPulled checks what a pull row wrote: the disk (or, for the tools
// that fetch blobs, the whole layer blob), then removes it.
func (s *setup) checkPulled(path string, blob bool) error {
	defer os.Remove(path)
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	want := s.size
	if blob {
		// The tar headers, padding and trailer around the disk.
		want = s.size + 2048 + (512-s.size%512)%512
	}
	if fi.Size() != want {
		return fmt.Errorf("%s is %d bytes, want %d", path, fi.Size(), want)
	}
	return nil
}
