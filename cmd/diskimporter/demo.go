package main

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/pflag"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/testdisk"
	"github.com/diskimporter/diskimporter/layer"
	"github.com/diskimporter/diskimporter/tlsconfig"
)

const demoUsage = `Usage: diskimporter demo [--size BYTES] [flags]

Runs the real import path with nothing outside this process: starts an
in-memory OCI registry over TLS (with basic auth) and an HTTP server serving
a generated disk image on loopback, imports the disk, pulls the image back
and checks it byte for byte. Progress is shown as by "diskimporter import".

Examples:
  # The default 64 MiB disk.
  diskimporter demo

  # A 1 GiB disk (the in-memory registry holds it in RAM), with the live
  # progress line on a terminal.
  diskimporter demo --size 1GiB

  # The same with Prometheus metrics; scrape them while it runs.
  diskimporter demo --size 1GiB --metrics-address 127.0.0.1:9090 &
  curl -s http://127.0.0.1:9090/metrics | grep ^diskimporter_

Flags:
`

const demoUser, demoPassword = "demo", "demo-password"

// demoOptions are the demo's flags.
type demoOptions struct {
	size           int64
	quiet          bool
	metricsAddress string
}

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("demo", pflag.ContinueOnError)
	d := demoOptions{size: 64 << 20}
	fs.Var(newSize(&d.size, 1<<20, 64<<30), "size", "size of the generated disk, such as 1GiB or 1073741824 (the in-memory registry holds it in RAM)")
	addQuietFlag(fs, &d.quiet)
	addMetricsAddressFlag(fs, &d.metricsAddress)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, demoUsage+fs.FlagUsages()) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "diskimporter demo: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if err := demo(ctx, d, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "diskimporter demo: FAILED: %v\n", err)
		return 1
	}
	return 0
}

func demo(ctx context.Context, d demoOptions, stdout, stderr io.Writer) error {
	size := d.size
	// The same progress as an import: the live line on a terminal, log
	// lines otherwise, the metrics when asked for.
	con := newConsole(stderr, chooseProgressMode(d.quiet, canDrawLine(stderr), os.Getenv("TERM")))
	defer con.finish()
	var metrics *importMetrics
	var observe, reportMetrics func(importer.Progress)
	var onRetry func(importer.Retry)
	if d.metricsAddress != "" {
		metrics = newImportMetrics(time.Now)
		reportMetrics, onRetry = metrics.report, metrics.retried
	}
	logger, err := con.newLogger("text")
	if err != nil {
		return err
	}
	if metrics != nil {
		srv, err := serveMetrics(d.metricsAddress, metrics, logger)
		if err != nil {
			return err
		}
		defer srv.stop()
	}
	observe = composeProgress(con.report, reportMetrics)
	disk := testdisk.New(size)

	reg := httptest.NewUnstartedServer(basicAuth(registry.New(registry.Logger(log.New(io.Discard, "", 0)))))
	reg.StartTLS()
	defer reg.Close()
	dir, err := os.MkdirTemp("", "diskimporter-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	caFile := filepath.Join(dir, "registry-ca.pem")
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: reg.Certificate().Raw})
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		return err
	}

	src := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "disk.img", time.Unix(0, 0), disk.Reader())
	}))
	defer src.Close()

	host := strings.TrimPrefix(reg.URL, "https://")
	dest := host + "/demo/disk:v1"
	fmt.Fprintf(stdout, "registry:  %s (in-memory, TLS, basic auth)\nsource:    %s/disk.img (%d bytes, generated)\n\n", reg.URL, src.URL, size)

	res, err := importer.Run(ctx, importer.Options{
		SourceOptions: importer.SourceOptions{
			Source:      src.URL + "/disk.img",
			ReadOptions: importer.ReadOptions{OnRetry: onRetry},
		},
		Destination: dest,
		RegistryOptions: importer.RegistryOptions{
			Username:    demoUser,
			Password:    demoPassword,
			RegistryTLS: tlsOptions(caFile),
		},
		Logger:           logger,
		ProgressInterval: con.progressInterval(0),
		OnProgress:       observe,
	})
	con.finish()
	if metrics != nil {
		metrics.finish(err)
	}
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	line, _ := json.MarshalIndent(res, "", "  ")
	fmt.Fprintf(stdout, "result:\n%s\n\n", line)

	checks, err := verifyPulled(ctx, res, caFile, disk)
	for _, c := range checks {
		fmt.Fprintf(stdout, "ok  %s\n", c)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, "\ndemo passed: the image pulled back holds the disk, byte for byte")
	return nil
}

// verifyPulled pulls the image the demo wrote and checks it against disk,
// returning the checks that passed.
func verifyPulled(ctx context.Context, res *importer.Result, caFile string, disk *testdisk.Disk) ([]string, error) {
	var passed []string
	ref, err := name.ParseReference(res.Reference)
	if err != nil {
		return nil, err
	}
	rt, err := demoTransport(caFile)
	if err != nil {
		return nil, err
	}
	img, err := remote.Image(ref, remote.WithContext(ctx), remote.WithTransport(rt),
		remote.WithAuth(&authn.Basic{Username: demoUser, Password: demoPassword}))
	if err != nil {
		return nil, fmt.Errorf("pulling %s: %w", ref, err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		return nil, fmt.Errorf("want one layer, got %d (%v)", len(layers), err)
	}
	l := layers[0]
	mt, _ := l.MediaType()
	d, _ := l.Digest()
	diffID, _ := l.DiffID()
	if d != diffID || d.String() != res.LayerDigest {
		return nil, fmt.Errorf("layer digest %s, diff ID %s, result says %s", d, diffID, res.LayerDigest)
	}
	passed = append(passed, fmt.Sprintf("one layer, %s, digest == diff ID", mt))

	rc, err := l.Uncompressed()
	if err != nil {
		return passed, err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err != nil {
			return passed, fmt.Errorf("no disk file in the layer: %w", err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		if h.Name != res.DiskPath || h.Uid != layer.OwnerID || h.Size != disk.Size() {
			return passed, fmt.Errorf("disk entry %s uid %d size %d", h.Name, h.Uid, h.Size)
		}
		passed = append(passed, fmt.Sprintf("%s, uid %d, mode %o, %d bytes", h.Name, h.Uid, h.Mode, h.Size))
		break
	}
	pulled, want := sha256.New(), sha256.New()
	if _, err := io.Copy(pulled, tr); err != nil {
		return passed, err
	}
	if _, err := io.Copy(want, disk.Reader()); err != nil {
		return passed, err
	}
	got := fmt.Sprintf("sha256:%x", pulled.Sum(nil))
	if got != fmt.Sprintf("sha256:%x", want.Sum(nil)) {
		return passed, fmt.Errorf("pulled disk %s, source sha256:%x", got, want.Sum(nil))
	}
	passed = append(passed, "disk content sha256 == source sha256 == "+got)

	m, err := img.Manifest()
	if err != nil {
		return passed, err
	}
	if m.Annotations[importer.AnnotationSource] != res.Source {
		return passed, fmt.Errorf("manifest annotations %v", m.Annotations)
	}
	passed = append(passed, fmt.Sprintf("manifest annotations: %d, source recorded", len(m.Annotations)))
	passed = append(passed, fmt.Sprintf("registry TLS: %s, %s", res.TLSVersion, res.TLSCipherSuite))
	return passed, nil
}

// basicAuth guards h with the demo credentials, answering 401 with a Basic
// challenge as a real registry does.
func basicAuth(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != demoUser || p != demoPassword {
			w.Header().Set("WWW-Authenticate", `Basic realm="diskimporter-demo"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func tlsOptions(caFile string) tlsconfig.Options { return tlsconfig.Options{CAFile: caFile} }

// demoTransport is a client transport that trusts the demo registry.
func demoTransport(caFile string) (http.RoundTripper, error) {
	tc, err := tlsconfig.New(tlsOptions(caFile))
	if err != nil {
		return nil, err
	}
	return &http.Transport{TLSClientConfig: tc}, nil
}
