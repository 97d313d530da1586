package warm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"time"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/api/types"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/blob"
)

// unpack unpacks the layers of img into the snapshotter as containerd's
// unpacker does after a pull: for each layer, unless the snapshot of its
// chain ID exists, an extraction snapshot is prepared on its parent, the
// diff service applies the layer to its mounts and checks the diff ID,
// and the snapshot is committed under the chain ID; the layer's blob is
// labelled with its uncompressed digest, and the config with the top
// snapshot (containerd.io/gc.ref.snapshot.SNAPSHOTTER), which keeps the
// snapshots from garbage collection once the image is recorded.
func (w *warmer) unpack(ctx context.Context, img *image) error {
	n, sn := w.node, w.s.Snapshotter
	cfg, err := v1.ParseConfigFile(bytes.NewReader(img.config))
	if err != nil {
		return fmt.Errorf("%w: %w: config %s: %w", importer.ErrCorruptSource, blob.ErrCorrupt, img.Manifest.Config.Digest, err)
	}
	layers, diffIDs := img.Manifest.Layers, cfg.RootFS.DiffIDs
	if len(layers) != len(diffIDs) {
		return fmt.Errorf("%w: %w: the manifest has %d layers, its config %d diff IDs", importer.ErrCorruptSource, blob.ErrCorrupt, len(layers), len(diffIDs))
	}
	w.done.Store(0)
	w.total.Store(int64(len(layers)))
	parent := ""
	for i, l := range layers {
		chain := chainID(parent, diffIDs[i].String())
		done, err := w.unpackLayer(ctx, sn, l, diffIDs[i].String(), parent, chain)
		if err != nil {
			return fmt.Errorf("unpacking layer %s of %s into %s: %w", l.Digest, w.s.display, sn, err)
		}
		if done {
			w.log.Info("layer unpacked", "digest", l.Digest, "chain_id", chain, "snapshotter", sn)
		}
		parent = chain
		w.done.Add(1)
	}
	return n.label(ctx, img.Manifest.Config.Digest.String(), map[string]string{labelGCRefSnapshot + sn: parent})
}

// unpackLayer unpacks layer l, whose diff ID is diffID, onto the snapshot
// parent as the snapshot chain. It says whether it did (false: the
// snapshot was there).
func (w *warmer) unpackLayer(ctx context.Context, sn string, l v1.Descriptor, diffID, parent, chain string) (bool, error) {
	n := w.node
	_, err := n.snapshots.Stat(n.ctx(ctx), &snapshotsapi.StatSnapshotRequest{Snapshotter: sn, Key: chain})
	switch {
	case err == nil:
		return false, n.hold(ctx, "snapshots/"+sn, chain)
	case status.Code(err) != codes.NotFound:
		return false, n.fail(ctx, "looking up snapshot "+chain, err)
	}
	labels := map[string]string{labelSnapshotRef: chain}
	key := fmt.Sprintf("extract-%s %s", uniquePart(), chain)
	prep, err := n.snapshots.Prepare(n.ctx(ctx), &snapshotsapi.PrepareSnapshotRequest{Snapshotter: sn, Key: key, Parent: parent, Labels: labels})
	if err != nil {
		return false, n.fail(ctx, "preparing snapshot "+key, err)
	}
	removeKey := func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dialTimeout)
		defer cancel()
		if _, err := n.snapshots.Remove(n.ctx(rctx), &snapshotsapi.RemoveSnapshotRequest{Snapshotter: sn, Key: key}); err != nil {
			w.log.Warn("an extraction snapshot was not removed; the lease releases it", "key", key, "error", err)
		}
	}
	applied, err := n.diff.Apply(n.ctx(ctx), &diffapi.ApplyRequest{
		Diff:   &types.Descriptor{MediaType: string(l.MediaType), Digest: l.Digest.String(), Size: l.Size, Annotations: l.Annotations},
		Mounts: prep.Mounts,
	})
	if err != nil {
		removeKey()
		return false, n.fail(ctx, "applying layer "+l.Digest.String(), err)
	}
	if got := applied.GetApplied().GetDigest(); got != diffID {
		removeKey()
		return false, fmt.Errorf("%w: %w: layer %s unpacks to %s, its config says %s", importer.ErrCorruptSource, blob.ErrCorrupt, l.Digest, got, diffID)
	}
	_, err = n.snapshots.Commit(n.ctx(ctx), &snapshotsapi.CommitSnapshotRequest{Snapshotter: sn, Name: chain, Key: key, Labels: labels})
	switch {
	case status.Code(err) == codes.AlreadyExists:
		// Another unpack (a kubelet's pull) committed it first.
		removeKey()
		return false, nil
	case err != nil:
		removeKey()
		return false, n.fail(ctx, "committing snapshot "+chain, err)
	}
	// As containerd's unpacker, once the diff ID is checked.
	return true, n.label(ctx, l.Digest.String(), map[string]string{labelUncompressed: diffID})
}

// chainID is the chain ID of a layer whose diff ID is diffID on the layers
// whose chain ID is parent ("" for the first layer), as the OCI image spec
// defines it.
func chainID(parent, diffID string) string {
	if parent == "" {
		return diffID
	}
	sum := sha256.Sum256([]byte(parent + " " + diffID))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// uniquePart makes an extraction snapshot's key unique, as containerd's
// unpacker does.
func uniquePart() string {
	var b [3]byte
	rand.Read(b[:])
	return fmt.Sprintf("%d-%s", time.Now().Nanosecond(), base64.URLEncoding.EncodeToString(b[:]))
}
