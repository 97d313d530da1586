package importer

import (
	"fmt"
	"maps"
	"strconv"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/diskimporter/diskimporter/importer/detect"
	"github.com/diskimporter/diskimporter/importer/qcow2"
	"github.com/diskimporter/diskimporter/layer"
)

// diskDescription is what the import learned about the disk.
type diskDescription struct {
	source       string
	sourceSHA256 string // of the bytes as downloaded
	diskSHA256   string // of the disk as stored
	format       detect.Format
	compression  detect.Compression
	size         int64
	sizeFrom     string
	path         string
	qcow2        *qcow2.Info // nil unless the source is a qcow2
	checksums    []Checksum  // expected, and verified
	sourceDigest string      // manifest digest of a docker:// source
}

func (d diskDescription) annotations() map[string]string {
	a := map[string]string{
		AnnotationSource:            d.source,
		AnnotationSourceCompression: string(d.compression),
		AnnotationFormat:            string(d.format),
		AnnotationSize:              strconv.FormatInt(d.size, 10),
		AnnotationDiskPath:          d.path,
	}
	if d.sourceSHA256 != "" { // see Result.SourceSHA256
		a[AnnotationSourceSHA256] = "sha256:" + d.sourceSHA256
	}
	if d.diskSHA256 != "" {
		a[AnnotationDiskSHA256] = "sha256:" + d.diskSHA256
	}
	maps.Copy(a, checksumAnnotations(d.checksums))
	if d.sourceDigest != "" {
		a[AnnotationSourceDigest] = d.sourceDigest
	}
	if q := d.qcow2; q != nil {
		a[AnnotationVirtualSize] = strconv.FormatUint(q.VirtualSize, 10)
		a[AnnotationQCOW2Version] = strconv.FormatUint(uint64(q.Version), 10)
		a[AnnotationQCOW2ClusterSize] = strconv.FormatInt(q.ClusterSize, 10)
		a[AnnotationQCOW2Compression] = q.CompressionType
	}
	return a
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
	res := &Result{
		Destination:    s.ref.Name(),
		Reference:      s.ref.Context().Digest(manifest.String()).String(),
		ManifestDigest: manifest.String(),
		LayerDigest:    ld.String(),
		LayerSize:      lsize,
		DiskPath:       d.path,
		Format:         string(d.format),
		Size:           d.size,
		Source:         d.source,
		Compression:    string(d.compression),
		SizeFrom:       d.sizeFrom,
	}
	if d.diskSHA256 != "" {
		res.DiskSHA256 = "sha256:" + d.diskSHA256
	}
	if d.sourceSHA256 != "" {
		res.SourceSHA256 = "sha256:" + d.sourceSHA256
	}
	if q := d.qcow2; q != nil {
		res.QCOW2 = &QCOW2Info{Version: q.Version, VirtualSize: q.VirtualSize, ClusterSize: q.ClusterSize, CompressionType: q.CompressionType}
	}
	return res, nil
}
