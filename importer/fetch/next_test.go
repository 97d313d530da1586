package fetch_test

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net/http/httptest"
	"testing"
	"testing/iotest"
	"time"
	"unsafe"

	"github.com/diskimporter/diskimporter/importer/fetch"
)

// bufferEnd names the buffer behind b by the address of its last byte,
// the same for every slice of one buffer.
func bufferEnd(b []byte) uintptr {
	return uintptr(unsafe.Pointer(unsafe.SliceData(b[:cap(b)]))) + uintptr(cap(b))
}

// TestNextLends: Next hands out the parallel pieces from the buffers they
// were received in (at most one buffer per connection, no copy), mixed
// with Read in any sizes, and a piece's buffer is not filled again while
// the caller may still hold its last slice: each slice still holds its
// bytes when the next call comes (the race detector would also see the
// write).
func TestNextLends(t *testing.T) {
	t.Parallel()
	s := &server{data: randomBytes(40*chunk + 123), etag: `"v1"`, faults: faults{dropAfter: chunk / 3, dropCount: 3}}
	ts := httptest.NewServer(s)
	defer ts.Close()
	for seed := range uint64(4) {
		rng := rand.New(rand.NewPCG(seed, 7))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		const conns = 3
		obj, resp, err := fetch.Open(ctx, client(), ts.URL, "the object", nil, fetch.Options{Connections: conns, ChunkSize: chunk, Retries: 5})
		if err != nil {
			t.Fatal(err)
		}
		r := obj.NewReader(ctx, resp)
		nx := fetch.Borrow(r)
		var got []byte
		bufs := map[uintptr]bool{}
		var held, want []byte
		for {
			if !bytes.Equal(held, want) {
				t.Fatalf("seed %d: the slice handed out at byte %d changed before the next call", seed, len(got)-len(held))
			}
			n := 1 + rng.IntN(2*chunk)
			if rng.IntN(4) == 0 {
				b := make([]byte, n)
				k, err := nx.Read(b)
				got, held, want = append(got, b[:k]...), nil, nil
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				continue
			}
			b, err := nx.Next(n)
			if len(b) > n {
				t.Fatalf("Next(%d) gave %d bytes", n, len(b))
			}
			if len(b) > 0 {
				bufs[bufferEnd(b)] = true
			}
			got, held, want = append(got, b...), b, bytes.Clone(b)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		r.Close()
		cancel()
		if !bytes.Equal(got, s.data) {
			t.Fatalf("seed %d: read %d bytes, not the object's %d", seed, len(got), len(s.data))
		}
		// The first piece is the first response's own buffer.
		if len(bufs) > conns+1 {
			t.Errorf("seed %d: Next handed out slices of %d buffers; want at most %d", seed, len(bufs), conns+1)
		}
	}
}

// TestBorrowPlainReader: a reader without Next is read into one buffer
// of Borrow's, filled as far as asked unless the reader ends or fails.
func TestBorrowPlainReader(t *testing.T) {
	data := randomBytes(100_000)
	nx := fetch.Borrow(iotest.OneByteReader(bytes.NewReader(data)))
	var got []byte
	bufs := map[uintptr]bool{}
	for {
		b, err := nx.Next(4096)
		if len(b) != 4096 && err == nil {
			t.Fatalf("Next(4096) gave %d bytes and no error", len(b))
		}
		if len(b) > 0 {
			bufs[bufferEnd(b)] = true
		}
		got = append(got, b...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, data) || len(bufs) != 1 {
		t.Errorf("read %d of %d bytes from %d buffers", len(got), len(data), len(bufs))
	}
	if _, err := fetch.Borrow(iotest.ErrReader(nil)).Next(10); err != io.ErrNoProgress {
		t.Errorf("a reader that gives nothing, forever: %v", err)
	}
}
