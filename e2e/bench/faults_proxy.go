package main

import (
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diskimporter/diskimporter/e2e/fault"
	"github.com/diskimporter/diskimporter/e2e/registry"
)

// proxyPlan is what the fault proxy does to one import.
type proxyPlan struct {
	// cutAt cuts the first layer PATCH that carries layer byte cutAt
	// there; 0: never.
	cutAt int64
	// holdAt stops the first layer PATCH that carries layer byte holdAt
	// there, tells reached, and holds it until the client goes away; 0:
	// never.
	holdAt int64
	// lie moves the offset every GET on an upload reports; 0: the truth.
	lie int64
}

// exchange is one request the proxy passed on, for the trace of a run.
type exchange struct {
	what        string
	start, took time.Duration // since the run began
	status      int
}

// faultProxy is a TLS proxy on loopback in front of the registry that
// cuts, holds or lies as its plan says, counts the layer bytes it passes
// on to the registry and keeps a trace of the requests.
type faultProxy struct {
	addr, caFile string
	reg          *registry.Registry
	rt           *http.Transport // to the registry
	rp           *httputil.ReverseProxy

	mu      sync.Mutex
	plan    proxyPlan
	began   time.Time
	trace   []exchange
	reached chan struct{}

	forwarded atomic.Int64 // layer PATCH body bytes passed on
	lies      atomic.Int64
}

// startFaultProxy serves the proxy until the process ends, writing its
// CA certificate into dir.
func startFaultProxy(reg *registry.Registry, dir string) (*faultProxy, error) {
	p := &faultProxy{reg: reg, rt: &http.Transport{TLSClientConfig: reg.TLSConfig(), WriteBufferSize: 1 << 20}}
	p.rp = httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "https", Host: reg.Addr})
	p.rp.Transport = p.rt
	p.rp.ErrorLog = log.New(io.Discard, "", 0)
	p.rp.ModifyResponse = func(resp *http.Response) error {
		p.keepOnProxy(resp.Header)
		return nil
	}
	srv := httptest.NewUnstartedServer(p)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = &tls.Config{NextProtos: []string{"http/1.1"}}
	srv.StartTLS()
	p.addr = srv.Listener.Addr().String()
	p.caFile = filepath.Join(dir, "proxy-ca.pem")
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return p, os.WriteFile(p.caFile, caPEM, 0o600)
}

// reset gives the proxy the plan of the next run, which begins now, and
// zeroes its trace; it keeps the counts, which span the runs of a row.
func (p *faultProxy) reset(plan proxyPlan) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.plan, p.began, p.trace = plan, time.Now(), nil
	p.reached = make(chan struct{}, 1)
}

// zero starts the counts of a row.
func (p *faultProxy) zero() {
	p.forwarded.Store(0)
	p.lies.Store(0)
}

// held is signalled once the run's first layer PATCH is held.
func (p *faultProxy) held() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reached
}

// exchanges returns the trace of the run.
func (p *faultProxy) exchanges() []exchange {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]exchange(nil), p.trace...)
}

func (p *faultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	p.mu.Lock()
	lie := p.plan.lie
	p.mu.Unlock()
	if lie != 0 && r.Method == http.MethodGet && isUpload(r) {
		p.lie(sw, r, lie)
	} else {
		if isLayerPatch(r) {
			r.Body = p.patchBody(r)
		}
		r.Host = p.reg.Addr
		p.rp.ServeHTTP(sw, r)
	}
	p.record(describe(r), start, sw.status)
}

// record adds a finished request to the trace.
func (p *faultProxy) record(what string, start time.Time, status int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.trace = append(p.trace, exchange{what: what, start: start.Sub(p.began), took: time.Since(start), status: status})
}

// patchBody wraps the body of a layer PATCH: the first one of a run that
// carries the layer byte the plan names is cut or held there.
func (p *faultProxy) patchBody(r *http.Request) io.ReadCloser {
	p.mu.Lock()
	defer p.mu.Unlock()
	from := contentRangeStart(r.Header.Get("Content-Range"))
	carries := func(at int64) bool { return at > from && at < from+r.ContentLength }
	b := &fault.Body{RC: r.Body, Left: -1, Count: &p.forwarded}
	switch {
	case carries(p.plan.cutAt):
		b.Left, p.plan.cutAt = p.plan.cutAt-from, 0
	case carries(p.plan.holdAt):
		b.Left, b.Reached, p.plan.holdAt = p.plan.holdAt-from, p.reached, 0
	}
	return b
}

// lie asks the registry where the upload r names stands and answers with
// that offset moved by delta.
func (p *faultProxy) lie(w http.ResponseWriter, r *http.Request, delta int64) {
	req := r.Clone(r.Context())
	req.Host, req.URL.Scheme, req.URL.Host, req.RequestURI = p.reg.Addr, "https", p.reg.Addr, ""
	resp, err := p.rt.RoundTrip(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	p.keepOnProxy(w.Header())
	if rg := resp.Header.Get("Range"); resp.StatusCode == http.StatusNoContent && rg != "" {
		_, end, _ := strings.Cut(rg, "-")
		if n, err := strconv.ParseInt(end, 10, 64); err == nil && n > 0 {
			w.Header().Set("Range", fmt.Sprintf("0-%d", max(n+delta, 1)))
			p.lies.Add(1)
		}
	}
	w.WriteHeader(resp.StatusCode)
}

// keepOnProxy rewrites an upload Location that names the registry to name
// the proxy.
func (p *faultProxy) keepOnProxy(h http.Header) {
	if loc := h.Get("Location"); loc != "" {
		h.Set("Location", strings.Replace(loc, p.reg.Addr, p.addr, 1))
	}
}

// statusWriter remembers the status of an answer.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// isLayerPatch: the layer goes in PATCHes with a length; the config blob
// is small.
func isLayerPatch(r *http.Request) bool {
	return r.Method == http.MethodPatch && r.ContentLength >= 1<<20
}

func isUpload(r *http.Request) bool { return strings.Contains(r.URL.Path, "/blobs/uploads/") }

// describe names a request in a trace: its method and what it is for.
func describe(r *http.Request) string {
	what := "other"
	switch path := r.URL.Path; {
	case path == "/v2/":
		what = "ping"
	case isUpload(r) && strings.HasSuffix(path, "/blobs/uploads/"):
		what = "upload start"
	case isLayerPatch(r):
		what = "layer from " + strconv.FormatInt(contentRangeStart(r.Header.Get("Content-Range")), 10)
	case isUpload(r):
		what = "upload"
	case strings.Contains(path, "/blobs/"):
		what = "blob"
	case strings.Contains(path, "/manifests/"):
		what = "manifest"
	}
	return r.Method + " " + what
}

// contentRangeStart is the first byte of a Content-Range "FROM-TO", or 0.
func contentRangeStart(cr string) int64 {
	start, _, _ := strings.Cut(cr, "-")
	n, _ := strconv.ParseInt(start, 10, 64)
	return n
}
