package upload

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// writerTo writes its bytes 7 at a time, then fails with err (nil: none),
// and cannot be read.
type writerTo struct {
	b     []byte
	err   error
	calls int // of WriteTo
}

func (w *writerTo) Read([]byte) (int, error) { panic("a body that writes itself was read") }

func (w *writerTo) WriteTo(dst io.Writer) (int64, error) {
	w.calls++
	var total int64
	for len(w.b) > 0 {
		n, err := dst.Write(w.b[:min(7, len(w.b))])
		total += int64(n)
		w.b = w.b[n:]
		if err != nil {
			return total, err
		}
	}
	return total, w.err
}

// failingWriter takes ok bytes, then fails.
type failingWriter struct {
	bytes.Buffer
	ok int
}

var errConn = errors.New("the connection broke")

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.Len()+len(p) > f.ok {
		n, _ := f.Buffer.Write(p[:f.ok-f.Len()])
		return n, errConn
	}
	return f.Buffer.Write(p)
}

// TestWritingBody: a body that writes itself is sent as it writes, its
// first length bytes only; a body that ends short or fails is the
// body's failure, a failed write is not.
func TestWritingBody(t *testing.T) {
	data := []byte("0123456789abcdefghijklmnopqrstuvwxyz")
	srcErr := errors.New("the source broke")
	for _, tt := range []struct {
		name    string
		body    []byte
		bodyErr error
		okBytes int // the writer fails after that many; 0: never
		length  int64
		wantN   int64
		wantErr error // of WriteTo
		failure error // of the body, after
	}{
		{"exact", data, nil, 0, 36, 36, nil, nil},
		{"longer: the first length bytes", data, nil, 0, 20, 20, nil, nil},
		{"a length inside a write", data, nil, 0, 10, 10, nil, nil},
		{"short", data[:30], nil, 0, 36, 30, errShort, errShort},
		{"the body fails", data[:9], srcErr, 0, 36, 9, srcErr, srcErr},
		{"the connection fails", data, nil, 16, 36, 16, errConn, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src := &bodyReader{r: &writerTo{b: tt.body, err: tt.bodyErr}, left: tt.length}
			wt := src.r.(io.WriterTo)
			w := &failingWriter{ok: len(data)}
			if tt.okBytes > 0 {
				w.ok = tt.okBytes
			}
			n, err := writingBody{src, wt}.WriteTo(w)
			if n != tt.wantN || !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Errorf("WriteTo = %d, %v; want %d, %v", n, err, tt.wantN, tt.wantErr)
			}
			if !bytes.Equal(w.Bytes(), data[:tt.wantN]) {
				t.Errorf("wrote %q", w.Bytes())
			}
			if f := src.failure(); !errors.Is(f, tt.failure) || (tt.failure == nil) != (f == nil) {
				t.Errorf("failure() = %v, want %v", f, tt.failure)
			}
			// net/http copies what follows the length too: nothing,
			// without asking the body to write again.
			if tt.wantErr == nil {
				calls := wt.(*writerTo).calls
				if n, err := (writingBody{src, wt}).WriteTo(w); n != 0 || err != nil || wt.(*writerTo).calls != calls {
					t.Errorf("WriteTo after the length = %d, %v, with %d more calls of the body; want 0, nil, none",
						n, err, wt.(*writerTo).calls-calls)
				}
			}
		})
	}
}
