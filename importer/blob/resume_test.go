package blob_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/diskimporter/diskimporter/importer/blob"
	"github.com/diskimporter/diskimporter/importer/imagetest"
)

// readPart reads n bytes of r (all of it when n < 0) and returns them with
// the state after them.
func readPart(t *testing.T, r *blob.Resumable, n int64) ([]byte, []byte, error) {
	t.Helper()
	var got []byte
	var err error
	if n < 0 {
		got, err = io.ReadAll(r)
	} else {
		got = make([]byte, n)
		_, err = io.ReadFull(r, got)
	}
	state, serr := r.State()
	if serr != nil {
		t.Fatal(serr)
	}
	return got, state, err
}

func TestResumableReader(t *testing.T) {
	t.Parallel()
	disk := randomDisk(900<<10 + 17)
	reg := newTestRegistry(t, true)
	ref := reg.push(t, "disks/resume", imagetest.Image(t, diskimporterLayer(t, disk)))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := blob.Open(ctx, ref, reg.options())
	if err != nil {
		t.Fatal(err)
	}
	if !d.CanResume() {
		t.Fatal("an uncompressed layer from a registry answering Range requests cannot resume")
	}

	t.Run("whole", func(t *testing.T) {
		r, err := d.ResumableReader(ctx, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		got, _, err := readPart(t, r, -1)
		if err != nil || !bytes.Equal(got, disk) {
			t.Fatalf("read %d bytes (%v), want the %d of the disk", len(got), err, len(disk))
		}
		if r.Position() != int64(len(disk)) {
			t.Errorf("Position %d at the end, want %d", r.Position(), len(disk))
		}
	})

	// Stop at several points, then go on from each with a new reader.
	for _, at := range []int64{0, 1, 64 << 10, 333333, int64(len(disk)) - 1, int64(len(disk))} {
		r, err := d.ResumableReader(ctx, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		first, state, err := readPart(t, r, at)
		r.Close()
		if err != nil || r.Position() != at {
			t.Fatalf("first %d bytes: %v, at %d", at, err, r.Position())
		}
		r2, err := d.ResumableReader(ctx, at, state)
		if err != nil {
			t.Fatalf("resuming at %d: %v", at, err)
		}
		rest, _, err := readPart(t, r2, -1)
		r2.Close()
		if err != nil || !bytes.Equal(append(first, rest...), disk) {
			t.Fatalf("resumed at %d: %d+%d bytes (%v), want the %d of the disk", at, len(first), len(rest), err, len(disk))
		}
		if at == 333333 {
			// A state is only good for the byte it was taken at.
			for _, wrong := range []int64{at - 1, at + 1, 0} {
				if _, err := d.ResumableReader(ctx, wrong, state); !errors.Is(err, blob.ErrHashState) {
					t.Errorf("state of byte %d used at %d: %v, want ErrHashState", at, wrong, err)
				}
			}
			if _, err := d.ResumableReader(ctx, at, state[:20]); !errors.Is(err, blob.ErrHashState) {
				t.Errorf("truncated state: %v, want ErrHashState", err)
			}
			if _, err := d.ResumableReader(ctx, at, nil); !errors.Is(err, blob.ErrHashState) {
				t.Errorf("no state at byte %d: %v, want ErrHashState", at, err)
			}
			if _, err := d.ResumableReader(ctx, int64(len(disk))+1, state); !errors.Is(err, blob.ErrHashState) {
				t.Errorf("past the end: %v, want ErrHashState", err)
			}
		}
	}

	t.Run("damaged after a resume", func(t *testing.T) {
		reg := newTestRegistry(t, false)
		ref := reg.push(t, "disks/damaged", imagetest.Image(t, diskimporterLayer(t, disk)))
		d, err := blob.Open(ctx, ref, reg.options())
		if err != nil {
			t.Fatal(err)
		}
		r, err := d.ResumableReader(ctx, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, state, err := readPart(t, r, 200<<10)
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		reg.damage.Store(true)
		r2, err := d.ResumableReader(ctx, 200<<10, state)
		if err != nil {
			t.Fatal(err)
		}
		defer r2.Close()
		if _, err := io.ReadAll(r2); !errors.Is(err, blob.ErrDigest) {
			t.Errorf("reading a damaged blob: %v, want ErrDigest", err)
		}
	})

	t.Run("compressed", func(t *testing.T) {
		reg := newTestRegistry(t, false)
		ref := reg.push(t, "disks/gz", imagetest.Image(t, static.NewLayer(imagetest.Gzip(imagetest.Tar(t, "disk/disk.img", string(disk[:5000]))), types.OCILayer)))
		d, err := blob.Open(ctx, ref, reg.options())
		if err != nil {
			t.Fatal(err)
		}
		if d.CanResume() {
			t.Error("a gzip layer says it can resume")
		}
		if _, err := d.ResumableReader(ctx, 0, nil); !errors.Is(err, blob.ErrNotResumable) {
			t.Errorf("ResumableReader of a gzip layer: %v, want ErrNotResumable", err)
		}
	})
}
