package importer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path"
	"strconv"

	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// AnnotationSourceChecksum prefixes the annotation that records a verified
// checksum of the source as downloaded: io.diskimporter.source.md5 holds
// "md5:<hex>", and so on (io.diskimporter.source.sha256 is
// AnnotationSourceSHA256).
const AnnotationSourceChecksum = "io.diskimporter.source."

// existing returns the result of an earlier import of the same source, when
// the destination tag holds one: an image whose annotations (or, for Docker
// media types, config labels) record one of the expected checksums, made
// with the same settings. It returns nil when there is none. The registry
// is asked before a byte of the source is read. Nothing it reads is held
// in memory past maxRegistryBody.
func existing(ctx context.Context, s *settings, rt http.RoundTripper) (*Result, error) {
	notSkipping := func(why string, args ...any) (*Result, error) {
		s.Logger.Info("not skipping: "+why, args...)
		return nil, nil
	}
	desc, err := remote.Get(s.ref, remote.WithContext(ctx), remote.WithTransport(rt), remote.WithAuthFromKeychain(s.Keychain))
	var terr *transport.Error
	if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
		return notSkipping("the destination holds no image", "destination", s.ref.Name())
	}
	if err != nil {
		return nil, registryError("looking for an earlier import (SkipExisting)", s.ref.RegistryStr(), err)
	}
	if desc.MediaType.IsIndex() {
		return notSkipping("the destination holds an index, which diskimporter does not write")
	}
	img, err := desc.Image()
	if err != nil {
		return nil, registryError("reading the earlier image (SkipExisting)", s.ref.RegistryStr(), err)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	// The manifest came through the registry transport, which bounds
	// every body to maxRegistryBody; the config is refused on its
	// descriptor's word before a byte of it is read.
	if m.Config.Size < 0 || m.Config.Size > maxRegistryBody {
		return notSkipping("the image at the destination is not an earlier import (its config is too large)",
			"config_size", m.Config.Size, "limit", maxRegistryBody)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, registryError("reading the earlier image's config (SkipExisting)", s.ref.RegistryStr(), err)
	}
	labels := m.Annotations
	if labels == nil {
		labels = cf.Config.Labels
	}
	switch {
	case len(m.Layers) != 1:
		return notSkipping("the image at the destination is not an earlier import (it has more than one layer)", "layers", len(m.Layers))
	case !anyChecksum(s.Checksums, labels):
		return notSkipping("the image at the destination records none of the expected checksums of the source")
	case !sameSettings(s, desc.MediaType, cf.OS, cf.Architecture, cf.Variant, labels):
		return notSkipping("the image at the destination was made with other settings (media types, platform, disk name or conversion)")
	}
	size, _ := strconv.ParseInt(labels[AnnotationSize], 10, 64)
	return &Result{
		Destination:    s.ref.Name(),
		Reference:      s.ref.Context().Digest(desc.Digest.String()).String(),
		ManifestDigest: desc.Digest.String(),
		LayerDigest:    m.Layers[0].Digest.String(),
		LayerSize:      m.Layers[0].Size,
		DiskPath:       labels[AnnotationDiskPath],
		Format:         labels[AnnotationFormat],
		Size:           size,
		Source:         labels[AnnotationSource],
		SourceSHA256:   labels[AnnotationSourceSHA256],
		Compression:    labels[AnnotationSourceCompression],
		DiskSHA256:     labels[AnnotationDiskSHA256],
		Skipped:        true,
	}, nil
}

// sameSettings tells whether an image was made with the settings of this
// import that change what is stored: media types, platform, disk name and
// conversion.
func sameSettings(s *settings, mt types.MediaType, os, arch, variant string, labels map[string]string) bool {
	wantMT := types.OCIManifestSchema1
	if s.DockerMediaTypes {
		wantMT = types.DockerManifestSchema2
	}
	switch {
	case mt != wantMT, os != s.platform.OS, arch != s.platform.Architecture, variant != s.platform.Variant:
		return false
	case s.DiskName != "" && path.Base(labels[AnnotationDiskPath]) != s.DiskName:
		return false
	case s.ConvertRaw && labels[AnnotationFormat] != "raw":
		return false
	}
	return true
}

// anyChecksum tells whether labels record one of want.
func anyChecksum(want []Checksum, labels map[string]string) bool {
	for _, c := range want {
		if got, ok := labels[AnnotationSourceChecksum+c.Algorithm]; ok && got == c.String() {
			return true
		}
	}
	return false
}

// checksumAnnotations are the annotations recording the verified checksums
// other than sha256 (recorded as AnnotationSourceSHA256).
func checksumAnnotations(verified []Checksum) map[string]string {
	a := map[string]string{}
	for _, c := range verified {
		if c.Algorithm != "sha256" {
			a[AnnotationSourceChecksum+c.Algorithm] = c.String()
		}
	}
	return a
}

// errSkipNeedsChecksum: --skip-existing cannot recognise a source without
// an expected checksum.
var errSkipNeedsChecksum = fmt.Errorf("%w: skipping an existing import needs an expected checksum of the source (Checksums) to recognise it without reading it", ErrInvalidOptions)
