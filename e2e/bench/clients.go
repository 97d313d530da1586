package main

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/stream"

	"github.com/diskimporter/diskimporter/tlsconfig"
)

// clients are the comparison rows (and the maker of their sources), run as
// subcommands of this binary so that each is its own process with its own
// rusage.
var clients = map[string]func(args []string) error{
	"gzip-stream-layer": gzipStreamLayer,
	"put-ceiling":       putCeiling,
	"cpu-ceiling":       cpuCeiling,
	"sha256":            sha256File,
	"get":               plainGet,
	"make-source":       makeSource,
	"layer-digest":      layerDigest,
}

func envAuth() *authn.Basic {
	return &authn.Basic{Username: os.Getenv("DISKIMPORTER_USERNAME"), Password: os.Getenv("DISKIMPORTER_PASSWORD")}
}

func caPool(caFile string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificate in %s", caFile)
	}
	return pool, nil
}

// gzipStreamLayer is the design diskimporter replaces: go-containerregistry's
// stream.NewLayer (gzip) over its default transport.
func gzipStreamLayer(args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("usage: gzip-stream-layer SOURCE_URL REF CA_FILE")
	}
	pool, err := caPool(args[2])
	if err != nil {
		return err
	}
	resp, err := http.Get(args[0])
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	ref, err := name.ParseReference(args[1])
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, stream.NewLayer(resp.Body))
	if err != nil {
		return err
	}
	tr := remote.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	return remote.Write(ref, img, remote.WithTransport(tr), remote.WithAuth(envAuth()))
}

// putCeiling uploads the already-hashed bytes with one monolithic PUT over
// the pinned transport: what the registry connection can carry.
func putCeiling(args []string) error {
	if len(args) != 4 {
		return fmt.Errorf("usage: put-ceiling FILE DIGEST REF CA_FILE")
	}
	file, digest, refStr, caFile := args[0], args[1], args[2], args[3]
	tc, err := tlsconfig.New(tlsconfig.Options{CAFile: caFile})
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tc, WriteBufferSize: 1 << 20}}
	ref, err := name.ParseReference(refStr)
	if err != nil {
		return err
	}
	auth := envAuth()
	base := fmt.Sprintf("https://%s/v2/%s/blobs/uploads/", ref.Context().RegistryStr(), ref.Context().RepositoryStr())
	req, _ := http.NewRequest(http.MethodPost, base, nil)
	req.SetBasicAuth(auth.Username, auth.Password)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("POST %s: %s", base, resp.Status)
	}
	loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil {
		return err
	}
	q := loc.Query()
	q.Set("digest", digest)
	loc.RawQuery = q.Encode()

	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	req, _ = http.NewRequest(http.MethodPut, loc.String(), f)
	req.ContentLength = fi.Size()
	req.Header.Set("Content-Type", "application/octet-stream")
	req.SetBasicAuth(auth.Username, auth.Password)
	resp, err = client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("PUT %s: %s: %s", (&url.URL{Path: loc.Path}).String(), resp.Status, bytes.TrimSpace(b))
	}
	return nil
}

// cpuCeiling does the CPU work an import cannot avoid, in memory: sha256
// and AES-128-GCM sealing of every byte.
func cpuCeiling(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: cpu-ceiling FILE")
	}
	f, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	block, err := aes.NewCipher(make([]byte, 16))
	if err != nil {
		return err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return err
	}
	nonce := make([]byte, gcm.NonceSize())
	const record = 16 << 10 // TLS record size
	buf := make([]byte, 1<<20)
	sealed := make([]byte, 0, record+gcm.Overhead())
	h := sha256.New()
	for {
		n, err := io.ReadFull(f, buf)
		h.Write(buf[:n])
		for off := 0; off < n; off += record {
			sealed = gcm.Seal(sealed[:0], nonce, buf[off:min(off+record, n)], nil)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// sha256File prints the sha256 of FILE, read in 1 MiB reads: the hash of
// an import, alone.
func sha256File(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: sha256 FILE")
	}
	f, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	// onlyReader hides *os.File's WriteTo (which reads 32 KiB at a time):
	// the reads are 1 MiB.
	if _, err := io.CopyBuffer(h, onlyReader{f}, make([]byte, 1<<20)); err != nil {
		return err
	}
	_, err = fmt.Printf("sha256:%x\n", h.Sum(nil))
	return err
}

// plainGet reads URL with one GET into /dev/null, in 1 MiB reads, over Go's
// default transport, and prints how many bytes came: the read of an
// import's source, alone.
func plainGet(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: get URL")
	}
	resp, err := http.Get(args[0])
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", args[0], resp.Status)
	}
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer null.Close()
	// onlyWriter keeps *os.File's ReadFrom out: the bytes go through this
	// process's memory, as an import's do.
	n, err := io.CopyBuffer(onlyWriter{null}, onlyReader{resp.Body}, make([]byte, 1<<20))
	if err != nil {
		return err
	}
	_, err = fmt.Println(n)
	return err
}

type onlyWriter struct{ io.Writer }

type onlyReader struct{ io.Reader }
