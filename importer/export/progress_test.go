package export_test

import (
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/export"
	"github.com/diskimporter/diskimporter/importer/imagetest"
)

// TestOnProgress: an export reports how much of the disk is written, as an
// import does, and ends with one report of the end.
func TestOnProgress(t *testing.T) {
	t.Parallel()
	disk := mixedDisk(3 << 20)
	reg := newTestRegistry(t, false)
	src := reg.push(t, "disks/x", imagetest.Image(t, diskimporterLayer(t, disk)))
	for _, fail := range []bool{false, true} {
		o := reg.options(t, src, filepath.Join(t.TempDir(), "disk.img"))
		if fail {
			o.Source += "-missing"
		}
		o.ProgressInterval = time.Millisecond
		var mu sync.Mutex
		var got []importer.Progress
		o.OnProgress = func(p importer.Progress) {
			mu.Lock()
			got = append(got, p)
			mu.Unlock()
		}
		_, err := export.Export(testContext(t), o)
		if (err != nil) != fail {
			t.Fatalf("fail %v: %v", fail, err)
		}
		mu.Lock()
		if fail {
			// The image was never found: nothing was under way.
			if len(got) != 0 {
				t.Errorf("reports for an export that never started: %+v", got)
			}
		} else if last := got[len(got)-1]; last.Phase != importer.PhaseDone || last.Bytes != int64(len(disk)) || last.Total != int64(len(disk)) {
			t.Errorf("last report %+v, want done with %d of %d bytes", last, len(disk), len(disk))
		}
		mu.Unlock()
	}
}
