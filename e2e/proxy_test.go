package e2e

import (
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
)

// TestSourceThroughProxy: HTTP_PROXY is honoured for the source. The source
// is named by a host that does not resolve; only the loopback proxy, which
// sends every request to the test source, can reach it. An unreachable
// proxy fails before any byte moves, with a message naming it.
func TestSourceThroughProxy(t *testing.T) {
	needE2E(t)
	t.Parallel()
	target, err := url.Parse(src.URL)
	if err != nil {
		t.Fatal(err)
	}
	var proxied atomic.Int32
	proxy := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Host != "disk-source.test" {
			http.Error(w, "unexpected host "+r.URL.Host, http.StatusBadGateway)
			return
		}
		proxied.Add(1)
		out := r.Clone(r.Context())
		out.RequestURI = ""
		out.URL.Host, out.Host = target.Host, target.Host
		resp, err := http.DefaultTransport.RoundTrip(out)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go proxy.Serve(ln)
	t.Cleanup(func() { proxy.Close() })

	const source = "http://disk-source.test/raw8.img"
	dest := reg.Addr + "/" + newRepo(t) + ":v1"
	env := childEnv(t, append(credsEnv(reg), "HTTP_PROXY=http://"+ln.Addr().String())...)
	res := parseSuccess(t, runImport(t, env, importArgs(reg, source, dest, "--chunk-size", "1MiB")...))
	verify(t, res, want{dest: dest, source: source, sha256: src.rawSum, size: rawSize, format: "raw", diskName: "disk.img"})
	if n := proxied.Load(); n < 8 {
		t.Errorf("the proxy saw %d requests, want the probe and the pieces (8)", n)
	}

	// A proxy that is not there.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	dest = reg.Addr + "/" + newRepo(t) + ":v1"
	env = childEnv(t, append(credsEnv(reg), "HTTP_PROXY=http://"+deadAddr)...)
	r := runImport(t, env, importArgs(reg, source, dest)...)
	checkFailure(t, r, "SourceUnavailable")
	if !strings.Contains(string(r.stderr), "proxy") {
		t.Errorf("the failure does not mention the proxy:\n%s", r.stderr)
	}
}
