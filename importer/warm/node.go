package warm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/diskimporter/diskimporter/importer"
)

// containerd's gRPC metadata keys and labels.
const (
	namespaceHeader = "containerd-namespace"
	leaseHeader     = "containerd-lease"
	labelGCExpire   = "containerd.io/gc.expire"
)

// leaseTTL is how long the lease of a warm holds what it wrote when the
// warm does not finish: time for a rerun to go on from there.
const leaseTTL = 24 * time.Hour

// dialTimeout bounds the first request, which says whether containerd
// answers at all.
const dialTimeout = 10 * time.Second

// node is a connection to the node's containerd.
type node struct {
	conn      *grpc.ClientConn
	address   string
	namespace string
	leaseID   string

	content   contentapi.ContentClient
	images    imagesapi.ImagesClient
	leases    leasesapi.LeasesClient
	snapshots snapshotsapi.SnapshotsClient
	diff      diffapi.DiffClient
}

// dial connects to the containerd socket at address and checks that it
// answers.
func dial(ctx context.Context, address, namespace string) (*node, error) {
	fi, err := os.Stat(address)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("%w: no containerd socket at %s: is containerd running on this node, and its socket mounted here? Give its path with --containerd-address (Options.Address)",
			ErrContainerd, address)
	case errors.Is(err, os.ErrPermission):
		return nil, fmt.Errorf("%w: containerd socket %s: %w: run as root, or as a user the socket admits", ErrContainerd, address, err)
	case err != nil:
		return nil, fmt.Errorf("%w: containerd socket %s: %w", ErrContainerd, address, err)
	case fi.Mode()&os.ModeSocket == 0:
		return nil, fmt.Errorf("%w: %s is not a socket (%s): give containerd's socket with --containerd-address (Options.Address)", ErrContainerd, address, fi.Mode().Type())
	}
	conn, err := grpc.NewClient("unix://"+address,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// containerd answers every blob write message: those are small.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		return nil, fmt.Errorf("%w: containerd socket %s: %w", ErrContainerd, address, err)
	}
	n := &node{
		conn: conn, address: address, namespace: namespace,
		content:   contentapi.NewContentClient(conn),
		images:    imagesapi.NewImagesClient(conn),
		leases:    leasesapi.NewLeasesClient(conn),
		snapshots: snapshotsapi.NewSnapshotsClient(conn),
		diff:      diffapi.NewDiffClient(conn),
	}
	vctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	if _, err := versionapi.NewVersionClient(conn).Version(vctx, &emptypb.Empty{}); err != nil {
		conn.Close()
		if ctx.Err() == nil && vctx.Err() != nil {
			return nil, fmt.Errorf("%w: containerd at %s did not answer within %v: is containerd running on this node?", ErrContainerd, address, dialTimeout)
		}
		return nil, n.fail(ctx, "asking its version", err)
	}
	return n, nil
}

func (n *node) close() { n.conn.Close() }

// ctx is ctx with the namespace and, once taken, the lease, as containerd
// reads them from the gRPC metadata.
func (n *node) ctx(ctx context.Context) context.Context {
	md := metadata.Pairs(namespaceHeader, n.namespace)
	if n.leaseID != "" {
		md.Set(leaseHeader, n.leaseID)
	}
	return metadata.NewOutgoingContext(ctx, md)
}

// fail is the error of containerd request what that failed with err.
func (n *node) fail(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return errCancelled(ctx, what)
	}
	st, _ := status.FromError(err)
	switch {
	case st.Code() == codes.Unavailable && strings.Contains(st.Message(), "permission denied"):
		return fmt.Errorf("%w: %s: no permission to use containerd's socket %s: run as root, or as a user the socket admits: %w", ErrContainerd, what, n.address, err)
	case st.Code() == codes.Unavailable && (strings.Contains(st.Message(), "connect:") || strings.Contains(st.Message(), "connection")):
		return fmt.Errorf("%w: %s: containerd at %s cannot be reached: is containerd running on this node, and its socket mounted here? (--containerd-address, Options.Address): %w",
			ErrContainerd, what, n.address, err)
	}
	return fmt.Errorf("%w: %s: containerd at %s: %w", ErrContainerd, what, n.address, err)
}

// lease takes the lease under which the image top's blobs are written:
// the same one for every warm of that image, so that a warm killed
// half-way leaves its ingests to the next one, which goes on with them.
// It expires after leaseTTL. release removes it.
func (n *node) lease(ctx context.Context, top string) (release func(context.Context) error, err error) {
	sum := sha256.Sum256([]byte(top))
	id := "diskimporter-warm-" + hex.EncodeToString(sum[:16])
	_, err = n.leases.Create(n.ctx(ctx), &leasesapi.CreateRequest{
		ID:     id,
		Labels: map[string]string{labelGCExpire: time.Now().Add(leaseTTL).UTC().Format(time.RFC3339)},
	})
	if err != nil && status.Code(err) != codes.AlreadyExists {
		return nil, n.fail(ctx, "creating a lease", err)
	}
	n.leaseID = id
	return func(ctx context.Context) error {
		n.leaseID = ""
		_, err := n.leases.Delete(n.ctx(ctx), &leasesapi.DeleteRequest{ID: id})
		if err != nil && status.Code(err) != codes.NotFound {
			return n.fail(ctx, "removing lease "+id, err)
		}
		return nil
	}, nil
}

// hold adds the resource id of type typ ("content", or
// "snapshots/SNAPSHOTTER") to the lease, as containerd's writer does for
// a blob it finds present: what the warm found in containerd, unused
// until the image is recorded, is not collected before.
func (n *node) hold(ctx context.Context, typ, id string) error {
	_, err := n.leases.AddResource(n.ctx(ctx), &leasesapi.AddResourceRequest{
		ID: n.leaseID, Resource: &leasesapi.Resource{ID: id, Type: typ},
	})
	if err != nil {
		return n.fail(ctx, "adding "+id+" to lease "+n.leaseID, err)
	}
	return nil
}

// info returns containerd's record of the blob dgst, or nil when it does
// not have it.
func (n *node) info(ctx context.Context, dgst string) (*contentapi.Info, error) {
	resp, err := n.content.Info(n.ctx(ctx), &contentapi.InfoRequest{Digest: dgst})
	switch {
	case status.Code(err) == codes.NotFound:
		return nil, nil
	case err != nil:
		return nil, n.fail(ctx, "looking up blob "+dgst, err)
	}
	return resp.Info, nil
}

// read returns the bytes of the blob desc, at most limit of them, from
// containerd; nil when containerd does not have it.
func (n *node) read(ctx context.Context, desc v1.Descriptor, limit int64) ([]byte, error) {
	if desc.Size > limit {
		return nil, fmt.Errorf("%w: blob %s is %d bytes by its descriptor, more than the %d allowed", importer.ErrCorruptSource, desc.Digest, desc.Size, limit)
	}
	info, err := n.info(ctx, desc.Digest.String())
	if err != nil || info == nil {
		return nil, err
	}
	if info.Size != desc.Size {
		return nil, fmt.Errorf("%w: containerd's blob %s is %d bytes, its descriptor says %d", ErrContainerd, desc.Digest, info.Size, desc.Size)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := n.content.Read(n.ctx(ctx), &contentapi.ReadContentRequest{Digest: desc.Digest.String()})
	if err != nil {
		return nil, n.fail(ctx, "reading blob "+desc.Digest.String(), err)
	}
	b := make([]byte, 0, desc.Size)
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			if status.Code(err) == codes.NotFound {
				return nil, nil // removed since
			}
			return nil, n.fail(ctx, "reading blob "+desc.Digest.String(), err)
		}
		if resp.Offset != int64(len(b)) || int64(len(b)+len(resp.Data)) > desc.Size {
			return nil, fmt.Errorf("%w: reading blob %s: containerd sent bytes from %d, past the %d read of its %d", ErrContainerd, desc.Digest, resp.Offset, len(b), desc.Size)
		}
		b = append(b, resp.Data...)
	}
	if int64(len(b)) != desc.Size {
		return nil, fmt.Errorf("%w: reading blob %s: containerd sent %d of its %d bytes", ErrContainerd, desc.Digest, len(b), desc.Size)
	}
	return b, nil
}

// label sets labels on the blob dgst, leaving its other labels as they
// are.
func (n *node) label(ctx context.Context, dgst string, labels map[string]string) error {
	if len(labels) == 0 {
		return nil
	}
	paths := make([]string, 0, len(labels))
	for k := range labels {
		paths = append(paths, "labels."+k)
	}
	_, err := n.content.Update(n.ctx(ctx), &contentapi.UpdateRequest{
		Info:       &contentapi.Info{Digest: dgst, Labels: labels},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: paths},
	})
	if err != nil {
		return n.fail(ctx, "labelling blob "+dgst, err)
	}
	return nil
}

// abort removes the ingest ref, if any. It runs on a context of its own:
// the warm's may be the one that ended.
func (n *node) abort(ctx context.Context, ref string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dialTimeout)
	defer cancel()
	_, err := n.content.Abort(n.ctx(ctx), &contentapi.AbortRequest{Ref: ref})
	if err != nil && status.Code(err) != codes.NotFound {
		return n.fail(ctx, "removing ingest "+ref, err)
	}
	return nil
}
