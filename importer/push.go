package importer

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
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

// checkPushPermission fails when the credentials cannot push to ref: it
// starts an upload (the only check every registry answers the same way)
// and cancels it. It is go-containerregistry's remote.CheckPushPermission
// with ctx on every request, the ping and the token request included, so
// that a registry that stalls any of them does not outlive the import.
func checkPushPermission(ctx context.Context, ref name.Tag, kc authn.Keychain, rt http.RoundTripper) error {
	repo := ref.Context()
	auth, err := authn.Resolve(ctx, kc, repo)
	if err != nil {
		return fmt.Errorf("resolving the credentials for %s: %w", repo, err)
	}
	tr, err := transport.NewWithContext(ctx, repo.Registry, auth, rt, []string{repo.Scope(transport.PushScope)})
	if err != nil {
		return err
	}
	client := &http.Client{Transport: tr, CheckRedirect: checkRedirect}
	u := url.URL{Scheme: repo.Scheme(), Host: repo.RegistryStr(), Path: "/v2/" + repo.RepositoryStr() + "/blobs/uploads/"}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusCreated, http.StatusAccepted); err != nil {
		return err
	}
	if loc := resp.Header.Get("Location"); resp.StatusCode == http.StatusAccepted && loc != "" {
		cancelUpload(ctx, client, resp.Request.URL, loc)
	}
	return nil
}

// cancelUploadTimeout bounds the DELETE of the permission check's upload.
const cancelUploadTimeout = 5 * time.Second

// cancelUpload deletes the upload the permission check started, in case it
// holds resources on the registry. Its outcome does not matter.
func cancelUpload(ctx context.Context, client *http.Client, base *url.URL, loc string) {
	u, err := base.Parse(loc)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, cancelUploadTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u.String(), nil)
	if err != nil {
		return
	}
	if resp, err := client.Do(req); err == nil {
		resp.Body.Close()
	}
}

// checkRedirect refuses a redirect from the registry to another host that
// is an IP literal of a private, loopback or link-local address, as
// go-containerregistry does for its own requests: a hostile registry must
// not point the import at a metadata service.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	from, to := via[0].URL.Hostname(), req.URL.Hostname()
	if ip, err := netip.ParseAddr(to); err == nil && to != from &&
		(ip.IsPrivate() || ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsUnspecified()) {
		return fmt.Errorf("refusing a redirect from %s to the private address %s", from, to)
	}
	return nil
}

// confirmTimeout bounds reading the tag back after the manifest was
// written.
const confirmTimeout = time.Minute

// confirmTag reads the tag back from the registry and fails unless it
// resolves to the manifest of img: a registry (or a proxy in front of it) that
// answers a manifest PUT with 201 but stores nothing must not make the
// import report a reference that does not exist.
func confirmTag(ctx context.Context, s *settings, rt http.RoundTripper, img v1.Image) error {
	want, err := img.Digest()
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, confirmTimeout)
	defer cancel()
	desc, err := remote.Get(s.ref, remote.WithContext(cctx), remote.WithTransport(rt),
		remote.WithAuthFromKeychain(s.Keychain), remote.WithRetryPredicate(retryable))
	registry := s.ref.RegistryStr()
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("import cancelled while reading the tag back: %w", context.Cause(ctx))
	case cctx.Err() != nil:
		// Not context.DeadlineExceeded: that would read as --timeout.
		return fmt.Errorf("%w: registry %s accepted the manifest but did not answer for the tag %s within %s",
			ErrRegistry, registry, s.ref, confirmTimeout)
	case err != nil:
		return fmt.Errorf("%w: registry %s accepted the manifest but the tag %s does not resolve to it: %w",
			ErrRegistry, registry, s.ref, err)
	case desc.Digest != want:
		return fmt.Errorf("%w: registry %s accepted the manifest but the tag %s resolves to %s, not to it (%s)",
			ErrRegistry, registry, s.ref, desc.Digest, want)
	}
	return nil
}
