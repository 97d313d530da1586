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

// TestRegistryWritesBatched: an upload through batchedTLSDial reaches the
// server whole, in a few large socket writes rather than one a TLS record.
func TestRegistryWritesBatched(t *testing.T) {
	t.Parallel()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		io.Copy(h, r.Body)
		io.WriteString(w, hex.EncodeToString(h.Sum(nil)))
	}))
	defer srv.Close()
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
	body := make([]byte, 8<<20)
	rand.Read(body)
	req, err := http.NewRequest(http.MethodPut, srv.URL, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if want := sha256.Sum256(body); string(got) != hex.EncodeToString(want[:]) {
		t.Fatalf("the server hashed %s, want %x", got, want)
	}
	// 512 records of 16 KiB; in 256 KiB writes, about 40 with the
	// handshake and the headers.
	if n := writes.Load(); n > 80 {
		t.Errorf("%d socket writes for an 8 MiB body, want at most 80", n)
	}
}
