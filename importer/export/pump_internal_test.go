package export

import (
	"context"
	"crypto/sha256"
	"hash"
	"io"
	"log/slog"
	"strings"
	"testing"
	"unsafe"

	"github.com/diskimporter/diskimporter/importer/blob"
	"github.com/diskimporter/diskimporter/importer/hashstate"
)

// lender is a disk of one buffer, handed out by Next in slices of at most
// step bytes and hashed as it goes, as blob's reader of a parallel fetch
// does.
type lender struct {
	data []byte
	pos  int
	step int
	h    hash.Hash
	// eofWithLast: io.EOF comes with the last bytes, not after them.
	eofWithLast bool
}

func (l *lender) Read(p []byte) (int, error) { panic("pump read with a copy") }

func (l *lender) Next(n int) ([]byte, error) {
	if l.pos == len(l.data) {
		return nil, io.EOF
	}
	b := l.data[l.pos:min(len(l.data), l.pos+n, l.pos+l.step)]
	l.pos += len(b)
	l.h.Write(b)
	if l.eofWithLast && l.pos == len(l.data) {
		return b, io.EOF
	}
	return b, nil
}

// recorder is an out that keeps where each write's bytes were.
type recorder struct {
	writes      [][]byte
	checkpoints []int64
	states      [][]byte
}

func (r *recorder) write(b []byte, off int64) error { r.writes = append(r.writes, b); return nil }
func (r *recorder) checkpoint(done int64, state []byte) error {
	r.checkpoints = append(r.checkpoints, done)
	r.states = append(r.states, state)
	return nil
}
func (r *recorder) flush() error { return nil }

// TestPumpEnds: the disk ends where its size says, with io.EOF after
// its last bytes or with them; a reader that ends sooner or goes on past
// it fails the export.
func TestPumpEnds(t *testing.T) {
	const size = 3<<20 + 7
	for _, tt := range []struct {
		name        string
		length      int
		eofWithLast bool
		wantErr     string // "": none
	}{
		{"io.EOF after the last bytes", size, false, ""},
		{"io.EOF with the last bytes", size, true, ""},
		{"ends short", size - 10, false, "unexpected EOF"},
		{"ends short, io.EOF with its last bytes", size - 10, true, "unexpected EOF"},
		{"goes on past its size", size + 1, false, "goes on past"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := &lender{data: make([]byte, tt.length), step: 1 << 20, h: sha256.New(), eofWithLast: tt.eofWithLast}
			e := &exporter{s: &settings{Options: Options{CheckpointInterval: 1 << 20, ProgressInterval: 1 << 62}},
				d: &blob.Disk{Size: size}, res: &Result{}, log: slog.New(slog.DiscardHandler)}
			o := &recorder{}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			n, err := e.pump(ctx, cancel, l, nil, 0, o)
			if want := int64(min(tt.length, size)); n != want {
				t.Errorf("wrote %d bytes, want %d", n, want)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("pump: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("pump: %v, want an error saying %q", err, tt.wantErr)
			}
		})
	}
}

// TestPumpWritesWhatItIsLent: the disk's bytes go to the output as the
// slices the reader lent, never copied into buffers of the pump's, and a
// checkpoint still ends a write, with the hash state there.
func TestPumpWritesWhatItIsLent(t *testing.T) {
	const size = 10<<20 + 5
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 7)
	}
	h := sha256.New()
	l := &lender{data: data, step: 3 << 20, h: h}
	hs := lenderState{l}
	e := &exporter{s: &settings{Options: Options{CheckpointInterval: 4 << 20, ProgressInterval: 1 << 62}},
		d: &blob.Disk{Size: size}, res: &Result{}, log: slog.New(slog.DiscardHandler)}
	o := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if n, err := e.pump(ctx, cancel, l, hs, 0, o); n != size || err != nil {
		t.Fatalf("pump: %d bytes, %v", n, err)
	}
	at := 0
	for _, w := range o.writes {
		if unsafe.SliceData(w) != unsafe.SliceData(data[at:]) {
			t.Fatalf("the write at byte %d is a copy", at)
		}
		at += len(w)
	}
	if at != size {
		t.Fatalf("wrote %d bytes", at)
	}
	want := []int64{4 << 20, 8 << 20}
	if len(o.checkpoints) != len(want) {
		t.Fatalf("checkpoints at %v, want %v", o.checkpoints, want)
	}
	for i, c := range o.checkpoints {
		if c != want[i] {
			t.Fatalf("checkpoints at %v, want %v", o.checkpoints, want)
		}
		hh := sha256.New()
		hh.Write(data[:c])
		if got, err := hashstate.Restore(o.states[i], c); err != nil || string(got.Sum(nil)) != string(hh.Sum(nil)) {
			t.Errorf("the state of the checkpoint at %d is not the hash of the bytes before it (%v)", c, err)
		}
	}
}

// lenderState is the hashState of a lender.
type lenderState struct{ l *lender }

func (s lenderState) State() ([]byte, error) { return hashstate.Save(s.l.h), nil }
func (s lenderState) Position() int64        { return int64(s.l.pos) }
