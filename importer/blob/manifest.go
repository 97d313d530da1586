package blob

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// MaxManifestSize is the most bytes a manifest or an index may have, as
// containerd allows: a larger one is refused before it is read.
const MaxManifestSize = 4 << 20

// maxIndexDepth is how many indexes may lead to the image.
const maxIndexDepth = 4

// manifestTypes are the manifests and indexes diskimporter reads: a
// manifest of another media type is refused (ErrLayer).
var manifestTypes = []types.MediaType{
	types.OCIManifestSchema1, types.DockerManifestSchema2, types.OCIImageIndex, types.DockerManifestList,
}

// Resolved is what a reference names, read down through its indexes to
// the image manifest for a platform: the one way diskimporter reads an
// image's manifests out of a registry (an export, an import or an
// inspection of a docker:// source, a warm).
type Resolved struct {
	// Chain is every manifest read, from the top down: what the reference
	// names first, then what each index picks for the platform; the last
	// is the image manifest, the others are indexes. Each was read with a
	// bounded read (MaxManifestSize, and the size its index gives) and
	// checked against the digest that names it.
	Chain []RawManifest
	// Manifest is the image manifest, Chain's last, parsed.
	Manifest *v1.Manifest
}

// RawManifest is a manifest or an index as the registry served it.
type RawManifest struct {
	// Descriptor is its digest, size and media type (its mediaType
	// field, or else the Content-Type the registry gave).
	Descriptor v1.Descriptor
	// Raw is its bytes.
	Raw []byte
	// Index is the index parsed; nil for the image manifest.
	Index *v1.IndexManifest
}

// Top is the descriptor of what the reference names: an index, or the
// image manifest.
func (r *Resolved) Top() v1.Descriptor { return r.Chain[0].Descriptor }

// Image is the image manifest as the registry served it: Chain's last.
func (r *Resolved) Image() RawManifest { return r.Chain[len(r.Chain)-1] }

// Resolve reads the manifest ref names from the registry client reaches
// over scheme (https, or http) and, through at most 4 indexes,
// the image manifest for platform: an index entry without a platform is
// linux/amd64, and only an image manifest or an index is picked. Every
// manifest is read with a bounded read and checked against the digest
// that names it (the reference's, when it is a digest, then the index's)
// and the size its index gives. Errors wrap ErrCorrupt (a manifest over
// its bound, not what its descriptor says, or malformed), ErrPlatform (an
// index with no image for platform) or ErrLayer (a manifest of a media
// type diskimporter does not read), or are the registry's.
func Resolve(ctx context.Context, client *http.Client, scheme string, ref name.Reference, platform v1.Platform) (*Resolved, error) {
	var want *v1.Descriptor
	if d, ok := ref.(name.Digest); ok {
		h, err := v1.NewHash(d.DigestStr())
		if err != nil {
			return nil, err
		}
		want = &v1.Descriptor{Digest: h, Size: -1}
	}
	r := &Resolved{}
	identifier := ref.Identifier()
	for range maxIndexDepth + 1 {
		raw, desc, err := getManifest(ctx, client, scheme, ref.Context(), identifier, want)
		if err != nil {
			return nil, err
		}
		if !desc.MediaType.IsIndex() {
			m, err := v1.ParseManifest(bytes.NewReader(raw))
			if err != nil {
				return nil, fmt.Errorf("%w: manifest %s: %w", ErrCorrupt, desc.Digest, err)
			}
			r.Chain, r.Manifest = append(r.Chain, RawManifest{Descriptor: desc, Raw: raw}), m
			return r, nil
		}
		idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("%w: index %s: %w", ErrCorrupt, desc.Digest, err)
		}
		r.Chain = append(r.Chain, RawManifest{Descriptor: desc, Raw: raw, Index: idx})
		child, err := pick(idx, platform)
		if err != nil {
			return nil, err
		}
		want, identifier = &child, child.Digest.String()
	}
	return nil, fmt.Errorf("%w: %s leads through more than %d indexes", ErrCorrupt, ref, maxIndexDepth)
}

// pick returns the descriptor of the index's image (or index) for p (one
// without a platform is linux/amd64), or fails listing the platforms it
// has.
func pick(idx *v1.IndexManifest, p v1.Platform) (v1.Descriptor, error) {
	var have []string
	for _, m := range idx.Manifests {
		mp := v1.Platform{OS: "linux", Architecture: "amd64"}
		if m.Platform != nil {
			mp = *m.Platform
		}
		if mp.Satisfies(p) && (m.MediaType.IsImage() || m.MediaType.IsIndex()) {
			return m, nil
		}
		have = append(have, mp.String())
	}
	slices.Sort(have)
	return v1.Descriptor{}, fmt.Errorf("%w %s; the index has %s", ErrPlatform, p.String(), strings.Join(have, ", "))
}

// getManifest GETs the manifest identifier of repo and returns its bytes
// and descriptor. A body over MaxManifestSize, or over want's size, is
// refused without reading it; with want, the bytes must have its digest
// (and size, when it is not -1). A media type other than manifestTypes'
// is refused.
func getManifest(ctx context.Context, client *http.Client, scheme string, repo name.Repository, identifier string, want *v1.Descriptor) ([]byte, v1.Descriptor, error) {
	limit := int64(MaxManifestSize)
	if want != nil && want.Size > limit {
		return nil, v1.Descriptor{}, fmt.Errorf("%w: manifest %s is %d bytes by its descriptor, more than the %d allowed", ErrCorrupt, want.Digest, want.Size, limit)
	}
	if want != nil && want.Size >= 0 {
		limit = want.Size
	}
	u := fmt.Sprintf("%s://%s/v2/%s/manifests/%s", scheme, repo.RegistryStr(), repo.RepositoryStr(), identifier)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, v1.Descriptor{}, err
	}
	accept := make([]string, len(manifestTypes))
	for i, mt := range manifestTypes {
		accept[i] = string(mt)
	}
	req.Header.Set("Accept", strings.Join(accept, ","))
	resp, err := client.Do(req)
	if err != nil {
		return nil, v1.Descriptor{}, err
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		return nil, v1.Descriptor{}, err
	}
	display := repo.String() + "@" + identifier
	if resp.ContentLength > limit {
		return nil, v1.Descriptor{}, fmt.Errorf("%w: manifest %s is %d bytes by its Content-Length, more than the %d allowed", ErrCorrupt, display, resp.ContentLength, limit)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, v1.Descriptor{}, fmt.Errorf("reading manifest %s: %w", display, err)
	}
	if int64(len(b)) > limit {
		return nil, v1.Descriptor{}, fmt.Errorf("%w: manifest %s is more than the %d bytes allowed", ErrCorrupt, display, limit)
	}
	sum := sha256.Sum256(b)
	d := v1.Descriptor{Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, Size: int64(len(b))}
	if want != nil && (d.Digest != want.Digest || (want.Size >= 0 && d.Size != want.Size)) {
		return nil, v1.Descriptor{}, fmt.Errorf("%w: manifest %s is %d bytes with digest %s, its descriptor says %d bytes, %s", ErrCorrupt, display, d.Size, d.Digest, want.Size, want.Digest)
	}
	d.MediaType = mediaType(b, resp.Header.Get("Content-Type"))
	if !slices.Contains(manifestTypes, d.MediaType) {
		return nil, v1.Descriptor{}, fmt.Errorf("%w: manifest %s has media type %q", ErrLayer, display, d.MediaType)
	}
	return b, d, nil
}

// mediaType is the manifest's mediaType field, or the Content-Type the
// registry gave (without its parameters) when it has none.
func mediaType(b []byte, contentType string) types.MediaType {
	var m struct {
		MediaType types.MediaType `json:"mediaType"`
	}
	if json.Unmarshal(b, &m) == nil && m.MediaType != "" {
		return m.MediaType
	}
	ct, _, _ := strings.Cut(contentType, ";")
	return types.MediaType(strings.TrimSpace(ct))
}
