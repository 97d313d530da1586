package importer

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/diskimporter/diskimporter/layer"
)

// TestCheckpointFile: a checkpoint file is taken up only by a run of the
// same upload; anything else (another repository, source, version of the
// source, layer settings, format version, a damaged file) is refused with
// what differs.
func TestCheckpointFile(t *testing.T) {
	t.Parallel()
	want := checkpointRecord{Version: checkpointVersion, Repository: "r.example/disks/x", Source: "https://s.example/d.img",
		Validator: `"etag"; 100 bytes`, Layer: layerIdentity{DiskName: "disk.img", DiskSize: 100, Size: 3072, Format: "raw"}}
	path := filepath.Join(t.TempDir(), "checkpoint.json")
	c := &checkpointFile{path: path}
	if rec, err := c.load(want, "r.example"); rec != nil || err != nil {
		t.Fatalf("no file: %v, %v; want nothing", rec, err)
	}
	saved := want
	saved.Location = "https://r.example/v2/disks/x/blobs/uploads/u?_state=s"
	saved.Checkpoints = []layer.Checkpoint{{Offset: 1 << 20, Layer: []byte{1, 2, 3}}}
	if err := c.set(saved); err != nil {
		t.Fatal(err)
	}
	rec, err := c.load(want, "r.example")
	if err != nil || rec.Location != saved.Location || len(rec.Checkpoints) != 1 || rec.Checkpoints[0].Offset != 1<<20 {
		t.Fatalf("load: %+v, %v; want what was saved", rec, err)
	}
	for name, change := range map[string]func(*checkpointRecord){
		"another repository":    func(r *checkpointRecord) { r.Repository = "r.example/disks/y" },
		"another source":        func(r *checkpointRecord) { r.Source = "https://s.example/e.img" },
		"the source changed":    func(r *checkpointRecord) { r.Validator = `"etag2"; 100 bytes` },
		"another disk name":     func(r *checkpointRecord) { r.Layer.DiskName = "disk.iso" },
		"the disk's sha256 too": func(r *checkpointRecord) { r.Layer.HashDisk = true },
	} {
		other := want
		change(&other)
		if _, err := c.load(other, "r.example"); !errors.Is(err, errCheckpointMismatch) {
			t.Errorf("%s: %v, want errCheckpointMismatch", name, err)
		}
	}
	// A planted file naming an upload on another host, or with more in
	// its query than _state, is not followed.
	for name, loc := range map[string]string{
		"another host":      "https://evil.example/v2/disks/x/blobs/uploads/u?_state=s",
		"a query parameter": "https://r.example/v2/disks/x/blobs/uploads/u?_state=s&X-Amz-Signature=x",
	} {
		planted := saved
		planted.Location = loc
		if err := c.set(planted); err != nil {
			t.Fatal(err)
		}
		if _, err := c.load(want, "r.example"); !errors.Is(err, errCheckpointMismatch) {
			t.Errorf("%s: %v, want errCheckpointMismatch", name, err)
		}
	}
	for name, content := range map[string]string{
		"damaged":       "{not json",
		"other version": `{"version":99}`,
		"no location":   `{"version":1,"repository":"r.example/disks/x","source":"https://s.example/d.img","validator":"\"etag\"; 100 bytes","layer":{"disk_name":"disk.img","disk_size":100,"size":3072,"hash_disk":false,"format":"raw","converted":false}}`,
	} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := c.load(want, "r.example"); !errors.Is(err, errCheckpointMismatch) {
			t.Errorf("%s: %v, want errCheckpointMismatch", name, err)
		}
	}
	if err := c.remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the file is still there after remove: %v", err)
	}
}
