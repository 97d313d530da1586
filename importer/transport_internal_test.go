package importer

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// countedConn counts the writes that reach the socket.
type countedConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countedConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// unreadable is a body that can only write itself (bytes.Reader's
// WriteTo), as the layer does.
type unreadable struct{ *bytes.Reader }

func (unreadable) Read([]byte) (int, error) { panic("a body that writes itself was read") }

// TestRegistryWritesBatched: an upload through batchedTLSDial reaches the
// server whole, in a few large socket writes rather than one a TLS record;
// a body that writes itself (the layer) is never read into a buffer.
func TestRegistryWritesBatched(t *testing.T) {
	t.Parallel()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		io.Copy(h, r.Body)
		io.WriteString(w, hex.EncodeToString(h.Sum(nil)))
	}))
	defer srv.Close()
	data := make([]byte, 8<<20)
	rand.Read(data)
	for name, body := range map[string]func() io.Reader{
		"bytes.Reader":                  func() io.Reader { return bytes.NewReader(data) },
		"a body that writes itself":     func() io.Reader { return unreadable{bytes.NewReader(data)} },
		"a reader, in 1 MiB Reads only": func() io.Reader { return struct{ io.Reader }{bytes.NewReader(data)} },
	} {
		var writes atomic.Int64
		dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return countedConn{c, &writes}, nil
		}
		tc := srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
		client := &http.Client{Transport: &http.Transport{DialTLSContext: batchedTLSDial(dial, tc), WriteBufferSize: 1 << 20}}
		req, err := http.NewRequest(http.MethodPut, srv.URL, body())
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = int64(len(data))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if want := sha256.Sum256(data); string(got) != hex.EncodeToString(want[:]) {
			t.Fatalf("%s: the server hashed %s, want %x", name, got, want)
		}
		// 512 records of 16 KiB; in 256 KiB writes, about 40 with the
		// handshake and the headers.
		if n := writes.Load(); n > 80 {
			t.Errorf("%s: %d socket writes for an 8 MiB body, want at most 80", name, n)
		}
	}
}
