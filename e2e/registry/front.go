package registry

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path/filepath"
)

// Front stands where a registry's presigned URLs point
// (S3Options.RedirectEndpoint) and forwards to its store with the Host it
// received, which the signature covers: a place for a test to see, count,
// alter or refuse what goes between a client and the store.
type Front struct {
	// URL is its https://127.0.0.1:PORT, to give as RedirectEndpoint.
	URL string
	// Intercept, when set, sees each request first and may answer it
	// itself (returning true) instead of forwarding it.
	Intercept func(w http.ResponseWriter, r *http.Request) bool
	// ModifyResponse, when set, sees each response of the store, as
	// httputil.ReverseProxy's.
	ModifyResponse func(*http.Response) error

	ln  net.Listener
	srv *http.Server
}

// NewFront listens on loopback; set its hooks, start the registry with
// its URL, then Serve.
func NewFront() (*Front, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return &Front{URL: "https://" + ln.Addr().String(), ln: ln}, nil
}

// Serve serves TLS with r's certificate, forwarding to r's store, until
// Close.
func (f *Front) Serve(r *Registry) error {
	cert, err := tls.LoadX509KeyPair(filepath.Join(r.Dir, "cert.pem"), filepath.Join(r.Dir, "key.pem"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.CAPEM)
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&url.URL{Scheme: "https", Host: r.Store.Addr})
			pr.Out.Host = pr.In.Host
		},
		Transport:      &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, MaxIdleConnsPerHost: 64},
		ModifyResponse: f.ModifyResponse,
	}
	f.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if f.Intercept != nil && f.Intercept(w, req) {
			return
		}
		proxy.ServeHTTP(w, req)
	}), TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	go f.srv.ServeTLS(f.ln, "", "")
	return nil
}

// Close stops it.
func (f *Front) Close() {
	if f.srv != nil {
		f.srv.Close()
		return
	}
	f.ln.Close()
}
