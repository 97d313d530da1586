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

// manifestTypes are the manifests and indexes diskimporter reads.
var manifestTypes = []types.MediaType{
	types.OCIManifestSchema1, types.DockerManifestSchema2, types.OCIImageIndex, types.DockerManifestList,
}

// resolve reads the manifest ref names and, through indexes, that of the
// image for platform: it returns the image's manifest and its digest.
// Every manifest is read with a bounded read and checked against the
// digest that names it (and the size its index gives).
func resolve(ctx context.Context, client *http.Client, scheme string, ref name.Reference, platform v1.Platform) (*v1.Manifest, v1.Hash, error) {
	var want *v1.Descriptor
	if d, ok := ref.(name.Digest); ok {
		h, err := v1.NewHash(d.DigestStr())
		if err != nil {
			return nil, v1.Hash{}, err
		}
		want = &v1.Descriptor{Digest: h, Size: -1}
	}
	identifier := ref.Identifier()
	for range maxIndexDepth + 1 {
		b, mt, digest, err := getManifest(ctx, client, scheme, ref.Context(), identifier, want)
		if err != nil {
			return nil, v1.Hash{}, err
		}
		if !mt.IsIndex() {
			m, err := v1.ParseManifest(bytes.NewReader(b))
			if err != nil {
				return nil, v1.Hash{}, fmt.Errorf("%w: manifest %s: %w", ErrCorrupt, digest, err)
			}
			return m, digest, nil
		}
		idx, err := v1.ParseIndexManifest(bytes.NewReader(b))
		if err != nil {
			return nil, v1.Hash{}, fmt.Errorf("%w: index %s: %w", ErrCorrupt, digest, err)
		}
		child, err := pick(idx, platform)
		if err != nil {
			return nil, v1.Hash{}, err
		}
		want, identifier = &child, child.Digest.String()
	}
	return nil, v1.Hash{}, fmt.Errorf("%w: %s leads through more than %d indexes", ErrCorrupt, ref, maxIndexDepth)
}

// pick returns the descriptor of the index's image for p (one without a
// platform is linux/amd64), or fails listing the platforms it has.
func pick(idx *v1.IndexManifest, p v1.Platform) (v1.Descriptor, error) {
	var have []string
	for _, m := range idx.Manifests {
		mp := v1.Platform{OS: "linux", Architecture: "amd64"}
		if m.Platform != nil {
			mp = *m.Platform
		}
		if mp.Satisfies(p) {
			return m, nil
		}
		have = append(have, mp.String())
	}
	slices.Sort(have)
	return v1.Descriptor{}, fmt.Errorf("%w %s; the index has %s", ErrPlatform, p.String(), strings.Join(have, ", "))
}

// getManifest GETs the manifest identifier of repo and returns its bytes,
// media type and digest. A body over MaxManifestSize, or over want's size,
// is refused without reading it; with want, the bytes must have its digest
// (and size, when it is not -1).
func getManifest(ctx context.Context, client *http.Client, scheme string, repo name.Repository, identifier string, want *v1.Descriptor) ([]byte, types.MediaType, v1.Hash, error) {
	limit := int64(MaxManifestSize)
	if want != nil && want.Size > limit {
		return nil, "", v1.Hash{}, fmt.Errorf("%w: manifest %s is %d bytes by its descriptor, more than the %d allowed", ErrCorrupt, want.Digest, want.Size, limit)
	}
	if want != nil && want.Size >= 0 {
		limit = want.Size
	}
	u := fmt.Sprintf("%s://%s/v2/%s/manifests/%s", scheme, repo.RegistryStr(), repo.RepositoryStr(), identifier)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, "", v1.Hash{}, err
	}
	accept := make([]string, len(manifestTypes))
	for i, mt := range manifestTypes {
		accept[i] = string(mt)
	}
	req.Header.Set("Accept", strings.Join(accept, ","))
	resp, err := client.Do(req)
	if err != nil {
		return nil, "", v1.Hash{}, err
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		return nil, "", v1.Hash{}, err
	}
	display := repo.String() + "@" + identifier
	if resp.ContentLength > limit {
		return nil, "", v1.Hash{}, fmt.Errorf("%w: manifest %s is %d bytes by its Content-Length, more than the %d allowed", ErrCorrupt, display, resp.ContentLength, limit)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, "", v1.Hash{}, fmt.Errorf("reading manifest %s: %w", display, err)
	}
	if int64(len(b)) > limit {
		return nil, "", v1.Hash{}, fmt.Errorf("%w: manifest %s is more than the %d bytes allowed", ErrCorrupt, display, limit)
	}
	sum := sha256.Sum256(b)
	digest := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	if want != nil && (digest != want.Digest || (want.Size >= 0 && int64(len(b)) != want.Size)) {
		return nil, "", v1.Hash{}, fmt.Errorf("%w: manifest %s is %d bytes with digest %s, its descriptor says %d bytes, %s", ErrCorrupt, display, len(b), digest, want.Size, want.Digest)
	}
	return b, mediaType(b, resp.Header.Get("Content-Type")), digest, nil
}

// mediaType is the manifest's mediaType field, or the Content-Type the
// registry gave when it has none.
func mediaType(b []byte, contentType string) types.MediaType {
	var m struct {
		MediaType types.MediaType `json:"mediaType"`
	}
	if json.Unmarshal(b, &m) == nil && m.MediaType != "" {
		return m.MediaType
	}
	return types.MediaType(contentType)
}
