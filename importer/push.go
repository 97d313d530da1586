package importer

import (
	"fmt"
	"strconv"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/diskimporter/diskimporter/importer/detect"
	"github.com/diskimporter/diskimporter/layer"
)

// diskDescription is what the import learned about the disk.
type diskDescription struct {
	source string
	sha256 string
	format detect.Format
	size   int64
	path   string
}

func (d diskDescription) annotations() map[string]string {
	return map[string]string{
		AnnotationSource:       d.source,
		AnnotationSourceSHA256: "sha256:" + d.sha256,
		AnnotationFormat:       string(d.format),
		AnnotationSize:         strconv.FormatInt(d.size, 10),
		AnnotationDiskPath:     d.path,
	}
}

func layerMediaType(docker bool) types.MediaType {
	if docker {
		return types.DockerUncompressedLayer
	}
	return types.OCIUncompressedLayer
}

// newImage returns the one-layer image around the uploaded layer l.
func newImage(s *settings, l *layer.Layer, d diskDescription) (v1.Image, error) {
	img := empty.Image
	if !s.DockerMediaTypes {
		img = mutate.MediaType(img, types.OCIManifestSchema1)
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
		img = mutate.Annotations(img, d.annotations()).(v1.Image)
	}
	img, err := mutate.ConfigFile(img, &v1.ConfigFile{
		OS:           s.platform.OS,
		Architecture: s.platform.Architecture,
		Variant:      s.platform.Variant,
		OSVersion:    s.platform.OSVersion,
		Config:       v1.Config{Labels: d.annotations()},
	})
	if err != nil {
		return nil, fmt.Errorf("writing the image config: %w", err)
	}
	return mutate.Append(img, mutate.Addendum{Layer: l})
}

func result(s *settings, img v1.Image, l *layer.Layer, d diskDescription) (*Result, error) {
	manifest, err := img.Digest()
	if err != nil {
		return nil, err
	}
	ld, err := l.Digest()
	if err != nil {
		return nil, err
	}
	lsize, err := l.Size()
	if err != nil {
		return nil, err
	}
	return &Result{
		Destination:    s.ref.Name(),
		Reference:      s.ref.Context().Digest(manifest.String()).String(),
		ManifestDigest: manifest.String(),
		LayerDigest:    ld.String(),
		LayerSize:      lsize,
		DiskPath:       d.path,
		Format:         string(d.format),
		Size:           d.size,
		Source:         d.source,
		SourceSHA256:   "sha256:" + d.sha256,
	}, nil
}
