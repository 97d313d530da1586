package warm

import (
	"maps"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func hash(hex byte) v1.Hash {
	h := make([]byte, 64)
	for i := range h {
		h[i] = hex
	}
	return v1.Hash{Algorithm: "sha256", Hex: string(h)}
}

// TestChildLabels: the gc.ref labels are those containerd's pull writes
// (images.ChildGCLabels with SetChildrenMappedLabels).
func TestChildLabels(t *testing.T) {
	t.Parallel()
	got := childLabels([]v1.Descriptor{
		{MediaType: types.OCIConfigJSON, Digest: hash('c')},
		{MediaType: types.OCIUncompressedLayer, Digest: hash('1')},
		{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: hash('2')},
		{MediaType: types.DockerLayer, Digest: hash('3')},
	})
	want := map[string]string{
		"containerd.io/gc.ref.content.config": hash('c').String(),
		"containerd.io/gc.ref.content.l.0":    hash('1').String(),
		"containerd.io/gc.ref.content.l.1":    hash('2').String(),
		"containerd.io/gc.ref.content.l.2":    hash('3').String(),
	}
	if !maps.Equal(got, want) {
		t.Errorf("manifest labels %v, want %v", got, want)
	}
	got = childLabels([]v1.Descriptor{
		{MediaType: types.OCIManifestSchema1, Digest: hash('a')},
		{MediaType: types.DockerManifestSchema2, Digest: hash('b')},
		{MediaType: types.OCIImageIndex, Digest: hash('d')},
		{MediaType: "application/vnd.example+json", Digest: hash('e')},
	})
	want = map[string]string{
		"containerd.io/gc.ref.content.m.0": hash('a').String(),
		"containerd.io/gc.ref.content.m.1": hash('b').String(),
		"containerd.io/gc.ref.content.0":   hash('d').String(),
		"containerd.io/gc.ref.content.1":   hash('e').String(),
	}
	if !maps.Equal(got, want) {
		t.Errorf("index labels %v, want %v", got, want)
	}
}

// TestChainID: the OCI image spec's ChainID.
func TestChainID(t *testing.T) {
	t.Parallel()
	a, b := hash('a').String(), hash('b').String()
	if got := chainID("", a); got != a {
		t.Errorf("chain ID of one layer %s, want its diff ID", got)
	}
	// printf 'sha256:aaa… sha256:bbb…' | sha256sum
	const want = "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c"
	if got := chainID(a, b); got != want {
		t.Errorf("chain ID %s, want %s", got, want)
	}
}

// TestRefKey: the ingest refs are containerd's (remotes.MakeRefKey), so
// that a pull and a warm of one blob share the ingest.
func TestRefKey(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		mt   types.MediaType
		want string
	}{
		{types.OCIManifestSchema1, "manifest-"},
		{types.DockerManifestSchema2, "manifest-"},
		{types.OCIImageIndex, "index-"},
		{types.DockerManifestList, "index-"},
		{types.OCIUncompressedLayer, "layer-"},
		{"application/vnd.oci.image.layer.v1.tar+zstd", "layer-"},
		{types.DockerLayer, "layer-"},
		{types.OCIConfigJSON, "config-"},
		{types.DockerConfigJSON, "config-"},
		{"application/octet-stream", "unknown-"},
	} {
		if got := refKey(v1.Descriptor{MediaType: tc.mt, Digest: hash('f')}); got != tc.want+hash('f').String() {
			t.Errorf("refKey(%s) = %s, want %s%s", tc.mt, got, tc.want, hash('f'))
		}
	}
	named := v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: hash('f'),
		Annotations: map[string]string{"org.opencontainers.image.ref.name": "v1"}}
	if got := refKey(named); got != "manifest-v1@"+hash('f').String() {
		t.Errorf("refKey of a named manifest = %s", got)
	}
}
