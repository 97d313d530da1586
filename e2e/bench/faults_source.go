package main

import (
	"io"
	"net"
	"net/http"
	"sync/atomic"
)

// countingSource serves a directory over plain HTTP on loopback, as serve
// does, with an ETag that can be changed, counting the body bytes it
// sends.
type countingSource struct {
	url    string
	served atomic.Int64
	etag   atomic.Value // string
}

// startCountingSource serves dir, each connection paced to rate bytes per
// second unless rate is 0.
func startCountingSource(dir string, rate float64) (*countingSource, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &countingSource{url: "http://" + ln.Addr().String() + "/"}
	s.etag.Store(`"disk-1"`)
	if rate > 0 {
		ln = throttledListener{Listener: ln, rate: rate}
	}
	files := http.FileServer(http.Dir(dir))
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", s.etag.Load().(string)) // http.ServeContent checks If-Range against it
		files.ServeHTTP(&countingWriter{ResponseWriter: w, n: &s.served}, r)
	}))
	return s, nil
}

// change gives the source another ETag: another version of it.
func (s *countingSource) change(etag string) { s.etag.Store(etag) }

// countingWriter counts the body bytes written through it.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(int64(n))
	return n, err
}

// ReadFrom keeps the file server's sendfile.
func (w *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	n, err := io.Copy(w.ResponseWriter, r)
	w.n.Add(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
