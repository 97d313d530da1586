package warm_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/diskimporter/diskimporter/e2e/containerd"
	"github.com/diskimporter/diskimporter/e2e/registry"
	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/testdisk"
	"github.com/diskimporter/diskimporter/importer/warm"
	"github.com/diskimporter/diskimporter/tlsconfig"
)

// diskSize is the disk of the test image: its layer is a little larger.
const diskSize = 64 << 20

// fixture is what the tests share: a registry whose data is in a real S3
// store (MinIO) and whose blob GETs answer 307 to presigned URLs of the
// store, reached through a front that counts what the store serves; and
// a containerDisk image made by the importer, alone and in an index.
type fixture struct {
	reg   *registry.Registry
	front *storeFront
	disk  []byte
	// tag is the image REGISTRY/REPO:TAG; index names an index of it.
	tag, index string
	imported   *importer.Result
}

var (
	fixOnce sync.Once
	fix     *fixture
	fixErr  error
	stopFix func()
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if stopFix != nil {
		stopFix()
	}
	os.Exit(code)
}

// setup skips t where the tests cannot run and returns the shared
// fixture, made on first use.
func setup(t *testing.T) *fixture {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a registry on MinIO and containerd; skipped with -short")
	}
	if why := containerd.CanRun(); why != "" {
		t.Skip(why)
	}
	fixOnce.Do(func() { fix, fixErr = newFixture() })
	if fixErr != nil {
		t.Fatal(fixErr)
	}
	fix.front.reset()
	return fix
}

func newFixture() (*fixture, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	front, err := newStoreFront()
	if err != nil {
		return nil, err
	}
	reg, err := registry.Start(ctx, registry.Options{S3: &registry.S3Options{RedirectEndpoint: front.URL}})
	if err != nil {
		front.Close()
		return nil, err
	}
	stopFix = func() { front.Close(); reg.Stop() }
	if err := front.Serve(reg); err != nil {
		return nil, err
	}
	f := &fixture{reg: reg, front: front, disk: make([]byte, diskSize)}
	if _, err := testdisk.New(diskSize).ReadAt(f.disk, 0); err != nil && err != io.EOF {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "warm-test-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	src := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(src, f.disk, 0o600); err != nil {
		return nil, err
	}
	f.tag = reg.Addr + "/warm/disk:v1"
	f.imported, err = importer.Run(ctx, importer.Options{
		SourceOptions:   importer.SourceOptions{Source: src, Platform: "linux/amd64"},
		Destination:     f.tag,
		RegistryOptions: f.registryOptions(reg),
	})
	if err != nil {
		return nil, fmt.Errorf("importing the test image: %w", err)
	}
	// The same image in an index, as a multi-platform containerDisk is.
	f.index = reg.Addr + "/warm/disk:index"
	if err := pushIndex(ctx, reg, f.tag, f.index); err != nil {
		return nil, fmt.Errorf("pushing the index: %w", err)
	}
	return f, nil
}

func (f *fixture) registryOptions(reg *registry.Registry) importer.RegistryOptions {
	return importer.RegistryOptions{
		RegistryTLS: tlsconfig.Options{CAFile: reg.CAFile},
		Username:    reg.Username, Password: reg.Password,
	}
}

// options are the warm's options for the fixture and containerd c, logging
// to t.
func (f *fixture) options(t *testing.T, c *containerd.Containerd) warm.Options {
	return warm.Options{
		Logger:          slog.New(slog.NewTextHandler(t.Output(), nil)),
		RegistryOptions: f.registryOptions(f.reg),
		ReadOptions:     importer.ReadOptions{Connections: 4, ChunkSize: 1 << 20},
		Platform:        "linux/amd64",
		Address:         c.Address,
		Snapshotter:     c.Snapshotter,
		Unpack:          true,
	}
}

// pushIndex pushes an index of the image src, for linux/amd64, as dst.
func pushIndex(ctx context.Context, reg *registry.Registry, src, dst string) error {
	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuth(&authn.Basic{Username: reg.Username, Password: reg.Password}),
		remote.WithTransport(&http.Transport{TLSClientConfig: reg.TLSConfig()}),
	}
	ref, err := name.ParseReference(src)
	if err != nil {
		return err
	}
	img, err := remote.Image(ref, opts...)
	if err != nil {
		return err
	}
	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{
		Add:        img,
		Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}},
	})
	dref, err := name.ParseReference(dst)
	if err != nil {
		return err
	}
	return remote.WriteIndex(dref, idx, opts...)
}

// storeFront counts the bytes the store serves of each blob through a
// registry.Front, can flip a byte of each response for one blob (a store
// serving wrong bytes), and calls a hook as bytes go by.
type storeFront struct {
	*registry.Front

	mu      sync.Mutex
	served  map[string]int64 // blob hex → body bytes served
	gets    map[string]int   // blob hex → GETs
	corrupt string           // blob hex whose bodies get a flipped byte
	hook    func(hex string, served int64)
}

func newStoreFront() (*storeFront, error) {
	front, err := registry.NewFront()
	if err != nil {
		return nil, err
	}
	f := &storeFront{Front: front}
	front.ModifyResponse = f.count
	f.reset()
	return f, nil
}

// blobPath finds the blob's hex in the store's path of its data.
var blobPath = regexp.MustCompile(`/blobs/sha256/[0-9a-f]{2}/([0-9a-f]{64})/data`)

// count wraps the body of a blob GET's response.
func (f *storeFront) count(resp *http.Response) error {
	m := blobPath.FindStringSubmatch(resp.Request.URL.Path)
	if m == nil || resp.Request.Method != http.MethodGet {
		return nil
	}
	f.mu.Lock()
	f.gets[m[1]]++
	corrupt := f.corrupt == m[1]
	f.mu.Unlock()
	resp.Body = &countingBody{ReadCloser: resp.Body, f: f, hex: m[1], corrupt: corrupt}
	return nil
}

func (f *storeFront) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.served, f.gets, f.corrupt, f.hook = map[string]int64{}, map[string]int{}, "", nil
}

// bytes is what the store served of the blob dgst.
func (f *storeFront) bytes(dgst string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.served[strings.TrimPrefix(dgst, "sha256:")]
}

func (f *storeFront) setHook(h func(hex string, served int64)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hook = h
}

func (f *storeFront) setCorrupt(dgst string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.corrupt = strings.TrimPrefix(dgst, "sha256:")
}

type countingBody struct {
	io.ReadCloser
	f       *storeFront
	hex     string
	corrupt bool
	flipped bool
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 && b.corrupt && !b.flipped {
		p[0] ^= 0xff
		b.flipped = true
	}
	b.f.mu.Lock()
	b.f.served[b.hex] += int64(n)
	served, hook := b.f.served[b.hex], b.f.hook
	b.f.mu.Unlock()
	if hook != nil && n > 0 {
		hook(b.hex, served)
	}
	return n, err
}

// node is a gRPC connection to containerd c, for the tests' own looks.
type node struct {
	t    *testing.T
	c    *containerd.Containerd
	conn *grpc.ClientConn
}

func newNode(t *testing.T, c *containerd.Containerd) *node {
	t.Helper()
	conn, err := c.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &node{t: t, c: c, conn: conn}
}

func (n *node) ctx() context.Context {
	return metadata.AppendToOutgoingContext(n.t.Context(), "containerd-namespace", containerd.Namespace)
}

// info is containerd's record of blob dgst, nil when it lacks it.
func (n *node) info(dgst string) *contentapi.Info {
	resp, err := contentapi.NewContentClient(n.conn).Info(n.ctx(), &contentapi.InfoRequest{Digest: dgst})
	if err != nil {
		return nil
	}
	return resp.Info
}

// ingests are containerd's partial ingests.
func (n *node) ingests() []*contentapi.Status {
	resp, err := contentapi.NewContentClient(n.conn).ListStatuses(n.ctx(), &contentapi.ListStatusesRequest{})
	if err != nil {
		n.t.Fatal(err)
	}
	return resp.Statuses
}

func (n *node) images() map[string]*imagesapi.Image {
	resp, err := imagesapi.NewImagesClient(n.conn).List(n.ctx(), &imagesapi.ListImagesRequest{})
	if err != nil {
		n.t.Fatal(err)
	}
	m := map[string]*imagesapi.Image{}
	for _, img := range resp.Images {
		m[img.Name] = img
	}
	return m
}

func (n *node) snapshots() []*snapshotsapi.Info {
	stream, err := snapshotsapi.NewSnapshotsClient(n.conn).List(n.ctx(), &snapshotsapi.ListSnapshotsRequest{Snapshotter: n.c.Snapshotter})
	if err != nil {
		n.t.Fatal(err)
	}
	var all []*snapshotsapi.Info
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return all
		}
		if err != nil {
			n.t.Fatal(err)
		}
		all = append(all, resp.Info...)
	}
}

func (n *node) leases() []*leasesapi.Lease {
	resp, err := leasesapi.NewLeasesClient(n.conn).List(n.ctx(), &leasesapi.ListRequest{})
	if err != nil {
		n.t.Fatal(err)
	}
	return resp.Leases
}

// collect runs containerd's garbage collector now: the deletion of a
// lease with sync set waits for a collection.
func (n *node) collect() {
	l := leasesapi.NewLeasesClient(n.conn)
	if _, err := l.Create(n.ctx(), &leasesapi.CreateRequest{ID: "warm-test-gc"}); err != nil {
		n.t.Fatal(err)
	}
	if _, err := l.Delete(n.ctx(), &leasesapi.DeleteRequest{ID: "warm-test-gc", Sync: true}); err != nil {
		n.t.Fatal(err)
	}
}

// readSnapshot reads file (a path in the image) from the committed
// snapshot chain, through a read-only view of it.
func (n *node) readSnapshot(chain, file string) []byte {
	n.t.Helper()
	s := snapshotsapi.NewSnapshotsClient(n.conn)
	key := "warm-test-view-" + strings.TrimPrefix(chain, "sha256:")[:12]
	resp, err := s.View(n.ctx(), &snapshotsapi.ViewSnapshotRequest{Snapshotter: n.c.Snapshotter, Key: key, Parent: chain})
	if err != nil {
		n.t.Fatalf("viewing snapshot %s: %v", chain, err)
	}
	defer s.Remove(n.ctx(), &snapshotsapi.RemoveSnapshotRequest{Snapshotter: n.c.Snapshotter, Key: key})
	var dirs []string
	for _, m := range resp.Mounts {
		switch m.Type {
		case "bind":
			dirs = append(dirs, m.Source)
		case "overlay":
			for _, o := range m.Options {
				if l, ok := strings.CutPrefix(o, "lowerdir="); ok {
					dirs = append(dirs, strings.Split(l, ":")...)
				}
			}
		}
	}
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, file))
		if err == nil {
			return b
		}
		if !errors.Is(err, os.ErrNotExist) {
			n.t.Fatal(err)
		}
	}
	n.t.Fatalf("%s not found in the mounts of snapshot %s: %v", file, chain, resp.Mounts)
	return nil
}

// sum is the digest of b.
func sum(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// sameBytes reports whether a and b are equal, saying where they first
// differ when not.
func sameBytes(a, b []byte) error {
	if len(a) != len(b) {
		return fmt.Errorf("%d bytes, want %d", len(a), len(b))
	}
	if bytes.Equal(a, b) {
		return nil
	}
	for i := range a {
		if a[i] != b[i] {
			return fmt.Errorf("byte %d is %#x, want %#x", i, a[i], b[i])
		}
	}
	return nil
}
