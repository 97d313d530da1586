package blob_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/diskimporter/diskimporter/importer/blob"
)

// manifests is a registry's manifests by identifier (tag or digest), each
// with the Content-Type it is served with.
type manifests map[string]struct {
	contentType string
	body        []byte
}

// add serves body with contentType under its digest, and under tag when
// it is not empty; it returns body's descriptor.
func (m manifests) add(tag, contentType string, mt types.MediaType, body []byte, p *v1.Platform) v1.Descriptor {
	d := v1.Descriptor{MediaType: mt, Size: int64(len(body)), Digest: v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sha256.Sum256(body))}, Platform: p}
	m[d.Digest.String()] = struct {
		contentType string
		body        []byte
	}{contentType, body}
	if tag != "" {
		m[tag] = m[d.Digest.String()]
	}
	return d
}

// index is an OCI index of children.
func index(t *testing.T, children ...v1.Descriptor) []byte {
	t.Helper()
	b, err := json.Marshal(v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: children})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// resolveFrom resolves host/x/r:v1 for linux/amd64 from a registry
// serving ms.
func resolveFrom(t *testing.T, ms manifests) (*blob.Resolved, error) {
	t.Helper()
	host, o := manifestServer(t, func(w http.ResponseWriter, r *http.Request) bool {
		_, id, _ := strings.Cut(r.URL.Path, "/manifests/")
		m, ok := ms[id]
		if !ok {
			http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN"}]}`, http.StatusNotFound)
			return true
		}
		w.Header().Set("Content-Type", m.contentType)
		w.Write(m.body)
		return true
	})
	ref, err := name.ParseReference(host + "/x/r:v1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return blob.Resolve(ctx, &http.Client{Transport: o.Transport}, "https", ref, v1.Platform{OS: "linux", Architecture: "amd64"})
}

func TestResolve(t *testing.T) {
	t.Parallel()
	amd64 := &v1.Platform{OS: "linux", Architecture: "amd64"}
	// An image manifest with no mediaType field: the Content-Type, its
	// parameters cut off, says what it is.
	image := []byte(`{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + strings.Repeat("0", 64) + `","size":2},"layers":[]}`)

	t.Run("through two indexes", func(t *testing.T) {
		t.Parallel()
		ms := manifests{}
		md := ms.add("", string(types.OCIManifestSchema1)+"; charset=utf-8", types.OCIManifestSchema1, image, amd64)
		inner := ms.add("", string(types.OCIImageIndex), types.OCIImageIndex, index(t, md), amd64)
		top := ms.add("v1", string(types.OCIImageIndex), types.OCIImageIndex, index(t, inner), nil)
		r, err := resolveFrom(t, ms)
		if err != nil {
			t.Fatal(err)
		}
		want := []v1.Descriptor{top, inner, md}
		if len(r.Chain) != len(want) {
			t.Fatalf("Chain has %d manifests, want %d", len(r.Chain), len(want))
		}
		for i, c := range r.Chain {
			w := want[i]
			w.Platform = nil
			if c.Descriptor.Digest != w.Digest || c.Descriptor.Size != w.Size || c.Descriptor.MediaType != w.MediaType {
				t.Errorf("Chain[%d] is %+v, want %+v", i, c.Descriptor, w)
			}
			if string(c.Raw) != string(ms[w.Digest.String()].body) {
				t.Errorf("Chain[%d].Raw is not the bytes served", i)
			}
			if (c.Index != nil) != (i < len(want)-1) {
				t.Errorf("Chain[%d].Index is %v", i, c.Index)
			}
		}
		if r.Top().Digest != top.Digest || r.Image().Descriptor.Digest != md.Digest || r.Manifest == nil || r.Manifest.Config.Size != 2 {
			t.Errorf("Top %s, Image %s, Manifest %+v", r.Top().Digest, r.Image().Descriptor.Digest, r.Manifest)
		}
	})
	t.Run("index depth", func(t *testing.T) {
		t.Parallel()
		for depth, ok := range map[int]bool{4: true, 5: false} {
			ms := manifests{}
			d := ms.add("", string(types.OCIManifestSchema1), types.OCIManifestSchema1, image, amd64)
			for i := range depth {
				tag := ""
				if i == depth-1 {
					tag = "v1"
				}
				d = ms.add(tag, string(types.OCIImageIndex), types.OCIImageIndex, index(t, d), amd64)
			}
			_, err := resolveFrom(t, ms)
			if ok && err != nil {
				t.Errorf("through %d indexes: %v", depth, err)
			}
			if !ok && (!errors.Is(err, blob.ErrCorrupt) || !strings.Contains(err.Error(), "more than 4 indexes")) {
				t.Errorf("through %d indexes: %v, want ErrCorrupt", depth, err)
			}
		}
	})
	t.Run("manifest of another media type", func(t *testing.T) {
		t.Parallel()
		ms := manifests{}
		ms.add("v1", string(types.DockerManifestSchema1Signed), types.DockerManifestSchema1Signed, image, nil)
		if _, err := resolveFrom(t, ms); !errors.Is(err, blob.ErrLayer) {
			t.Errorf("Resolve: %v, want ErrLayer", err)
		}
	})
	t.Run("index entry for the platform that is no manifest", func(t *testing.T) {
		t.Parallel()
		ms := manifests{}
		d := ms.add("", string(types.OCIManifestSchema1), types.OCIManifestSchema1, image, amd64)
		d.MediaType = types.OCILayer
		ms.add("v1", string(types.OCIImageIndex), types.OCIImageIndex, index(t, d), nil)
		if _, err := resolveFrom(t, ms); !errors.Is(err, blob.ErrPlatform) {
			t.Errorf("Resolve: %v, want ErrPlatform", err)
		}
	})
}
