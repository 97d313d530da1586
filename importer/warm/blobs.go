package warm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/api/types"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/diskimporter/diskimporter/importer"
)

// The labels of the CRI plugin and of containerd's garbage collector.
const (
	labelCRIImage      = "io.cri-containerd.image"
	labelCRIManaged    = "managed"
	labelGCRefContent  = "containerd.io/gc.ref.content."
	labelGCRefConfig   = "containerd.io/gc.ref.content.config"
	labelGCRefSnapshot = "containerd.io/gc.ref.snapshot."
	labelUncompressed  = "containerd.io/uncompressed"
	labelSnapshotRef   = "containerd.io/snapshot.ref"
)

// entry is one blob of the image to put into containerd: its bytes in
// memory (an index, a manifest, the config) or read from the registry (a
// layer).
type entry struct {
	desc   v1.Descriptor
	raw    []byte            // nil: read from the registry
	labels map[string]string // containerd's gc.ref labels for its children
	result int               // its index in Result.Blobs
	skip   bool
}

// blobs puts every blob of img that containerd lacks into it: the layers
// first, then the config, the manifest and the indexes from the bottom
// up, each parent labelled with its children as containerd's pull labels
// them. It says whether the image is complete (no layer was skipped).
func (w *warmer) blobs(ctx context.Context, src *source, img *image, res *Result) (bool, error) {
	var list []*entry
	for _, ix := range img.Chain[:len(img.Chain)-1] {
		list = append(list, &entry{desc: ix.Descriptor, raw: ix.Raw, labels: childLabels(ix.Index.Manifests)})
	}
	m, mr := img.Manifest, img.Image()
	list = append(list,
		&entry{desc: mr.Descriptor, raw: mr.Raw, labels: childLabels(append([]v1.Descriptor{m.Config}, m.Layers...))},
		&entry{desc: m.Config, raw: img.config})
	complete := true
	for _, l := range m.Layers {
		skip := l.Size < w.s.MinBlobSize || w.s.MaxBlobSize > 0 && l.Size > w.s.MaxBlobSize
		complete = complete && !skip
		list = append(list, &entry{desc: l, skip: skip})
	}

	// Look first, for the total of the bytes to write.
	var total int64
	for i, e := range list {
		e.result = i
		b := Blob{Digest: e.desc.Digest.String(), Size: e.desc.Size, MediaType: string(e.desc.MediaType)}
		info, err := w.node.info(ctx, b.Digest)
		switch {
		case err != nil:
			return false, err
		case info != nil:
			b.Action = Present
			if err := w.node.hold(ctx, "content", b.Digest); err != nil {
				return false, err
			}
		case e.skip:
			b.Action = Skipped
		default:
			total += e.desc.Size
		}
		res.Blobs = append(res.Blobs, b)
	}
	w.total.Store(total)

	// Write in reverse: the layers, the config, the manifest, the indexes.
	for i := len(list) - 1; i >= 0; i-- {
		e := list[i]
		b := &res.Blobs[e.result]
		if b.Action == "" {
			open := w.opener(src, e)
			action, from, err := w.node.put(ctx, w.log, e.desc, open, func(n int64) {
				w.done.Add(n)
				res.BytesFetched += n
			})
			if err != nil {
				return false, fmt.Errorf("blob %s of %s: %w", b.Digest, w.s.display, err)
			}
			b.Action, b.ResumedFrom = action, from
			w.log.Info("blob "+action, "digest", b.Digest, "media_type", b.MediaType, "size", b.Size, "resumed_from", from)
		}
		if b.Action != Skipped {
			if err := w.node.label(ctx, b.Digest, e.labels); err != nil {
				return false, err
			}
		}
	}
	return complete, nil
}

// opener reads e's bytes: from memory, or from the registry.
func (w *warmer) opener(src *source, e *entry) opener {
	if e.raw != nil {
		return func(_ context.Context, off int64) (io.ReadCloser, int64, error) {
			return io.NopCloser(bytes.NewReader(e.raw[off:])), off, nil
		}
	}
	return func(ctx context.Context, off int64) (io.ReadCloser, int64, error) {
		r, start, err := src.open(ctx, e.desc, off)
		if err != nil {
			return nil, 0, importer.ClassifySource(w.s.display, err)
		}
		if off > 0 && start == 0 {
			w.log.Warn("the registry does not answer Range requests: the blob is read again from byte 0", "digest", e.desc.Digest, "ingest_offset", off)
		}
		return sourceReader{r, w.s.display}, start, nil
	}
}

// sourceReader classifies the errors of a registry read, as every source
// failure is.
type sourceReader struct {
	io.ReadCloser
	display string
}

func (r sourceReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		err = importer.ClassifySource(r.display, err)
	}
	return n, err
}

// childLabels are the gc.ref labels containerd's pull puts on a manifest
// or an index for its children (images.ChildGCLabels): the config, the
// layers l.0, l.1…, the manifests m.0, m.1…, anything else 0, 1….
func childLabels(children []v1.Descriptor) map[string]string {
	labels := map[string]string{}
	count := map[string]int{}
	for _, c := range children {
		var key string
		switch mt := c.MediaType; {
		case mt.IsConfig():
			key = labelGCRefConfig
		case mt.IsImage():
			key = labelGCRefContent + "m."
		case isLayer(mt):
			key = labelGCRefContent + "l."
		default:
			key = labelGCRefContent
		}
		i := count[key]
		count[key] = i + 1
		if i > 0 || key[len(key)-1] == '.' {
			key += strconv.Itoa(i)
		}
		labels[key] = c.Digest.String()
	}
	return labels
}

// record writes the image records the CRI plugin writes after a pull:
// the config digest (the image ID), repo:tag and repo@digest, each
// pointing at what the reference names and labelled as the CRI plugin's.
// It returns the names.
func (w *warmer) record(ctx context.Context, img *image) ([]string, error) {
	repo := w.s.ref.Context()
	registry := repo.RegistryStr()
	if registry == "index.docker.io" {
		registry = "docker.io" // as containerd names Docker Hub's images
	}
	repoName := registry + "/" + repo.RepositoryStr()
	names := []string{img.Manifest.Config.Digest.String()}
	if tag, ok := w.s.ref.(interface{ TagStr() string }); ok {
		names = append(names, repoName+":"+tag.TagStr())
	}
	names = append(names, repoName+"@"+img.Top().Digest.String())
	target := &types.Descriptor{MediaType: string(img.Top().MediaType), Digest: img.Top().Digest.String(), Size: img.Top().Size}
	for _, name := range names {
		if err := w.createImage(ctx, name, target); err != nil {
			return nil, err
		}
	}
	return names, nil
}

// createImage creates the image record name for target, or points the
// one there at it, as the CRI plugin's createImageReference does.
func (w *warmer) createImage(ctx context.Context, name string, target *types.Descriptor) error {
	n := w.node
	image := &imagesapi.Image{Name: name, Target: target, Labels: map[string]string{labelCRIImage: labelCRIManaged}}
	_, err := n.images.Create(n.ctx(ctx), &imagesapi.CreateImageRequest{Image: image})
	if err == nil {
		return nil
	}
	if status.Code(err) != codes.AlreadyExists {
		return n.fail(ctx, "creating image "+name, err)
	}
	old, err := n.images.Get(n.ctx(ctx), &imagesapi.GetImageRequest{Name: name})
	if err != nil {
		return n.fail(ctx, "reading image "+name, err)
	}
	if old.Image.GetTarget().GetDigest() == target.Digest && old.Image.GetLabels()[labelCRIImage] == labelCRIManaged {
		return nil
	}
	_, err = n.images.Update(n.ctx(ctx), &imagesapi.UpdateImageRequest{
		Image:      image,
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"target", "labels." + labelCRIImage}},
	})
	if err != nil {
		return n.fail(ctx, "updating image "+name, err)
	}
	return nil
}
