package importer_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/reason"
	"github.com/diskimporter/diskimporter/layer"
	"github.com/diskimporter/diskimporter/tlsconfig"
)

// basicAuth answers 401 with a Basic challenge unless the request carries
// user and pass.
func basicAuth(user, pass string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="x"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// patchRedirect answers the first PATCH (the disk layer upload; the config
// blob is PATCHed later) with a 307 to the same upload URL plus a query
// parameter, after reading its body, and counts the PATCHes that arrive
// with that parameter.
type patchRedirect struct {
	first      atomic.Bool
	redirected atomic.Int64 // PATCHes answered 307
	followed   atomic.Int64 // PATCHes that carry the added parameter
}

func (p *patchRedirect) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPatch {
			next.ServeHTTP(w, r)
			return
		}
		if r.URL.Query().Get("redirected") != "" {
			p.followed.Add(1)
			next.ServeHTTP(w, r)
			return
		}
		if p.first.CompareAndSwap(false, true) {
			p.redirected.Add(1)
			io.Copy(io.Discard, r.Body)
			u := *r.URL
			q := u.Query()
			q.Set("redirected", "1")
			u.RawQuery = q.Encode()
			w.Header().Set("Location", u.String())
			w.WriteHeader(http.StatusTemporaryRedirect)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// withISOSignature returns data with the ISO 9660 signature at 0x8001.
func withISOSignature(data []byte) []byte {
	out := bytes.Clone(data)
	copy(out[0x8001:], "CD001")
	return out
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func TestRunImports(t *testing.T) {
	t.Parallel()
	const (
		user = "alice"
		pass = "s3cret-registry-password"
	)

	type want struct {
		format, diskPath string
		os, arch         string
		docker           bool
		gets             int64 // GETs of the http source; 0 for files
		http2            bool
		noSHA256         bool
	}
	type testCase struct {
		name string
		size int64
		// content turns the generated disk into the served one.
		content func([]byte) []byte
		// source is "http", "file", "file-url" or "http-secret" (an http
		// URL with user info and a query string).
		source   string
		regOpts  func(*patchRedirect) []registryOption
		opts     func(*importer.Options)
		pullAuth authn.Authenticator
		want     want
	}
	cases := []testCase{
		{
			name:   "http source linux/arm64",
			size:   1<<20 + 700, // not a multiple of 512: exercises the tar padding
			source: "http",
			opts:   func(o *importer.Options) { o.Platform = "linux/arm64" },
			want:   want{format: "raw", diskPath: "disk/disk.img", os: "linux", arch: "arm64", gets: 1},
		},
		{
			name:    "http source over HTTP/2, default platform",
			size:    2 << 20,
			source:  "http",
			opts:    func(o *importer.Options) { o.HTTP2 = true },
			regOpts: func(*patchRedirect) []registryOption { return []registryOption{withHTTP2()} },
			want:    want{format: "raw", diskPath: "disk/disk.img", os: "linux", arch: "amd64", gets: 1, http2: true},
		},
		{
			name:   "http source with credentials and query is redacted",
			size:   256 << 10,
			source: "http-secret",
			want:   want{format: "raw", diskPath: "disk/disk.img", os: "linux", arch: "amd64", gets: 1},
		},
		{
			name:   "file path",
			size:   3<<20 + 1,
			source: "file",
			want:   want{format: "raw", diskPath: "disk/disk.img", os: "linux", arch: "amd64"},
		},
		{
			name:   "file URL",
			size:   1 << 20,
			source: "file-url",
			want:   want{format: "raw", diskPath: "disk/disk.img", os: "linux", arch: "amd64"},
		},
		{
			name:    "iso",
			size:    1 << 20,
			content: withISOSignature,
			source:  "http",
			want:    want{format: "iso", diskPath: "disk/disk.iso", os: "linux", arch: "amd64", gets: 1},
		},
		{
			name:   "custom disk name",
			size:   64 << 10,
			source: "file",
			opts:   func(o *importer.Options) { o.DiskName = "root.raw" },
			want:   want{format: "raw", diskPath: "disk/root.raw", os: "linux", arch: "amd64"},
		},
		{
			name:   "docker media types",
			size:   1 << 20,
			source: "http",
			opts:   func(o *importer.Options) { o.DockerMediaTypes = true },
			want:   want{format: "raw", diskPath: "disk/disk.img", os: "linux", arch: "amd64", docker: true, gets: 1},
		},
		{
			name:   "registry with basic auth",
			size:   512 << 10,
			source: "http",
			regOpts: func(*patchRedirect) []registryOption {
				return []registryOption{withMiddleware(basicAuth(user, pass))}
			},
			opts:     func(o *importer.Options) { o.Username, o.Password = user, pass },
			pullAuth: &authn.Basic{Username: user, Password: pass},
			want:     want{format: "raw", diskPath: "disk/disk.img", os: "linux", arch: "amd64", gets: 1},
		},
		{
			name:   "without DiskSHA256 no sha256 is computed",
			size:   1 << 20,
			source: "http",
			opts:   func(o *importer.Options) { o.DiskSHA256 = false },
			want:   want{format: "raw", diskPath: "disk/disk.img", os: "linux", arch: "amd64", gets: 1, noSHA256: true},
		},
		{
			name:   "http source in 64 KiB pieces, 4 at a time",
			size:   1<<20 + 5,
			source: "http",
			opts:   func(o *importer.Options) { o.Connections, o.ChunkSize = 4, 64<<10 },
			want:   want{format: "raw", diskPath: "disk/disk.img", os: "linux", arch: "amd64", gets: 17},
		},
		{
			name:   "307 on the first PATCH re-reads the source in pieces",
			size:   1 << 20,
			source: "http",
			regOpts: func(p *patchRedirect) []registryOption {
				return []registryOption{withMiddleware(p.middleware)}
			},
			opts: func(o *importer.Options) { o.Connections, o.ChunkSize = 2, 256<<10 },
			want: want{format: "raw", diskPath: "disk/disk.img", os: "linux", arch: "amd64", gets: 8},
		},
		{
			name:   "307 on the first PATCH re-reads the source",
			size:   2<<20 + 3,
			source: "http",
			regOpts: func(p *patchRedirect) []registryOption {
				return []registryOption{withMiddleware(p.middleware)}
			},
			want: want{format: "raw", diskPath: "disk/disk.img", os: "linux", arch: "amd64", gets: 2},
		},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var redirect patchRedirect
			var regOpts []registryOption
			if tc.regOpts != nil {
				regOpts = tc.regOpts(&redirect)
			}
			reg := newTestRegistry(t, regOpts...)

			data := diskBytes(t, tc.size)
			if tc.content != nil {
				data = tc.content(data)
			}

			var src *testSource
			var source, wantSource string
			switch tc.source {
			case "http":
				src = newTestSource(t, serveBytes(data, `"e1"`))
				source, wantSource = src.url, src.url
			case "http-secret":
				src = newTestSource(t, serveBytes(data, `"e1"`))
				host := strings.TrimPrefix(src.srv.URL, "http://")
				source = "http://bob:source-secret@" + host + "/disk.img?X-Amz-Signature=sig-secret"
				wantSource = "http://" + host + "/disk.img?REDACTED"
			case "file", "file-url":
				path := filepath.Join(t.TempDir(), "disk.raw")
				if err := os.WriteFile(path, data, 0o600); err != nil {
					t.Fatal(err)
				}
				source, wantSource = path, path
				if tc.source == "file-url" {
					source = "file://" + path
				}
			default:
				t.Fatalf("unknown source kind %q", tc.source)
			}

			o := baseOptions(reg, source)
			if tc.opts != nil {
				tc.opts(&o)
			}
			res, err := importer.Run(testContext(t), o)
			if err != nil {
				t.Fatalf("Run: %v (reason %s)", err, reason.Of(err))
			}

			if src != nil && src.gets.Load() != tc.want.gets {
				t.Errorf("source served %d GETs, want %d", src.gets.Load(), tc.want.gets)
			}
			if tc.regOpts != nil && tc.want.gets == 2 {
				if got := redirect.redirected.Load(); got != 1 {
					t.Errorf("registry redirected %d PATCHes, want 1", got)
				}
				if got := redirect.followed.Load(); got != 1 {
					t.Errorf("%d PATCHes followed the redirect, want 1", got)
				}
			}
			if tc.want.http2 && reg.h2Requests.Load() == 0 {
				t.Errorf("no registry request used HTTP/2 (of %d)", reg.requests.Load())
			}
			if tc.source == "http-secret" {
				if s := fmt.Sprintf("%+v", *res); strings.Contains(s, "secret") {
					t.Errorf("result leaks a secret of the source URL: %s", s)
				}
			}
			reg.assertNoPlainHTTP(t)

			pullAuth := tc.pullAuth
			if pullAuth == nil {
				pullAuth = authn.Anonymous
			}
			checkImport(t, reg, res, data, checkWant{
				source:   wantSource,
				format:   tc.want.format,
				diskPath: tc.want.diskPath,
				os:       tc.want.os,
				arch:     tc.want.arch,
				docker:   tc.want.docker,
				noSHA256: tc.want.noSHA256,
				auth:     pullAuth,
			})
		})
	}
}

type checkWant struct {
	source, format, diskPath, os, arch string
	docker                             bool
	// noSHA256: the import was not asked for the disk's sha256.
	noSHA256 bool
	auth     authn.Authenticator
}

// checkImport pulls the image Run reported back from reg and checks it
// against data and want.
func checkImport(t *testing.T, reg *testRegistry, res *importer.Result, data []byte, want checkWant) {
	t.Helper()
	wantSHA := "sha256:" + sha256Hex(data)
	if want.noSHA256 {
		wantSHA = ""
	}

	// The result.
	if res.Destination != reg.destination() {
		t.Errorf("Result.Destination = %q, want %q", res.Destination, reg.destination())
	}
	if want := reg.host + "/" + testRepo + "@" + res.ManifestDigest; res.Reference != want {
		t.Errorf("Result.Reference = %q, want %q", res.Reference, want)
	}
	if res.Format != want.format {
		t.Errorf("Result.Format = %q, want %q", res.Format, want.format)
	}
	if res.DiskPath != want.diskPath {
		t.Errorf("Result.DiskPath = %q, want %q", res.DiskPath, want.diskPath)
	}
	if res.Size != int64(len(data)) {
		t.Errorf("Result.Size = %d, want %d", res.Size, len(data))
	}
	if res.Source != want.source {
		t.Errorf("Result.Source = %q, want %q", res.Source, want.source)
	}
	if res.SourceSHA256 != wantSHA {
		t.Errorf("Result.SourceSHA256 = %q, want %q", res.SourceSHA256, wantSHA)
	}
	wantLayerSize, err := layer.TarSize(filepath.Base(want.diskPath), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if res.LayerSize != wantLayerSize {
		t.Errorf("Result.LayerSize = %d, want %d", res.LayerSize, wantLayerSize)
	}
	if res.TLSVersion != "TLS 1.2" {
		t.Errorf("Result.TLSVersion = %q, want TLS 1.2", res.TLSVersion)
	}
	if !strings.Contains(res.TLSCipherSuite, "AES_128_GCM") && !strings.Contains(res.TLSCipherSuite, "AES_256_GCM") {
		t.Errorf("Result.TLSCipherSuite = %q, want an AES-GCM suite", res.TLSCipherSuite)
	}
	if res.Seconds < 0 || res.MBPerSecond < 0 {
		t.Errorf("Result.Seconds = %v, MBPerSecond = %v, want >= 0", res.Seconds, res.MBPerSecond)
	}

	// The tag, straight from the in-memory registry.
	if tags := reg.tags(t); len(tags) != 1 || tags[0] != testTag {
		t.Errorf("registry tags of %s = %v, want [%s]", testRepo, tags, testTag)
	}

	// The image, pulled back by tag.
	ref, err := name.ParseReference(res.Destination)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref, remote.WithContext(t.Context()), remote.WithTransport(reg.clientTransport()), remote.WithAuth(want.auth))
	if err != nil {
		t.Fatalf("pulling %s: %v", ref, err)
	}
	digest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if digest.String() != res.ManifestDigest {
		t.Errorf("tag points at %s, Result.ManifestDigest = %s", digest, res.ManifestDigest)
	}
	manifest, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	wantManifestMT, wantConfigMT, wantLayerMT := types.OCIManifestSchema1, types.OCIConfigJSON, types.OCIUncompressedLayer
	if want.docker {
		wantManifestMT, wantConfigMT, wantLayerMT = types.DockerManifestSchema2, types.DockerConfigJSON, types.DockerUncompressedLayer
	}
	if manifest.MediaType != wantManifestMT {
		t.Errorf("manifest media type = %s, want %s", manifest.MediaType, wantManifestMT)
	}
	if manifest.Config.MediaType != wantConfigMT {
		t.Errorf("config media type = %s, want %s", manifest.Config.MediaType, wantConfigMT)
	}

	wantAnnotations := map[string]string{
		importer.AnnotationSource:       want.source,
		importer.AnnotationSourceSHA256: wantSHA,
		importer.AnnotationFormat:       want.format,
		importer.AnnotationSize:         strconv.Itoa(len(data)),
		importer.AnnotationDiskPath:     want.diskPath,
		// Not compressed: the disk is the download.
		importer.AnnotationSourceCompression: "none",
		importer.AnnotationDiskSHA256:        wantSHA,
	}
	resultAnnotations := map[string]string{
		importer.AnnotationSource:            res.Source,
		importer.AnnotationSourceSHA256:      res.SourceSHA256,
		importer.AnnotationFormat:            res.Format,
		importer.AnnotationSize:              strconv.FormatInt(res.Size, 10),
		importer.AnnotationDiskPath:          res.DiskPath,
		importer.AnnotationSourceCompression: res.Compression,
		importer.AnnotationDiskSHA256:        res.DiskSHA256,
	}
	// An empty value is an annotation not written.
	empty := func(_, v string) bool { return v == "" }
	maps.DeleteFunc(wantAnnotations, empty)
	maps.DeleteFunc(resultAnnotations, empty)
	if !maps.Equal(resultAnnotations, wantAnnotations) {
		t.Errorf("Result as annotations = %v, want %v", resultAnnotations, wantAnnotations)
	}
	if want.docker {
		if len(manifest.Annotations) != 0 {
			t.Errorf("Docker manifest has annotations %v, want none", manifest.Annotations)
		}
	} else if !maps.Equal(manifest.Annotations, wantAnnotations) {
		t.Errorf("manifest annotations = %v, want %v", manifest.Annotations, wantAnnotations)
	}

	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != want.os || cfg.Architecture != want.arch {
		t.Errorf("config platform = %s/%s, want %s/%s", cfg.OS, cfg.Architecture, want.os, want.arch)
	}
	if !maps.Equal(cfg.Config.Labels, wantAnnotations) {
		t.Errorf("config labels = %v, want %v", cfg.Config.Labels, wantAnnotations)
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("image has %d layers, want 1", len(layers))
	}
	l := layers[0]
	mt, err := l.MediaType()
	if err != nil {
		t.Fatal(err)
	}
	if mt != wantLayerMT {
		t.Errorf("layer media type = %s, want %s", mt, wantLayerMT)
	}
	ld, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	diffID, err := l.DiffID()
	if err != nil {
		t.Fatal(err)
	}
	if ld.String() != res.LayerDigest || diffID.String() != res.LayerDigest {
		t.Errorf("layer digest = %s, diff ID = %s, Result.LayerDigest = %s; want all equal", ld, diffID, res.LayerDigest)
	}
	if len(manifest.Layers) != 1 || manifest.Layers[0].Size != res.LayerSize {
		t.Errorf("manifest layers = %+v, want one of size %d", manifest.Layers, res.LayerSize)
	}

	rc, err := l.Compressed() // the blob as stored: it is not compressed
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	blob, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading the layer blob: %v", err)
	}
	if got := "sha256:" + sha256Hex(blob); got != res.LayerDigest {
		t.Errorf("sha256 of the layer blob = %s, Result.LayerDigest = %s", got, res.LayerDigest)
	}
	if int64(len(blob)) != res.LayerSize {
		t.Errorf("layer blob is %d bytes, Result.LayerSize = %d", len(blob), res.LayerSize)
	}
	checkTar(t, blob, want.diskPath, data)
}

// checkTar checks that blob is a tar of disk/ and then diskPath holding
// data, owned by 107:107 with mode 0440.
func checkTar(t *testing.T, blob []byte, diskPath string, data []byte) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(blob))
	dir, err := tr.Next()
	if err != nil {
		t.Fatalf("first tar entry: %v", err)
	}
	if dir.Name != "disk/" || dir.Typeflag != tar.TypeDir || dir.Uid != 107 || dir.Gid != 107 {
		t.Errorf("first tar entry = %q type %c uid %d gid %d, want directory disk/ owned by 107:107",
			dir.Name, dir.Typeflag, dir.Uid, dir.Gid)
	}
	f, err := tr.Next()
	if err != nil {
		t.Fatalf("second tar entry: %v", err)
	}
	if f.Name != diskPath || f.Typeflag != tar.TypeReg {
		t.Errorf("second tar entry = %q type %c, want regular file %s", f.Name, f.Typeflag, diskPath)
	}
	if f.Uid != 107 || f.Gid != 107 || f.Mode != 0o440 {
		t.Errorf("%s: uid %d gid %d mode %#o, want 107 107 0440", f.Name, f.Uid, f.Gid, f.Mode)
	}
	if f.Size != int64(len(data)) {
		t.Errorf("%s: size %d, want %d", f.Name, f.Size, len(data))
	}
	got, err := io.ReadAll(tr)
	if err != nil {
		t.Fatalf("reading %s from the tar: %v", f.Name, err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("%s: content (%d bytes, sha256 %s) differs from the source (%d bytes, sha256 %s)",
			f.Name, len(got), sha256Hex(got), len(data), sha256Hex(data))
	}
	if h, err := tr.Next(); err != io.EOF {
		t.Errorf("after the disk: entry %v, error %v; want the end of the archive", h, err)
	}
}

// shortBody answers with a Content-Length of len(data) and then only half
// of data before closing the connection.
func shortBody(data []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			panic(err)
		}
		defer conn.Close()
		fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\nETag: \"short\"\r\nConnection: close\r\n\r\n", len(data))
		buf.Write(data[:len(data)/2])
		buf.Flush()
	}
}

// chunked answers data in chunked encoding, without a Content-Length.
func chunked(data []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		half := len(data) / 2
		w.Write(data[:half])
		w.(http.Flusher).Flush()
		w.Write(data[half:])
	}
}

// changingSource serves data with etag1 on the first GET and with etag2
// and second on the later ones.
func changingSource(first []byte, etag1 string, second []byte, etag2 string) http.HandlerFunc {
	var n atomic.Int64
	return func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			serveBytes(first, etag1)(w, r)
			return
		}
		serveBytes(second, etag2)(w, r)
	}
}

func status(code int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, http.StatusText(code), code)
	}
}

// refusedURL returns an http URL on loopback where nothing listens.
func refusedURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr + "/disk.img"
}

func TestRunFailures(t *testing.T) {
	t.Parallel()
	const (
		user = "alice"
		pass = "s3cret-registry-password"
		size = 1 << 20
	)
	disk := diskBytes(t, size)
	gz := append([]byte{0x1f, 0x8b, 0x08, 0x00}, make([]byte, 64<<10)...)
	qcow2 := append([]byte("QFI\xfb\x00\x00\x00\x03"), make([]byte, 64<<10)...)
	changed := bytes.Clone(disk)
	changed[size-1] ^= 0xff

	type testCase struct {
		name string
		// handler serves the source over http; nil when source is set.
		handler http.HandlerFunc
		// source returns Options.Source when the source is not the http
		// server.
		source  func(t *testing.T) string
		regOpts func(*patchRedirect) []registryOption
		opts    func(o *importer.Options, reg *testRegistry)

		wantErr    error
		wantReason reason.Reason
		// wantMsg are substrings of the error message; "$SOURCE" stands
		// for the source.
		wantMsg []string
		// notMsg must not appear in the error message.
		notMsg []string
		// sourceRequests is how many requests the http source must get;
		// -1: at least one.
		sourceRequests int64
		// secretURL puts user info and a query string in the URL of the
		// http source; "$REDACTED" in wantMsg stands for its redacted
		// form, and neither secret may appear in the error.
		secretURL bool
	}
	chachaOnly := &tls.Config{
		MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
		},
	}
	redirect := func(p *patchRedirect) []registryOption {
		return []registryOption{withMiddleware(p.middleware)}
	}
	authRegistry := func(*patchRedirect) []registryOption {
		return []registryOption{withMiddleware(basicAuth(user, pass))}
	}

	cases := []testCase{
		{
			name: "source 404", handler: status(http.StatusNotFound),
			wantErr: importer.ErrSourceNotFound, wantReason: "SourceNotFound",
			wantMsg: []string{"404", "$SOURCE"}, sourceRequests: 1,
		},
		{
			name: "source 410", handler: status(http.StatusGone),
			wantErr: importer.ErrSourceNotFound, wantReason: "SourceNotFound",
			wantMsg: []string{"410", "$SOURCE"}, sourceRequests: 1,
		},
		{
			name: "source 401", handler: status(http.StatusUnauthorized),
			wantErr: importer.ErrSourceUnauthorized, wantReason: "SourceUnauthorized",
			wantMsg: []string{"401", "$SOURCE"}, sourceRequests: 1,
		},
		{
			name: "source 403", handler: status(http.StatusForbidden),
			wantErr: importer.ErrSourceUnauthorized, wantReason: "SourceUnauthorized",
			wantMsg: []string{"403", "$SOURCE"}, sourceRequests: 1,
		},
		{
			name: "source 500, retried once", handler: status(http.StatusInternalServerError),
			opts:    func(o *importer.Options, _ *testRegistry) { o.Retries = 1 },
			wantErr: importer.ErrSourceUnavailable, wantReason: "SourceUnavailable",
			wantMsg: []string{"500", "$SOURCE"}, sourceRequests: 2,
		},
		{
			name: "source 500, no retries", handler: status(http.StatusInternalServerError),
			opts:    func(o *importer.Options, _ *testRegistry) { o.Retries = -1 },
			wantErr: importer.ErrSourceUnavailable, wantReason: "SourceUnavailable",
			wantMsg: []string{"500", "$SOURCE"}, sourceRequests: 1,
		},
		{
			name: "source 404 with credentials in the URL", handler: status(http.StatusNotFound), secretURL: true,
			wantErr: importer.ErrSourceNotFound, wantReason: "SourceNotFound",
			wantMsg: []string{"404", "$REDACTED"}, sourceRequests: 1,
		},
		{
			name: "source connection refused with credentials in the URL",
			source: func(t *testing.T) string {
				return strings.Replace(refusedURL(t), "http://", "http://bob:pw-secret@", 1) + "?sig=sig-secret"
			},
			wantErr: importer.ErrSourceUnavailable, wantReason: "SourceUnavailable",
			wantMsg: []string{"connection refused", "/disk.img?REDACTED"}, notMsg: []string{"pw-secret", "sig-secret"},
		},
		{
			name: "source connection refused", source: refusedURL,
			wantErr: importer.ErrSourceUnavailable, wantReason: "SourceUnavailable",
			wantMsg: []string{"connection refused", "$SOURCE"},
		},
		{
			name: "source ends early", handler: shortBody(disk),
			wantErr: importer.ErrShortSource, wantReason: "SourceTruncated",
			wantMsg:        []string{"$SOURCE", fmt.Sprintf("of %d bytes", size)},
			sourceRequests: 1, // a truncated source is not downloaded again
		},
		{
			name: "corrupt gzip source", handler: serveBytes(gz, `"gz"`),
			wantErr: importer.ErrCorruptSource, wantReason: "CorruptSource",
			wantMsg: []string{"gzip", "$SOURCE"}, sourceRequests: 1,
		},
		{
			name: "qcow2 with an empty header", handler: serveBytes(qcow2, `"qcow2"`),
			wantErr: importer.ErrCorruptSource, wantReason: "CorruptSource",
			wantMsg: []string{"qcow2", "$SOURCE"}, sourceRequests: 1,
		},
		{
			name: "source file missing",
			source: func(t *testing.T) string {
				return filepath.Join(t.TempDir(), "missing.img")
			},
			wantErr: importer.ErrSourceNotFound, wantReason: "SourceNotFound",
			wantMsg: []string{"$SOURCE", "no such file"},
		},
		{
			name:    "source file URL missing",
			source:  func(t *testing.T) string { return "file://" + filepath.Join(t.TempDir(), "missing.img") },
			wantErr: importer.ErrSourceNotFound, wantReason: "SourceNotFound",
			wantMsg: []string{"missing.img", "no such file"},
		},
		{
			name: "source is a directory", source: func(t *testing.T) string { return t.TempDir() },
			wantErr: importer.ErrInvalidOptions, wantReason: "InvalidOptions",
			wantMsg: []string{"$SOURCE", "directory"},
		},
		{
			name: "source scheme unsupported", source: func(*testing.T) string { return "ftp://127.0.0.1/disk.img" },
			wantErr: importer.ErrInvalidOptions, wantReason: "InvalidOptions",
			wantMsg: []string{`"ftp"`},
		},
		{
			name: "registry refuses the password", handler: serveDisk(size), regOpts: authRegistry,
			opts:    func(o *importer.Options, _ *testRegistry) { o.Username, o.Password = user, "wrong-password" },
			wantErr: importer.ErrRegistryUnauthorized, wantReason: "Unauthorized",
			wantMsg: []string{"401", "Username"}, notMsg: []string{"wrong-password"},
		},
		{
			name: "registry refuses anonymous access", handler: serveDisk(size), regOpts: authRegistry,
			wantErr: importer.ErrRegistryUnauthorized, wantReason: "Unauthorized",
			wantMsg: []string{"401"},
		},
		{
			name: "registry certificate not trusted", handler: serveDisk(size),
			opts:    func(o *importer.Options, _ *testRegistry) { o.RegistryTLS = tlsconfig.Options{} },
			wantErr: importer.ErrRegistryTLS, wantReason: "RegistryTLS",
			wantMsg: []string{"RegistryTLS.CAFile", "not trusted"},
		},
		{
			name: "registry offers only ChaCha20", handler: serveDisk(size),
			regOpts: func(*patchRedirect) []registryOption { return []registryOption{withServerTLS(chachaOnly)} },
			wantErr: importer.ErrRegistryTLS, wantReason: "RegistryTLS",
			wantMsg: []string{"AES-GCM"},
		},
		{
			name: "destination not a reference", handler: serveDisk(size),
			opts:    func(o *importer.Options, _ *testRegistry) { o.Destination = "not a ref!!" },
			wantErr: importer.ErrInvalidDestination, wantReason: "InvalidDestination",
			wantMsg: []string{"not a ref!!", "REGISTRY/REPO:TAG"},
		},
		{
			name: "destination is a digest", handler: serveDisk(size),
			opts:    func(o *importer.Options, _ *testRegistry) { o.Destination = "host/repo@sha256:abc" },
			wantErr: importer.ErrInvalidDestination, wantReason: "InvalidDestination",
			wantMsg: []string{"host/repo@sha256:abc", "digest"},
		},
		{
			name: "destination is a digest of the test registry", handler: serveDisk(size),
			opts: func(o *importer.Options, reg *testRegistry) {
				o.Destination = reg.host + "/" + testRepo + "@sha256:" + strings.Repeat("a", 64)
			},
			wantErr: importer.ErrInvalidDestination, wantReason: "InvalidDestination",
			wantMsg: []string{"digest"},
		},
		{
			name: "destination empty", handler: serveDisk(size),
			opts:    func(o *importer.Options, _ *testRegistry) { o.Destination = "" },
			wantErr: importer.ErrInvalidOptions, wantReason: "InvalidOptions",
			wantMsg: []string{"Destination"},
		},
		{
			name: "password without username", handler: serveDisk(size),
			opts:    func(o *importer.Options, _ *testRegistry) { o.Password = "lonely-password" },
			wantErr: importer.ErrInvalidOptions, wantReason: "InvalidOptions",
			wantMsg: []string{"Username"}, notMsg: []string{"lonely-password"},
		},
		{
			name: "bad platform", handler: serveDisk(size),
			opts:    func(o *importer.Options, _ *testRegistry) { o.Platform = "arm64" },
			wantErr: importer.ErrInvalidOptions, wantReason: "InvalidOptions",
			wantMsg: []string{`"arm64"`},
		},
		{
			name: "disk name with a slash", handler: serveDisk(size),
			opts:    func(o *importer.Options, _ *testRegistry) { o.DiskName = "../disk.img" },
			wantErr: importer.ErrInvalidOptions, wantReason: "InvalidOptions",
			wantMsg: []string{"../disk.img"},
		},
		{
			name:    "source ETag changes on the re-read after a 307",
			handler: changingSource(disk, `"v1"`, disk, `"v2"`), regOpts: redirect,
			wantErr: importer.ErrSourceChanged, wantReason: "SourceChanged",
			wantMsg: []string{"$SOURCE", `"v2"`}, sourceRequests: 2,
		},
		{
			name:    "source bytes change on the re-read after a 307",
			handler: changingSource(disk, `"same"`, changed, `"same"`), regOpts: redirect,
			wantErr: importer.ErrSourceChanged, wantReason: "SourceChanged",
			wantMsg: []string{"$SOURCE", "different bytes"}, sourceRequests: 2,
		},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var redirect patchRedirect
			var regOpts []registryOption
			if tc.regOpts != nil {
				regOpts = tc.regOpts(&redirect)
			}
			reg := newTestRegistry(t, regOpts...)

			var src *testSource
			var source, redacted string
			if tc.handler != nil {
				src = newTestSource(t, tc.handler)
				source = src.url
				if tc.secretURL {
					host := strings.TrimPrefix(src.srv.URL, "http://")
					source = "http://bob:pw-secret@" + host + "/disk.img?sig=sig-secret"
					redacted = "http://" + host + "/disk.img?REDACTED"
					tc.notMsg = append(tc.notMsg, "pw-secret", "sig-secret")
				}
			} else {
				source = tc.source(t)
			}
			o := baseOptions(reg, source)
			if tc.opts != nil {
				tc.opts(&o, reg)
			}

			res, err := importer.Run(testContext(t), o)
			if err == nil {
				t.Fatalf("Run succeeded with %+v, want an error", *res)
			}
			if res != nil {
				t.Errorf("Run returned a result %+v with error %v", *res, err)
			}
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("Run error %q is not %q", err, tc.wantErr)
			}
			if got := reason.Of(err); got != tc.wantReason {
				t.Errorf("Reason(%q) = %q, want %q", err, got, tc.wantReason)
			}
			msg := err.Error()
			for _, want := range tc.wantMsg {
				want = strings.ReplaceAll(want, "$SOURCE", source)
				want = strings.ReplaceAll(want, "$REDACTED", redacted)
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not mention %q", msg, want)
				}
			}
			for _, not := range tc.notMsg {
				if strings.Contains(msg, not) {
					t.Errorf("error %q mentions %q", msg, not)
				}
			}

			if src != nil {
				switch got := src.requests.Load(); {
				case tc.sourceRequests < 0 && got == 0:
					t.Errorf("source got no request, want at least one")
				case tc.sourceRequests >= 0 && got != tc.sourceRequests:
					t.Errorf("source got %d requests, want %d", got, tc.sourceRequests)
				}
			}
			if tc.regOpts != nil && tc.wantErr == importer.ErrSourceChanged && redirect.redirected.Load() != 1 {
				t.Errorf("registry redirected %d PATCHes, want 1", redirect.redirected.Load())
			}
			reg.assertNoTag(t)
			reg.assertNoPlainHTTP(t)
		})
	}
}

// stallingSource sends the response headers (and, with body, half of data)
// of data, signals ready and then holds the request open until the client
// goes away.
func stallingSource(data []byte, body bool, ready chan<- struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if body {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Write(data[:len(data)/2])
			w.(http.Flusher).Flush()
		}
		select {
		case ready <- struct{}{}:
		default:
		}
		select {
		case <-r.Context().Done():
		case <-time.After(testTimeout):
		}
	}
}

func TestRunCancelled(t *testing.T) {
	t.Parallel()
	data := diskBytes(t, 1<<20)
	for _, tc := range []struct {
		name string
		// body: the source stalls after half of the body; otherwise
		// before its response headers.
		body bool
		// deadline: the context ends by its deadline rather than by
		// cancel.
		deadline   bool
		wantErr    error
		wantReason reason.Reason
	}{
		{
			name: "cancelled while the source sends the body", body: true,
			wantErr: context.Canceled, wantReason: "Cancelled",
		},
		{
			name: "deadline while the source sends the body", body: true, deadline: true,
			wantErr: context.DeadlineExceeded, wantReason: "Timeout",
		},
		{
			name:    "cancelled while waiting for the source's headers",
			wantErr: context.Canceled, wantReason: "Cancelled",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := newTestRegistry(t)
			ready := make(chan struct{}, 1)
			src := newTestSource(t, stallingSource(data, tc.body, ready))

			var ctx context.Context
			var cancel context.CancelFunc
			if tc.deadline {
				ctx, cancel = context.WithTimeout(t.Context(), 1500*time.Millisecond)
			} else {
				ctx, cancel = context.WithCancel(t.Context())
			}
			defer cancel()
			stalled := make(chan struct{})
			go func() {
				select {
				case <-ready:
					close(stalled)
					if !tc.deadline {
						time.Sleep(50 * time.Millisecond)
						cancel()
					}
				case <-ctx.Done():
				}
			}()

			res, err := importer.Run(ctx, baseOptions(reg, src.url))
			if err == nil {
				t.Fatalf("Run succeeded with %+v, want an error", *res)
			}
			select {
			case <-stalled:
			default:
				t.Skipf("the context ended before the source stalled (slow machine?): %v", err)
			}
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("Run error %q is not %q", err, tc.wantErr)
			}
			reg.assertNoTag(t)
			reg.assertNoPlainHTTP(t)
			if got := reason.Of(err); got != tc.wantReason {
				t.Errorf("Reason(%q) = %q, want %q", err, got, tc.wantReason)
			}
		})
	}
}
