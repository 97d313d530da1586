package e2e

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/layer"
)

// holdAt forwards layer PATCHes to the registry, counting their body
// bytes; while armed, it stops a body at layer byte at, tells reached, and
// holds it until the client goes away.
type holdAt struct {
	at        int64
	armed     atomic.Bool
	reached   chan struct{}
	forwarded atomic.Int64
}

func (h *holdAt) handle(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodPatch || r.ContentLength < 1<<20 {
		return false
	}
	limit := int64(-1)
	if h.armed.Load() {
		limit = h.at // the first run's PATCH starts at 0
	}
	r.Body = &heldBody{rc: r.Body, left: limit, h: h}
	return false
}

// heldBody gives left bytes (all when left < 0), then forwards nothing
// more: it reads and drops the client's bytes until the client goes away
// (a server notices that only through the body while it is unread).
type heldBody struct {
	rc   io.ReadCloser
	left int64
	h    *holdAt
}

func (b *heldBody) Read(p []byte) (int, error) {
	if b.left == 0 {
		select {
		case b.h.reached <- struct{}{}:
		default:
		}
		for {
			if _, err := b.rc.Read(p); err != nil {
				return 0, errCut
			}
		}
	}
	if b.left > 0 && int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	if b.left > 0 {
		b.left -= int64(n)
	}
	b.h.forwarded.Add(int64(n))
	return n, err
}

func (b *heldBody) Close() error { return b.rc.Close() }

// TestKilledResumes: an import SIGKILLed once the registry holds 70% of
// the layer, run again with the same --checkpoint, goes on where the
// registry stands: the rerun sends the registry the rest only, reads the
// source from the last checkpoint on, and makes the image a clean import
// makes; the tag is absent until then.
func TestKilledResumes(t *testing.T) {
	needE2E(t)
	t.Parallel()
	const size = 128 << 20
	const interval = 8 << 20
	total, err := layer.TarSize(layer.DefaultDiskName, size)
	if err != nil {
		t.Fatal(err)
	}
	hold := &holdAt{at: total * 7 / 10, reached: make(chan struct{}, 1)}
	hold.armed.Store(true)
	proxy := newFaultProxy(t, hold.handle)
	source, served := countingSource(t, size)
	repo := newRepo(t)
	checkpoint := filepath.Join(t.TempDir(), "upload.checkpoint")
	args := []string{"--source", source, "--destination", proxy.addr + "/" + repo + ":v1", "--ca-file", proxy.caFile,
		"--log-format", "json", "--checkpoint", checkpoint, "--checkpoint-interval", strconv.Itoa(interval)}
	env := childEnv(t, credsEnv(reg)...)

	ctx, cancel := context.WithTimeout(t.Context(), cliTimeout)
	defer cancel()
	first := command(ctx, env, args...)
	var stderr bytes.Buffer
	first.Stdout, first.Stderr = io.Discard, &stderr
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-hold.reached:
	case <-ctx.Done():
		first.Process.Kill()
		first.Wait()
		t.Fatalf("the upload never reached 70%%:\n%s", stderr.String())
	}
	first.Process.Kill()
	first.Wait()
	hold.armed.Store(false)
	checkNoTag(t, reg, repo, "v1")
	if _, err := os.Stat(checkpoint); err != nil {
		t.Fatalf("no checkpoint file after the kill: %v\n%s", err, stderr.String())
	}
	sentBefore, servedBefore := hold.forwarded.Load(), served.Load()

	res := parseSuccess(t, runImport(t, env, args...))
	if want := layerDigest(t, size); res.LayerDigest != want {
		t.Errorf("layer %s, want the clean import's %s", res.LayerDigest, want)
	}
	if res.Resumes != 1 || res.ResumedFrom < total*6/10 {
		t.Errorf("resumes %d from %d, want 1 from about %d", res.Resumes, res.ResumedFrom, total*7/10)
	}
	resent := hold.forwarded.Load() - total // both runs
	reread := served.Load() - servedBefore - (size - res.ResumedFrom)
	if resent < 0 || resent > 1<<20 {
		t.Errorf("the registry received %d layer bytes twice, want at most what was in flight at the kill", resent)
	}
	if bound := int64(interval + 4*8<<20); reread > bound {
		t.Errorf("the rerun read %d bytes of the source it had read before, want at most %d (interval + read-ahead)", reread, bound)
	}
	if _, err := os.Stat(checkpoint); !os.IsNotExist(err) {
		t.Errorf("the checkpoint file is still there after the upload was committed: %v", err)
	}
	t.Logf("killed at %d of %d layer bytes; the rerun went on from %d, sent %d bytes again and read %d source bytes again (%v)",
		sentBefore, total, res.ResumedFrom, resent, reread, time.Duration(res.Seconds*float64(time.Second)))
}
