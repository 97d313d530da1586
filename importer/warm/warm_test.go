package warm_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/diskimporter/diskimporter/e2e/containerd"
	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/blob"
	"github.com/diskimporter/diskimporter/importer/reason"
	"github.com/diskimporter/diskimporter/importer/warm"
)

const diskFile = "disk/disk.img"

// TestWarm warms the importer's image from the registry, through its 307
// to the store, into a fresh containerd, and checks what a node's pull
// then finds: the blobs, the CRI plugin's image records and the unpacked
// disk, all kept by a garbage collection; containerd's own fetch, the
// CRI plugin's PullImage (the kubelet's call) and a second warm read no
// layer byte from the store.
func TestWarm(t *testing.T) {
	f := setup(t)
	c := containerd.StartT(t, containerd.Options{})
	n := newNode(t, c)
	t.Logf("containerd %s, snapshotter %s", c.Address, c.Snapshotter)
	layer, manifest := f.imported.LayerDigest, f.imported.ManifestDigest

	var mu sync.Mutex
	var phases []importer.Phase
	o := f.options(t, c)
	o.ProgressInterval = 10 * time.Millisecond
	o.Logger = slog.New(slog.DiscardHandler) // a line every 10 ms
	o.OnProgress = func(p importer.Progress) {
		mu.Lock()
		defer mu.Unlock()
		if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
			phases = append(phases, p.Phase)
		}
	}
	start := time.Now()
	res, err := warm.Warm(t.Context(), f.tag, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("warmed in %v: %d bytes fetched, %d served by the store for the layer",
		time.Since(start).Round(time.Millisecond), res.BytesFetched, f.front.bytes(layer))

	if res.Digest != manifest || res.Manifest != manifest || !res.Recorded || !res.Unpacked {
		t.Errorf("result %+v: want digest and manifest %s, recorded and unpacked", res, manifest)
	}
	var total int64
	for _, b := range res.Blobs {
		if b.Action != warm.Fetched {
			t.Errorf("blob %s %s, want fetched", b.Digest, b.Action)
		}
		total += b.Size
	}
	if len(res.Blobs) != 3 || res.Blobs[2].Digest != layer || res.BytesFetched != total {
		t.Errorf("blobs %+v, %d bytes fetched: want the manifest, the config and layer %s, %d bytes", res.Blobs, res.BytesFetched, layer, total)
	}
	chunk, conns := o.ChunkSize, int64(o.Connections)
	if s := f.front.bytes(layer); s < f.imported.LayerSize || s > f.imported.LayerSize+conns*chunk {
		t.Errorf("the store served %d bytes of the %d-byte layer", s, f.imported.LayerSize)
	}
	mu.Lock()
	if len(phases) < 2 || phases[len(phases)-1] != importer.PhaseDone {
		t.Errorf("progress phases %v, want them to end with done", phases)
	}
	mu.Unlock()

	// What a pull leaves: the CRI plugin's records and containerd's
	// labels.
	repo := strings.TrimSuffix(f.tag, ":v1")
	config := res.Config
	imgs := n.images()
	for _, name := range []string{f.tag, repo + "@" + manifest, config} {
		img := imgs[name]
		switch {
		case img == nil:
			t.Errorf("no image %s; images: %v", name, keys(imgs))
		case img.Target.Digest != manifest || img.Labels["io.cri-containerd.image"] != "managed":
			t.Errorf("image %s: target %s, labels %v", name, img.Target.Digest, img.Labels)
		}
	}
	checkLabels(t, n, manifest, map[string]string{
		"containerd.io/gc.ref.content.config": config,
		"containerd.io/gc.ref.content.l.0":    layer,
	})
	// The layer is uncompressed: its chain ID is its digest.
	checkLabels(t, n, config, map[string]string{"containerd.io/gc.ref.snapshot." + c.Snapshotter: layer})
	checkLabels(t, n, layer, map[string]string{"containerd.io/uncompressed": layer})
	for _, l := range n.leases() {
		if strings.HasPrefix(l.ID, "diskimporter-warm-") {
			t.Errorf("lease %s left after the warm", l.ID)
		}
	}
	// The records hold everything through a garbage collection.
	n.collect()
	for _, d := range []string{manifest, config, layer} {
		if n.info(d) == nil {
			t.Errorf("blob %s collected", d)
		}
	}
	if err := sameBytes(n.readSnapshot(layer, diskFile), f.disk); err != nil {
		t.Errorf("the unpacked disk differs from the source: %v", err)
	}

	// The kubelet's check with imagePullPolicy: IfNotPresent.
	cri := runtimeapi.NewImageServiceClient(n.conn)
	var status *runtimeapi.ImageStatusResponse
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		status, err = cri.ImageStatus(t.Context(), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: f.tag}})
		if err == nil && status.Image != nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || status.Image == nil || status.Image.Id != config {
		t.Errorf("CRI ImageStatus %s: %v, %v; want image %s present", f.tag, status, err, config)
	}

	t.Run("second warm", func(t *testing.T) {
		f.front.reset()
		res, err := warm.Warm(t.Context(), f.tag, f.options(t, c))
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range res.Blobs {
			if b.Action != warm.Present {
				t.Errorf("blob %s %s, want present", b.Digest, b.Action)
			}
		}
		if res.BytesFetched != 0 || f.front.bytes(layer) != 0 || f.front.bytes(config) != 0 || !res.Recorded || !res.Unpacked {
			t.Errorf("second warm: %d bytes fetched, the store served %d of the layer and %d of the config, recorded %v, unpacked %v",
				res.BytesFetched, f.front.bytes(layer), f.front.bytes(config), res.Recorded, res.Unpacked)
		}
	})
	t.Run("by digest", func(t *testing.T) {
		res, err := warm.Warm(t.Context(), repo+"@"+manifest, f.options(t, c))
		if err != nil {
			t.Fatal(err)
		}
		if res.BytesFetched != 0 || len(res.Names) != 2 || res.Names[1] != repo+"@"+manifest {
			t.Errorf("result %+v: want nothing fetched, the names %s and %s@%s", res, config, repo, manifest)
		}
	})
	if err := c.WriteHosts(f.reg.Addr, f.reg.CAFile); err != nil {
		t.Fatal(err)
	}
	t.Run("ctr content fetch", func(t *testing.T) {
		f.front.reset()
		out, err := c.Ctr(t.Context(), "content", "fetch", "--hosts-dir", c.HostsDir,
			"--user", f.reg.Username+":"+f.reg.Password, f.tag).CombinedOutput()
		if err != nil {
			t.Fatalf("ctr content fetch: %v\n%s", err, out)
		}
		if s := f.front.bytes(layer); s != 0 {
			t.Errorf("containerd's fetch read %d bytes of the layer from the store, want 0", s)
		}
	})
	t.Run("CRI PullImage", func(t *testing.T) {
		f.front.reset()
		start := time.Now()
		resp, err := cri.PullImage(t.Context(), &runtimeapi.PullImageRequest{
			Image: &runtimeapi.ImageSpec{Image: f.tag},
			Auth:  &runtimeapi.AuthConfig{Username: f.reg.Username, Password: f.reg.Password},
		})
		if err != nil {
			t.Fatalf("PullImage: %v\n%s", err, c.LogTail())
		}
		t.Logf("PullImage of the warmed image took %v", time.Since(start).Round(time.Millisecond))
		if resp.ImageRef != config {
			t.Errorf("PullImage answered %s, want %s", resp.ImageRef, config)
		}
		if s := f.front.bytes(layer); s != 0 {
			t.Errorf("the kubelet's pull read %d bytes of the layer from the store, want 0", s)
		}
	})
}

// TestWarmIndex warms the image through an index, as a multi-platform
// containerDisk is published, without unpacking it: the index is written
// and labelled with its manifests, the records point at it, and no
// snapshot is made.
func TestWarmIndex(t *testing.T) {
	f := setup(t)
	c := containerd.StartT(t, containerd.Options{})
	n := newNode(t, c)
	o := f.options(t, c)
	o.Unpack = false
	res, err := warm.Warm(t.Context(), "docker://"+f.index, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Blobs) != 4 || res.Manifest != f.imported.ManifestDigest || res.Digest == res.Manifest {
		t.Fatalf("result %+v: want the index, the manifest %s, the config and the layer", res, f.imported.ManifestDigest)
	}
	if !res.Recorded || res.Unpacked || len(n.snapshots()) != 0 {
		t.Errorf("result %+v, snapshots %v: want it recorded, not unpacked", res, n.snapshots())
	}
	checkLabels(t, n, res.Digest, map[string]string{"containerd.io/gc.ref.content.m.0": res.Manifest})
	repo := strings.TrimSuffix(f.index, ":index")
	imgs := n.images()
	for _, name := range []string{f.index, repo + "@" + res.Digest, res.Config} {
		if img := imgs[name]; img == nil || img.Target.Digest != res.Digest || !strings.Contains(img.Target.MediaType, "index") {
			t.Errorf("image %s: %v, want it pointing at the index %s", name, img, res.Digest)
		}
	}
	n.collect()
	if n.info(f.imported.LayerDigest) == nil || n.info(res.Manifest) == nil {
		t.Error("a blob under the index was collected")
	}
}

// TestWarmResume cancels a warm half-way through the layer, as a SIGTERM
// does: it stops within seconds, and a second warm goes on from
// containerd's partial ingest, reading from the store only the rest of
// the layer (and at most what the reads in flight asked for).
func TestWarmResume(t *testing.T) {
	f := setup(t)
	c := containerd.StartT(t, containerd.Options{})
	n := newNode(t, c)
	layer, size := f.imported.LayerDigest, f.imported.LayerSize
	o := f.options(t, c)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var cancelled atomic.Int64
	f.front.setHook(func(hex string, served int64) {
		if "sha256:"+hex == layer && served >= size/2 && cancelled.CompareAndSwap(0, time.Now().UnixNano()) {
			cancel()
		}
	})
	_, err := warm.Warm(ctx, f.tag, o)
	if cancelled.Load() == 0 {
		t.Fatalf("the warm ended before half the layer was served: %v", err)
	}
	stopped := time.Since(time.Unix(0, cancelled.Load()))
	t.Logf("cancelled: stopped %v after the cancel: %v", stopped.Round(time.Millisecond), err)
	if reason.Of(err) != reason.Cancelled {
		t.Fatalf("error %v (%s), want Cancelled", err, reason.Of(err))
	}
	if stopped > 5*time.Second {
		t.Errorf("the warm took %v to stop after the cancel", stopped)
	}
	first := f.front.bytes(layer)
	var offset int64
	for _, st := range n.ingests() {
		if st.Ref == "layer-"+layer {
			offset = st.Offset
		}
	}
	if offset <= 0 || offset >= size {
		t.Fatalf("containerd's ingest of the layer is at byte %d of %d (ingests %v)", offset, size, n.ingests())
	}
	// The ingest outlives a garbage collection: the lease holds it.
	n.collect()
	if len(n.ingests()) == 0 {
		t.Fatal("the partial ingest was collected")
	}

	f.front.reset()
	res, err := warm.Warm(t.Context(), f.tag, o)
	if err != nil {
		t.Fatal(err)
	}
	b := res.Blobs[2]
	served := f.front.bytes(layer)
	rest := size - offset
	t.Logf("resumed from byte %d of %d: the store served %d bytes for the %d left (%.1f%%)", b.ResumedFrom, size, served, rest, 100*float64(served)/float64(rest))
	if b.Action != warm.Resumed || b.ResumedFrom != offset {
		t.Errorf("layer %+v, want resumed from %d", b, offset)
	}
	if bound := rest + int64(o.Connections)*o.ChunkSize + 64<<10; served < rest || served > bound {
		t.Errorf("the store served %d bytes of the layer, want %d to %d", served, rest, bound)
	}
	// Both runs: the layer once, and what was in flight at the cancel
	// (the reads' buffers, the messages to containerd) and the probe.
	t.Logf("both runs: the store served %d bytes for the %d-byte layer (+%.1f%%)", first+served, size, 100*float64(first+served-size)/float64(size))
	if bound := size + int64(o.Connections)*o.ChunkSize + 4<<20 + 64<<10; first+served > bound {
		t.Errorf("both runs: the store served %d bytes of the %d-byte layer, more than %d", first+served, size, bound)
	}
	if !res.Recorded || !res.Unpacked {
		t.Errorf("result %+v: want recorded and unpacked", res)
	}
	if err := sameBytes(n.readSnapshot(layer, diskFile), f.disk); err != nil {
		t.Errorf("the unpacked disk differs from the source: %v", err)
	}
	if len(n.ingests()) != 0 {
		t.Errorf("ingests left: %v", n.ingests())
	}
}

// TestWarmResumeWrongIngest: a warm killed while the store served wrong
// bytes leaves a partial ingest that holds them; the next warm resumes
// it, containerd refuses the commit, and the warm starts the layer over
// from byte 0 and finishes.
func TestWarmResumeWrongIngest(t *testing.T) {
	f := setup(t)
	c := containerd.StartT(t, containerd.Options{})
	n := newNode(t, c)
	layer, size := f.imported.LayerDigest, f.imported.LayerSize
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	f.front.setCorrupt(layer)
	f.front.setHook(func(hex string, served int64) {
		if "sha256:"+hex == layer && served >= size/2 {
			cancel()
		}
	})
	if _, err := warm.Warm(ctx, f.tag, f.options(t, c)); reason.Of(err) != reason.Cancelled {
		t.Fatalf("error %v (%s), want Cancelled", err, reason.Of(err))
	}
	if len(n.ingests()) == 0 {
		t.Fatal("no partial ingest left")
	}
	f.front.reset()
	res, err := warm.Warm(t.Context(), f.tag, f.options(t, c))
	if err != nil {
		t.Fatal(err)
	}
	if b := res.Blobs[2]; b.Action != warm.Fetched {
		t.Errorf("layer %+v, want fetched again from byte 0", b)
	}
	if s := f.front.bytes(layer); s < size {
		t.Errorf("the store served %d bytes of the layer: not the whole of it again", s)
	}
	if err := sameBytes(n.readSnapshot(layer, diskFile), f.disk); err != nil {
		t.Errorf("the unpacked disk differs from the source: %v", err)
	}
}

// TestWarmWrongBytes: a store that serves wrong bytes for the layer. The
// commit is refused by containerd, the warm fails as CorruptSource, and
// nothing is left: no blob, no ingest, no image, no snapshot.
func TestWarmWrongBytes(t *testing.T) {
	f := setup(t)
	c := containerd.StartT(t, containerd.Options{})
	n := newNode(t, c)
	f.front.setCorrupt(f.imported.LayerDigest)
	_, err := warm.Warm(t.Context(), f.tag, f.options(t, c))
	t.Logf("error: %v", err)
	if reason.Of(err) != reason.CorruptSource || !errors.Is(err, blob.ErrDigest) || !strings.Contains(err.Error(), f.imported.LayerDigest) {
		t.Fatalf("error %v (%s), want CorruptSource naming the layer", err, reason.Of(err))
	}
	if n.info(f.imported.LayerDigest) != nil {
		t.Error("the layer was committed")
	}
	if len(n.ingests()) != 0 || len(n.images()) != 0 || len(n.snapshots()) != 0 {
		t.Errorf("left behind: ingests %v, images %v, snapshots %v", n.ingests(), keys(n.images()), n.snapshots())
	}
}

// TestWarmSizeBounds: a layer above MaxBlobSize is skipped; the image is
// then neither recorded nor unpacked (the kubelet would take it for
// pulled), and what was written stays, held by the lease.
func TestWarmSizeBounds(t *testing.T) {
	f := setup(t)
	c := containerd.StartT(t, containerd.Options{})
	n := newNode(t, c)
	o := f.options(t, c)
	o.MaxBlobSize = 1 << 20
	res, err := warm.Warm(t.Context(), f.tag, o)
	if err != nil {
		t.Fatal(err)
	}
	if res.Blobs[2].Action != warm.Skipped || res.Recorded || res.Unpacked || len(n.images()) != 0 {
		t.Errorf("result %+v, images %v: want the layer skipped, nothing recorded", res, keys(n.images()))
	}
	if s := f.front.bytes(f.imported.LayerDigest); s != 0 {
		t.Errorf("the store served %d bytes of the skipped layer", s)
	}
	n.collect()
	if n.info(f.imported.ManifestDigest) == nil || n.info(res.Config) == nil {
		t.Error("the manifest or the config was collected: the lease should hold them")
	}
}

// TestWarmConcurrent: two warms of one image at once into one containerd
// both succeed, and the layer is read from the store once: the second
// waits for the first and finds the blobs present.
func TestWarmConcurrent(t *testing.T) {
	f := setup(t)
	c := containerd.StartT(t, containerd.Options{})
	var wg sync.WaitGroup
	results := make([]*warm.Result, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Go(func() { results[i], errs[i] = warm.Warm(t.Context(), f.tag, f.options(t, c)) })
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	fetched := results[0].BytesFetched + results[1].BytesFetched
	if s := f.front.bytes(f.imported.LayerDigest); s > f.imported.LayerSize+4<<20 || fetched > f.imported.LayerSize+4<<10 {
		t.Errorf("the store served %d bytes of the %d-byte layer, the warms fetched %d", s, f.imported.LayerSize, fetched)
	}
}

// TestWarmNative unpacks into the native snapshotter, where overlayfs
// cannot mount.
func TestWarmNative(t *testing.T) {
	f := setup(t)
	c := containerd.StartT(t, containerd.Options{Snapshotter: "native"})
	n := newNode(t, c)
	res, err := warm.Warm(t.Context(), f.tag, f.options(t, c))
	if err != nil {
		t.Fatal(err)
	}
	if res.Snapshotter != "native" || !res.Unpacked {
		t.Errorf("result %+v: want unpacked into native", res)
	}
	checkLabels(t, n, res.Config, map[string]string{"containerd.io/gc.ref.snapshot.native": f.imported.LayerDigest})
	if err := sameBytes(n.readSnapshot(f.imported.LayerDigest, diskFile), f.disk); err != nil {
		t.Errorf("the unpacked disk differs from the source: %v", err)
	}
}

// TestRegistryErrors: a tag the registry does not have, or an index with
// no image for the platform, is SourceNotFound, and nothing is written.
func TestRegistryErrors(t *testing.T) {
	f := setup(t)
	c := containerd.StartT(t, containerd.Options{})
	n := newNode(t, c)
	_, err := warm.Warm(t.Context(), f.reg.Addr+"/warm/disk:missing", f.options(t, c))
	if reason.Of(err) != reason.SourceNotFound {
		t.Errorf("error %v (%s), want SourceNotFound", err, reason.Of(err))
	}
	o := f.options(t, c)
	o.Username, o.Password = f.reg.Username, "wrong"
	_, err = warm.Warm(t.Context(), f.tag, o)
	if reason.Of(err) != reason.SourceUnauthorized || strings.Contains(err.Error(), "wrong") {
		t.Errorf("error %v (%s), want SourceUnauthorized, without the password", err, reason.Of(err))
	}
	o = f.options(t, c)
	o.Platform = "linux/s390x"
	_, err = warm.Warm(t.Context(), f.index, o)
	if reason.Of(err) != reason.SourceNotFound || !errors.Is(err, blob.ErrPlatform) || !strings.Contains(err.Error(), "the index has linux/amd64") {
		t.Errorf("error %v (%s), want SourceNotFound: no image for linux/s390x", err, reason.Of(err))
	}
	if len(n.images()) != 0 || len(n.leases()) != 0 {
		t.Errorf("left behind: images %v, leases %v", keys(n.images()), n.leases())
	}
}

// TestUnreachable: a containerd socket that is missing, refuses, or is no
// socket fails at once, before the registry is asked, as ContainerdError
// naming the socket and the flag to fix.
func TestUnreachable(t *testing.T) {
	dir := t.TempDir()
	refused := filepath.Join(dir, "refused.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: refused, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, address, want string }{
		{"missing", filepath.Join(dir, "none.sock"), "no containerd socket"},
		{"refused", refused, "cannot be reached"},
		{"not a socket", regular, "is not a socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			// Port 1: a registry request would fail otherwise.
			_, err := warm.Warm(t.Context(), "127.0.0.1:1/repo:tag", warm.Options{Address: tc.address})
			if reason.Of(err) != reason.ContainerdError || !strings.Contains(err.Error(), tc.address) ||
				!strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "--containerd-address") {
				t.Errorf("error %v (%s), want ContainerdError naming %s and saying %q", err, reason.Of(err), tc.address, tc.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

func checkLabels(t *testing.T, n *node, dgst string, want map[string]string) {
	t.Helper()
	info := n.info(dgst)
	if info == nil {
		t.Errorf("blob %s absent", dgst)
		return
	}
	for k, v := range want {
		if info.Labels[k] != v {
			t.Errorf("blob %s: label %s = %q, want %q (labels %v)", dgst, k, info.Labels[k], v, info.Labels)
		}
	}
}

func keys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
