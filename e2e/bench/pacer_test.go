package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestPacer checks that the pacer passes TLS through to the store, so the
// store sees the Host the client asked for, and paces each connection,
// also across requests on one connection.
func TestPacer(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	var mu sync.Mutex
	var hosts []string
	store := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hosts = append(hosts, r.Host)
		mu.Unlock()
		http.ServeContent(w, r, "blob", time.Unix(0, 0), bytes.NewReader(data))
	}))
	defer store.Close()
	s := &setup{}
	defer func() {
		for _, stop := range s.stops {
			stop()
		}
	}()
	const rate = 4e6
	pc, err := s.newPacer(rate)
	if err != nil {
		t.Fatal(err)
	}
	go pc.serve(strings.TrimPrefix(store.URL, "https://"))
	endpoint := pc.url
	client := store.Client()

	start := time.Now()
	const pieces = 4
	for i := range pieces {
		req, _ := http.NewRequest(http.MethodGet, endpoint+"/blob", nil)
		n := len(data) / pieces
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", i*n, (i+1)*n-1))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, data[i*n:(i+1)*n]) {
			t.Fatalf("piece %d: %s, %d bytes, %v", i, resp.Status, len(got), err)
		}
	}
	took := time.Since(start)
	want := time.Duration(float64(len(data)-throttleBurst-throttleChunk) / rate * float64(time.Second))
	if took < want || took > 2*want {
		t.Errorf("1 MiB in %d requests at %g bytes/s took %v, want %v to %v", pieces, rate, took, want, 2*want)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := strings.TrimPrefix(endpoint, "https://"); len(hosts) != pieces || hosts[0] != want {
		t.Errorf("the store saw Host %q, want %q in each of %d requests", hosts, want, pieces)
	}
}
