package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/diskimporter/diskimporter/e2e/registry"
)

// pullRate is the per-connection rate of the throttled object store of
// the pull rows.
var pullRate float64

// The pull rows read the imported disk back out of a registry. Except
// pull-export-direct, they read from distribution with its s3 storage
// driver on a real S3 store (MinIO over TLS, see e2e/registry), both
// pinned to core 1, which answers blob GETs with a 307 to a presigned URL
// of the store, as users run it. Two such registries, each with its own
// store and a copy of the disk imported untimed on first use:
//
//   - fast: the presigned URLs name the store itself (no
//     redirectendpoint): the client reads MinIO directly;
//   - throttled: the presigned URLs name a pacer (redirectendpoint), a
//     TCP forwarder in this process that passes the TLS stream through to
//     the store and paces what each connection receives to pullRate; the
//     store sees the Host the URL was signed for.
//
// pull-export-direct reads the filesystem registry, which serves the blob
// itself.
var pullRows = map[string]string{
	"pull-export-1":       throttledStore,
	"pull-export-4":       throttledStore,
	"pull-export-8":       throttledStore,
	"pull-export-16":      throttledStore,
	"pull-curl":           throttledStore,
	"pull-export-fast-1":  fastStore,
	"pull-export-fast-8":  fastStore,
	"pull-curl-fast":      fastStore,
	"pull-curl-fast-sync": fastStore,
	"pull-crane":          fastStore,
	"pull-oras":           fastStore,
	"pull-export-direct":  directStore,
}

// The stores the pull rows read from.
const (
	fastStore      = "fast"
	throttledStore = "throttled"
	directStore    = "direct"
)

// pullSource is a registry holding the disk for the pull rows.
type pullSource struct {
	reg          *registry.Registry
	ref          string // REGISTRY/REPO:TAG of the disk's image
	repo         string // REGISTRY/REPO
	digest       string // the layer blob's digest
	dockerConfig string // a Docker config.json with reg's credentials
	note         string // what a row's note says of the store
}

// pullSource returns the registry the rows of kind read, started and
// filled on first use.
func (s *setup) pullSource(ctx context.Context, kind string) (*pullSource, error) {
	if p := s.pulls[kind]; p != nil {
		return p, nil
	}
	p := &pullSource{}
	var err error
	switch kind {
	case directStore:
		p.reg, p.note = s.reg, "the filesystem registry serving the blob itself"
	case fastStore:
		p.reg, err = s.startS3(ctx, "")
		p.note = "S3 store unthrottled"
	case throttledStore:
		var pc *pacer
		if pc, err = s.newPacer(pullRate); err == nil {
			if p.reg, err = s.startS3(ctx, pc.url); err == nil {
				go pc.serve(p.reg.Store.Addr)
			}
		}
		p.note = "S3 store through a pacer, " + rateString(pullRate) + " per connection"
	}
	if err != nil {
		return nil, err
	}
	if err := s.fillPullSource(ctx, p, kind); err != nil {
		return nil, err
	}
	if s.pulls == nil {
		s.pulls = map[string]*pullSource{}
	}
	s.pulls[kind] = p
	return p, nil
}

// startS3 starts a registry on an S3 store, both on core 1 like s.reg,
// whose presigned URLs name redirectEndpoint (empty: the store), and
// registers it for cleanup.
func (s *setup) startS3(ctx context.Context, redirectEndpoint string) (*registry.Registry, error) {
	reg, err := registry.Start(ctx, registry.Options{CPUs: s.serverCPUs,
		S3: &registry.S3Options{RedirectEndpoint: redirectEndpoint}})
	if err != nil {
		return nil, err
	}
	s.stops = append(s.stops, func() { reg.Stop() })
	return reg, nil
}

// fillPullSource imports the disk into p.reg (untimed) and fills in the
// rest of p.
func (s *setup) fillPullSource(ctx context.Context, p *pullSource, kind string) error {
	p.repo = p.reg.Addr + "/bench/pull"
	p.ref = p.repo + ":v1"
	cmd := exec.CommandContext(ctx, s.importer, "import", "--source", s.sourceURL+"disk.img", "--destination", p.ref,
		"--ca-file", p.reg.CAFile, "--log-format", "json", "--scratch-dir", s.dir)
	cmd.Env = append(os.Environ(), "DISKIMPORTER_USERNAME="+p.reg.Username, "DISKIMPORTER_PASSWORD="+p.reg.Password)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("importing the disk for the pull rows: %w: %s", err, lastLine(stderr.String()))
	}
	var res struct {
		LayerDigest string `json:"layer_digest"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return err
	}
	p.digest = res.LayerDigest
	p.dockerConfig, err = s.dockerConfigFile("docker-pull-"+kind, p.reg)
	return err
}

// pullClient returns how a pull row runs.
func (s *setup) pullClient(ctx context.Context, row, limit string) (*client, error) {
	p, err := s.pullSource(ctx, pullRows[row])
	if err != nil {
		return nil, err
	}
	out := filepath.Join(s.dir, "pulled-"+row)
	os.Remove(out)
	if !s.pageCacheUp {
		if err := warmPageCache(filepath.Join(s.dir, "page-cache-warmup"), s.size); err != nil {
			return nil, err
		}
		s.pageCacheUp = true
	}
	blobRef := p.repo + "@" + p.digest
	switch row {
	case "pull-curl", "pull-curl-fast":
		url, err := presignedURL(ctx, p)
		if err != nil {
			return nil, err
		}
		return s.blobClient(p, out, "curl of the presigned URL, one stream; the whole blob",
			"curl", "-sSf", "--cacert", p.reg.CAFile, "-o", out, url), nil
	case "pull-curl-fast-sync":
		url, err := presignedURL(ctx, p)
		if err != nil {
			return nil, err
		}
		return s.blobClient(p, out, "pull-curl-fast, then sync FILE (an fsync, as export makes its output durable)",
			"bash", "-c", `curl -sSf --cacert "$0" -o "$1" "$2" && sync "$1"`, p.reg.CAFile, out, url), nil
	case "pull-crane":
		bin, err := registry.Tool(ctx, "crane", craneModule, craneVersion)
		if err != nil {
			return nil, err
		}
		c := s.blobClient(p, out, "crane blob REF@DIGEST > file; the whole blob",
			"bash", "-c", `"$0" blob "$1" > "$2"`, bin, blobRef, out)
		c.env = []string{"DOCKER_CONFIG=" + filepath.Dir(p.dockerConfig), "SSL_CERT_FILE=" + p.reg.CAFile}
		return c, nil
	case "pull-oras":
		bin, err := registry.Tool(ctx, "oras", orasModule, orasVersion)
		if err != nil {
			return nil, err
		}
		return s.blobClient(p, out, "oras blob fetch; the whole blob",
			bin, "blob", "fetch", "--no-tty", "--ca-file", p.reg.CAFile, "--registry-config", p.dockerConfig,
			"--output", out, blobRef), nil
	}
	conns := row[strings.LastIndex(row, "-")+1:]
	if row == "pull-export-direct" {
		conns = "8"
	}
	return s.exportClient(ctx, p, out, conns, row, limit)
}

// exportClient runs diskimporter export of p's disk into out with conns
// connections, with a CPU profile when -profile-dir is set.
func (s *setup) exportClient(ctx context.Context, p *pullSource, out, conns, row, limit string) (*client, error) {
	note := p.note + "; --connections " + conns
	argv := []string{s.importer, "export", "--source", p.ref, "--output", out,
		"--connections", conns, "--ca-file", p.reg.CAFile, "--log-format", "json"}
	prof, err := profileArgs(ctx, row, limit)
	if err != nil {
		return nil, err
	}
	return &client{
		argv:  append(argv, prof...),
		env:   credsEnv(p.reg),
		note:  note,
		check: func([]byte) (string, error) { return note, s.checkPulled(out, false) },
	}, nil
}

// blobClient runs argv, a tool that writes the whole layer blob of p into
// out.
func (s *setup) blobClient(p *pullSource, out, what string, argv ...string) *client {
	note := p.note + "; " + what
	return &client{
		argv:  argv,
		env:   credsEnv(p.reg),
		note:  note,
		check: func([]byte) (string, error) { return note, s.checkPulled(out, true) },
	}
}

// credsEnv gives a diskimporter child reg's credentials, for its source
// and its destination.
func credsEnv(reg *registry.Registry) []string {
	return []string{"DISKIMPORTER_USERNAME=" + reg.Username, "DISKIMPORTER_PASSWORD=" + reg.Password,
		"DISKIMPORTER_SOURCE_USERNAME=" + reg.Username, "DISKIMPORTER_SOURCE_PASSWORD=" + reg.Password}
}

// presignedURL asks p's registry for the layer blob, with credentials, and
// returns where it redirects: a presigned URL of the store, valid for 20
// minutes.
func presignedURL(ctx context.Context, p *pullSource) (string, error) {
	c := &http.Client{
		Transport:     &http.Transport{TLSClientConfig: p.reg.TLSConfig()},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	defer c.CloseIdleConnections()
	url := fmt.Sprintf("https://%s/v2/bench/pull/blobs/%s", p.reg.Addr, p.digest)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	req.SetBasicAuth(p.reg.Username, p.reg.Password)
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusTemporaryRedirect || !strings.Contains(loc, "X-Amz-Signature=") {
		return "", fmt.Errorf("GET %s: %s, Location %q: want a 307 to a presigned URL", url, resp.Status, loc)
	}
	return loc, nil
}

// warmPageCache writes size bytes to path and removes the file, untimed,
// before the first pull row. Every pull row writes the disk into the page
// cache and removes it at its end. Without this, whichever row came first
// paid about 0.4 CPU s/GiB more than when it came later, all of it in the
// kernel's copy into the page cache (copy_folio_from_iter_atomic, perf):
// the first writer of a run was charged for pages the later ones reuse.
func warmPageCache(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer os.Remove(path)
	buf := bytes.Repeat([]byte{0xa5}, 8<<20)
	for left := size; left > 0; left -= int64(len(buf)) {
		if _, err := f.Write(buf[:min(left, int64(len(buf)))]); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
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
