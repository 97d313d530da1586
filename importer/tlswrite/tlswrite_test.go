package tlswrite_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/importer/tlswrite"
)

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// server starts a loopback TLS server that runs serve on each connection,
// with the certificate of net/http/httptest.
func server(t *testing.T, serve func(net.Conn)) (addr string, cfg *tls.Config) {
	t.Helper()
	hs := httptest.NewUnstartedServer(http.NotFoundHandler())
	hs.StartTLS() // for its certificate only
	hs.Close()
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: hs.TLS.Certificates})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	roots := x509.NewCertPool()
	roots.AddCert(hs.Certificate())
	return l.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "example.com", MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}}
}

func dial(t *testing.T, addr string, cfg *tls.Config) (*tlswrite.Conn, *countingConn) {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cc := &countingConn{Conn: raw}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := tlswrite.Client(ctx, cc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, cc
}

// stuckConn stops taking writes once stuck is set, as a socket whose peer
// stopped reading: a Write then waits for the write deadline or Close.
type stuckConn struct {
	net.Conn
	stuck    atomic.Bool
	closed   chan struct{}
	once     sync.Once
	deadline atomic.Value // time.Time
}

func (c *stuckConn) Write(p []byte) (int, error) {
	if !c.stuck.Load() {
		return c.Conn.Write(p)
	}
	d, _ := c.deadline.Load().(time.Time)
	wait := time.Hour
	if !d.IsZero() {
		wait = time.Until(d)
	}
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	case <-time.After(wait):
		return 0, errors.New("write deadline exceeded")
	}
}

func (c *stuckConn) SetWriteDeadline(t time.Time) error {
	c.deadline.Store(t)
	return c.Conn.SetWriteDeadline(t)
}

func (c *stuckConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// TestCloseDoesNotWait: Close returns within a fraction of a second when
// the peer takes no more bytes, where crypto/tls would wait 5 s to send
// its close_notify; a cancelled request closes its connection this way.
func TestCloseDoesNotWait(t *testing.T) {
	t.Parallel()
	addr, cfg := server(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	sc := &stuckConn{Conn: raw, closed: make(chan struct{})}
	c, err := tlswrite.Client(t.Context(), sc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	sc.stuck.Store(true)
	start := time.Now()
	c.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v with a peer that reads nothing", d)
	}
}

// TestRecordsGoTogether: 8 MiB written as 1 MiB Writes, or through
// io.Copy from a reader of 4 KiB reads (how net/http sends a request
// body), reach the socket in 256 KiB writes rather than one per 16 KiB
// record, and the server gets every byte.
func TestRecordsGoTogether(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(w io.Writer, data []byte) error
	}{
		{"1 MiB Writes", func(w io.Writer, data []byte) error {
			for off := 0; off < len(data); off += 1 << 20 {
				if _, err := w.Write(data[off : off+1<<20]); err != nil {
					return err
				}
			}
			return nil
		}},
		{"io.Copy of 4 KiB reads", func(w io.Writer, data []byte) error {
			_, err := io.Copy(w, &smallReads{data})
			return err
		}},
		{"a body of known length that writes itself", func(w io.Writer, data []byte) error {
			lr := &io.LimitedReader{R: &selfWriter{data}, N: int64(len(data))}
			_, err := io.Copy(w, lr)
			if err == nil && lr.N != 0 {
				err = fmt.Errorf("the limit was left at %d", lr.N)
			}
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, cfg := server(t, func(c net.Conn) {
				h := sha256.New()
				io.CopyN(h, c, 8<<20)
				c.Write(h.Sum(nil))
			})
			c, cc := dial(t, addr, cfg)
			data := make([]byte, 8<<20)
			rand.Read(data)
			before := cc.writes.Load()
			if err := tc.send(c, data); err != nil {
				t.Fatal(err)
			}
			writes := cc.writes.Load() - before
			got := make([]byte, sha256.Size)
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatal(err)
			}
			if want := sha256.Sum256(data); !bytes.Equal(got, want[:]) {
				t.Fatalf("the server hashed %x, want %x", got, want)
			}
			// 512 records of 16 KiB: 32 batches, and a short one per
			// Write at most.
			if writes > 40 {
				t.Errorf("%d socket writes for 8 MiB, want at most 40", writes)
			}
		})
	}
}

// TestEchoRandomWrites: writes of random sizes while the server echoes
// them back, read at the same time; the bytes come back in order.
func TestEchoRandomWrites(t *testing.T) {
	addr, cfg := server(t, func(c net.Conn) { io.Copy(c, c) })
	c, _ := dial(t, addr, cfg)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := mathrand.New(mathrand.NewPCG(seed, 1))
	var sent bytes.Buffer
	for range 40 {
		p := make([]byte, rng.IntN(600<<10))
		rand.Read(p)
		sent.Write(p)
	}
	type result struct {
		b   []byte
		err error
	}
	back := make(chan result, 1)
	go func() {
		b := make([]byte, sent.Len())
		_, err := io.ReadFull(c, b)
		back <- result{b, err}
	}()
	rest := sent.Bytes()
	for len(rest) > 0 {
		n := min(len(rest), rng.IntN(1<<20)+1)
		if _, err := c.Write(rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	r := <-back
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !bytes.Equal(r.b, sent.Bytes()) {
		t.Fatal("the bytes echoed differ from those written")
	}
}

// TestFailedWriteSticks: once the socket refuses a write, the Write says
// so (nothing of it is counted as sent) and so does every later one.
func TestFailedWriteSticks(t *testing.T) {
	addr, cfg := server(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	c, cc := dial(t, addr, cfg)
	cc.Conn.Close()
	for i := range 2 {
		n, err := c.Write(make([]byte, 100<<10))
		if err == nil || n != 0 {
			t.Fatalf("write %d on a closed socket: %d, %v; want 0 and an error", i, n, err)
		}
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("write %d: %v, want net.ErrClosed", i, err)
		}
	}
}

// smallReads gives its bytes 4 KiB at a time.
type smallReads struct{ b []byte }

func (s *smallReads) Read(p []byte) (int, error) {
	if len(s.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 4<<10)], s.b)
	s.b = s.b[n:]
	return n, nil
}

// selfWriter writes its bytes 1 MiB at a time, and cannot be read: what
// reads it copies.
type selfWriter struct{ b []byte }

func (s *selfWriter) Read([]byte) (int, error) { panic("a body that writes itself was read") }

func (s *selfWriter) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for len(s.b) > 0 {
		n, err := w.Write(s.b[:min(len(s.b), 1<<20)])
		total += int64(n)
		s.b = s.b[n:]
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// TestLimitHolds: a body that writes itself past its *io.LimitedReader's
// limit sends no byte past it, and the copy fails.
func TestLimitHolds(t *testing.T) {
	const limit = 3<<20 - 5
	got := make(chan []byte, 1)
	addr, cfg := server(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		got <- b
	})
	c, _ := dial(t, addr, cfg)
	data := make([]byte, 3<<20)
	rand.Read(data)
	lr := &io.LimitedReader{R: &selfWriter{data}, N: limit}
	n, err := c.ReadFrom(lr)
	if n != limit || !errors.Is(err, tlswrite.ErrPastLimit) || lr.N != 0 {
		t.Errorf("copied %d bytes, %v, limit left %d; want %d, ErrPastLimit, 0", n, err, lr.N, limit)
	}
	c.Close()
	if b := <-got; !bytes.Equal(b, data[:limit]) {
		t.Errorf("the server got %d bytes, want the first %d", len(b), limit)
	}
}
