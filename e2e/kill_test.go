package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/e2e/registry"
)

// TestKilledMidUpload SIGKILLs the binary while the registry is receiving
// the disk layer, then runs the same command again: the rerun must succeed
// with the right image, and from the first run's start to the rerun's end
// the tag must never resolve to a manifest whose blobs are missing or
// short: it is either absent or the final, complete image.
func TestKilledMidUpload(t *testing.T) {
	needE2E(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	// The throttled source (slowSize bytes at slowRate), counting the
	// bytes it sends to each run.
	var runNo atomic.Int32
	var served, gets [2]atomic.Int64
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := runNo.Load()
		gets[i].Add(1)
		src.serveSlow(&killCountingWriter{ResponseWriter: w, n: &served[i]}, r)
	}))
	defer slow.Close()

	repo := newRepo(t)
	const tag = "v1"
	dest := reg.Addr + "/" + repo + ":" + tag
	source := slow.URL + "/slow.img"
	args := importArgs(reg, source, dest, "--progress-interval", "100ms")
	env := childEnv(t, credsEnv(reg)...)

	poll := newTagPoller(reg, repo, tag)
	pollCtx, stopPolling := context.WithCancel(ctx)
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		poll.run(pollCtx, 50*time.Millisecond)
	}()
	defer func() { stopPolling(); <-polled }()

	// First run: killed once the registry holds part of the layer.
	first := command(ctx, env, args...)
	stderr := &logSink{}
	first.Stdout, first.Stderr = io.Discard, stderr
	start := time.Now()
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- first.Wait() }()
	var pushed, uploaded int64
	for pushed < 1<<20 || uploaded == 0 {
		select {
		case err := <-exited:
			t.Fatalf("the import exited before it was killed (%v):\n%s", err, stderr.Bytes())
		case <-ctx.Done():
			first.Process.Kill()
			t.Fatalf("no upload in progress after %v (pushed %d, registry holds %d):\n%s",
				time.Since(start).Round(time.Millisecond), pushed, uploaded, stderr.Bytes())
		case <-time.After(20 * time.Millisecond):
		}
		pushed = pushingBytes(stderr.Bytes())
		uploaded = uploadInProgress(t, reg, repo)
	}
	if err := first.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Since(start)
	err := <-exited
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != -1 {
		t.Errorf("killed import ended with %v, want death by signal", err)
	}
	runNo.Store(1)
	head, err := poll.do(ctx, http.MethodHead, "https://"+reg.Addr+"/v2/"+repo+"/manifests/"+tag, ociManifest+", "+dockerManifest)
	if err != nil {
		t.Fatal(err)
	}
	head.Body.Close()
	if head.StatusCode != http.StatusNotFound {
		t.Errorf("right after the kill, HEAD manifest %s:%s answered %s, want 404", repo, tag, head.Status)
	}
	if status, digest := poll.once(ctx); status != http.StatusNotFound {
		t.Errorf("right after the kill, GET manifest %s:%s answered %d (digest %s), want 404", repo, tag, status, digest)
	}
	partial := uploadInProgress(t, reg, repo)
	t.Logf("first run killed after %v: %d bytes pushed per its progress log, the registry held %d bytes of the upload (%d at the kill); the source sent it %d bytes in %d GETs",
		killedAt.Round(time.Millisecond), pushed, partial, uploaded, served[0].Load(), gets[0].Load())

	// The same command again, to completion.
	second := command(ctx, env, args...)
	var stdout2, stderr2 bytes.Buffer
	second.Stdout, second.Stderr = &stdout2, &stderr2
	start = time.Now()
	err = second.Run()
	r := &run{args: args, stdout: stdout2.Bytes(), stderr: stderr2.Bytes(), took: time.Since(start)}
	if errors.As(err, &exitErr) && exitErr.Exited() {
		r.code = exitErr.ExitCode()
	} else if err != nil {
		t.Fatalf("rerun: %v (ctx: %v)\n%s", err, ctx.Err(), r)
	}
	res := parseSuccess(t, r)
	stopPolling()
	<-polled
	// One last look, after the rerun's end.
	if status, digest := poll.once(t.Context()); status != http.StatusOK || digest != res.ManifestDigest {
		t.Errorf("after the rerun, GET manifest %s:%s answered %d, digest %s; want 200, %s", repo, tag, status, digest, res.ManifestDigest)
	}
	t.Logf("rerun took %v; the source sent it %d bytes in %d GETs (disk %d bytes)",
		r.took.Round(time.Millisecond), served[1].Load(), gets[1].Load(), slowSize)
	if got := served[1].Load(); got < slowSize {
		t.Errorf("the source sent the rerun %d bytes, fewer than the %d-byte disk", got, slowSize)
	}

	verify(t, res, want{dest: dest, source: source, sha256: src.slowSum, size: slowSize, format: "raw", diskName: "disk.img"})

	obs := poll.summary()
	t.Logf("tag polled %d times from the first run's start to the rerun's end: absent %d, complete %d, partial %d, errors %d",
		obs.polls, obs.absent, obs.complete, len(obs.partial), len(obs.errors))
	for _, p := range obs.partial {
		t.Errorf("the tag pointed at a partial image: %s", p)
	}
	for _, e := range obs.errors {
		t.Errorf("polling the tag: %s", e)
	}
	for d := range obs.digests {
		if d != res.ManifestDigest {
			t.Errorf("the tag pointed at %s, not the final image %s", d, res.ManifestDigest)
		}
	}
	if obs.absent == 0 || obs.complete == 0 {
		t.Errorf("the tag was seen absent %d times and complete %d times, want both", obs.absent, obs.complete)
	}
}

// killCountingWriter counts the body bytes written through it.
type killCountingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w *killCountingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(int64(n))
	return n, err
}

// Unwrap lets http.ResponseController flush the underlying writer.
func (w *killCountingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// pushingBytes returns the largest byte count of a "pushing" progress
// record in the JSON log, or 0.
func pushingBytes(log []byte) int64 {
	var most int64
	for line := range strings.Lines(string(log)) {
		var rec struct {
			Msg   string `json:"msg"`
			Phase string `json:"phase"`
			Bytes int64  `json:"bytes"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "progress" && rec.Phase == "pushing" {
			most = max(most, rec.Bytes)
		}
	}
	return most
}

// uploadInProgress returns how many bytes of unfinished uploads to repo
// the registry has written to its storage (filesystem driver layout).
func uploadInProgress(t *testing.T, r *registry.Registry, repo string) int64 {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(r.DataDir, "docker", "registry", "v2", "repositories", repo, "_uploads", "*", "data"))
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// tagPoller looks at a tag again and again and checks, each time it
// resolves, that every blob its manifest refers to is in the registry
// with the size the manifest gives.
type tagPoller struct {
	reg       *registry.Registry
	repo, tag string
	client    *http.Client

	mu  sync.Mutex
	obs pollSummary
}

type pollSummary struct {
	polls, absent, complete int
	digests                 map[string]bool // manifest digests the tag resolved to
	partial, errors         []string
}

func newTagPoller(r *registry.Registry, repo, tag string) *tagPoller {
	return &tagPoller{
		reg: r, repo: repo, tag: tag,
		client: &http.Client{Transport: regTransport(r), Timeout: 5 * time.Second},
		obs:    pollSummary{digests: map[string]bool{}},
	}
}

// run polls every interval until ctx ends.
func (p *tagPoller) run(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		p.once(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// once looks at the tag and records what it saw; it returns the status of
// the manifest GET and the digest the tag resolved to.
func (p *tagPoller) once(ctx context.Context) (int, string) {
	status, digest, problem, err := p.look(ctx)
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case ctx.Err() != nil:
		return status, digest // stopped mid-look: not an observation
	case err != nil:
		p.obs.errors = append(p.obs.errors, err.Error())
	case status == http.StatusNotFound:
		p.obs.absent++
	case problem != "":
		p.obs.partial = append(p.obs.partial, problem)
		p.obs.digests[digest] = true
	default:
		p.obs.complete++
		p.obs.digests[digest] = true
	}
	p.obs.polls++
	return status, digest
}

func (p *tagPoller) summary() pollSummary {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.obs
}

// look GETs the manifest by tag and, when there is one, HEADs each blob
// it refers to. problem describes a missing or short blob.
func (p *tagPoller) look(ctx context.Context) (status int, digest, problem string, err error) {
	base := "https://" + p.reg.Addr + "/v2/" + p.repo
	resp, err := p.do(ctx, http.MethodGet, base+"/manifests/"+p.tag, ociManifest+", "+dockerManifest)
	if err != nil {
		return 0, "", "", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, "", "", err
	}
	switch resp.StatusCode {
	case http.StatusNotFound:
		return resp.StatusCode, "", "", nil
	case http.StatusOK:
	default:
		return resp.StatusCode, "", "", fmt.Errorf("GET manifest %s:%s: %s: %s", p.repo, p.tag, resp.Status, body)
	}
	digest = resp.Header.Get("Docker-Content-Digest")
	var m struct {
		Config struct {
			Digest string `json:"digest"`
			Size   int64  `json:"size"`
		} `json:"config"`
		Layers []struct {
			Digest string `json:"digest"`
			Size   int64  `json:"size"`
		} `json:"layers"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return resp.StatusCode, digest, fmt.Sprintf("manifest %s is not JSON: %v", digest, err), nil
	}
	if len(m.Layers) != 1 {
		problem = fmt.Sprintf("manifest %s has %d layers, want 1", digest, len(m.Layers))
	}
	for _, b := range append(m.Layers, m.Config) {
		hr, err := p.do(ctx, http.MethodHead, base+"/blobs/"+b.Digest, "")
		if err != nil {
			return resp.StatusCode, digest, "", err
		}
		hr.Body.Close()
		if hr.StatusCode != http.StatusOK || hr.ContentLength != b.Size {
			problem += fmt.Sprintf("manifest %s: blob %s of %d bytes: HEAD %s, Content-Length %s; ",
				digest, b.Digest, b.Size, hr.Status, strconv.FormatInt(hr.ContentLength, 10))
		}
	}
	return resp.StatusCode, digest, problem, nil
}

func (p *tagPoller) do(ctx context.Context, method, url, accept string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return nil, err
	}
	req.SetBasicAuth(p.reg.Username, p.reg.Password)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	return p.client.Do(req)
}
