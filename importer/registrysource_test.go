package importer_test

import (
	"errors"
	"testing"

	"github.com/diskimporter/diskimporter/importer"
)

// TestRegistrySource imports an image the import path made, from its
// registry (docker://), into another tag: the same disk gives the same
// layer, and the source's digest is recorded.
func TestRegistrySource(t *testing.T) {
	t.Parallel()
	data := diskBytes(t, 3<<20+11)
	reg := newTestRegistry(t)
	src := newTestSource(t, serveBytes(data, `"v1"`))
	first, err := importer.Run(testContext(t), baseOptions(reg, src.url))
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, source string
		chunk        int64
	}{
		{"by tag, in 256 KiB pieces", "docker://" + first.Destination, 256 << 10},
		{"by digest, one piece", "docker://" + first.Reference, 0},
	} {
		o := baseOptions(reg, tc.source)
		o.Destination = reg.host + "/copies/disk:" + map[int64]string{0: "b", 256 << 10: "a"}[tc.chunk]
		o.SourceCAFile, o.ChunkSize = reg.caFile, tc.chunk
		res, err := importer.Run(testContext(t), o)
		if err != nil {
			t.Fatalf("%s: %v (reason %s)", tc.name, err, importer.Reason(err))
		}
		if res.LayerDigest != first.LayerDigest || res.Size != first.Size || res.DiskSHA256 != first.DiskSHA256 || res.Format != "raw" {
			t.Errorf("%s: result %+v, want the layer of %+v", tc.name, *res, *first)
		}
		if res.Source != tc.source {
			t.Errorf("%s: source %q, want %q", tc.name, res.Source, tc.source)
		}
	}

	o := baseOptions(reg, "docker://"+reg.host+"/no/such:image")
	o.SourceCAFile = reg.caFile
	o.Destination = reg.host + "/copies/none:v1"
	if _, err := importer.Run(testContext(t), o); !errors.Is(err, importer.ErrSourceNotFound) {
		t.Errorf("missing image: %v, want ErrSourceNotFound", err)
	}
}
