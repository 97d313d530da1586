package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"

	"github.com/diskimporter/diskimporter/importer/prefetch"
	"github.com/diskimporter/diskimporter/importer/reason"
	"github.com/diskimporter/diskimporter/importer/warm"
)

// runtimeArch is this node's architecture, warm's default platform.
const runtimeArch = runtime.GOARCH

const serveUsage = `Usage:
  diskimporter serve --listen ADDR --allow-registry HOST[:PORT] [flags]

Serves, on ADDR, the prefetch endpoint a VM controller calls to warm this
node before it starts a VM here (what "diskimporter warm" does, on request):

  POST /v1/prefetch {"image": "REGISTRY/REPO:TAG", "trace_id": "…", "async": false}
    → {"image", "prefetched", "status": "success"|"failure"|"accepted", "message", "trace_id"}

200 once the image is in containerd (and unpacked), 202 for "async": true,
400 for a bad request, 403 for a registry not given with --allow-registry,
404 for an unknown image, 502 for a registry failure, 500 for a containerd
failure, 503 when too many are waiting. GET /metrics has Prometheus
metrics, GET /healthz answers 200. Registry credentials come from the
Docker config (DOCKER_CONFIG) or --username/--password, for the allowed
registries only; nothing is logged of them. SIGTERM stops it.

Example:
  diskimporter serve --listen :8080 --allow-registry registry.example:5000 --ca-file /etc/registry-ca.pem

Flags:
`

// serveCLI holds the serve flags that are not warm.Options fields.
type serveCLI struct {
	commonCLI
	registryCLI
	listen      string
	allow       []string
	concurrency int
	warmTimeout time.Duration
}

func serveFlags(o *warm.Options, c *serveCLI) *pflag.FlagSet {
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringVar(&c.listen, "listen", "", "address to serve on, such as :8080")
	fs.StringArrayVar(&c.allow, "allow-registry", nil, "registry HOST[:PORT] images may come from; repeatable; required")
	fs.Var(newSize(&o.MinBlobSize, 0, 1<<50), "min-blob-size", "do not prefetch layers smaller than this (0: no bound)")
	fs.Var(newSize(&o.MaxBlobSize, 0, 1<<50), "max-blob-size", "do not prefetch layers larger than this (0: no bound)")
	fs.IntVar(&c.concurrency, "concurrency", 2, "prefetches running at once; more wait")
	fs.DurationVar(&c.warmTimeout, "prefetch-timeout", 30*time.Minute, "longest one prefetch may take")
	addNodeFlags(fs, o)
	addRegistryFlags(fs, &o.RegistryOptions, &c.registryCLI, "")
	addReadFlags(fs, &o.ReadOptions, warm.DefaultConnections, formatSize(warm.DefaultChunkSize))
	addLogFlags(fs, &c.commonCLI)
	return fs
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o warm.Options
	var c serveCLI
	s := newSession("serve", stdout, stderr)
	fs := serveFlags(&o, &c)
	check := func(map[string]bool) error { s.secret(o.Password); return c.check(&o) }
	if code, ok := s.prepare(fs, serveUsage, args, nil, check, &c.commonCLI, false); !ok {
		return code
	}
	o.Logger = s.logger
	stop, err := s.servePprof()
	if err != nil {
		return s.fail(err)
	}
	defer stop()
	if err := c.serve(ctx, o, s); err != nil {
		return s.fail(err)
	}
	return 0
}

// check refuses serve flags it cannot use.
func (c *serveCLI) check(o *warm.Options) error {
	switch {
	case c.listen == "":
		return errors.New("missing --listen ADDR, such as :8080")
	case len(c.allow) == 0:
		return errors.New("missing --allow-registry HOST[:PORT]: name each registry images may come from")
	case c.concurrency < 1:
		return fmt.Errorf("--concurrency %d: want 1 or more", c.concurrency)
	case o.MaxBlobSize > 0 && o.MinBlobSize > o.MaxBlobSize:
		return fmt.Errorf("--min-blob-size %d is over --max-blob-size %d", o.MinBlobSize, o.MaxBlobSize)
	}
	return checkNodeFlags(o, &c.registryCLI)
}

// serve serves the endpoint until ctx ends (SIGTERM), then lets the
// requests in flight end for a few seconds.
func (c *serveCLI) serve(ctx context.Context, o warm.Options, s *session) error {
	metrics := prometheus.NewRegistry()
	h, err := prefetch.NewHandler(ctx, prefetch.Config{Allow: c.allow, Concurrency: c.concurrency, Timeout: c.warmTimeout,
		Logger: s.logger, Metrics: prefetch.NewMetrics(metrics), Warm: warmFunc(o)})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle(prefetch.Path, h)
	mux.Handle("/metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	l, err := net.Listen("tcp", c.listen)
	if err != nil {
		return fmt.Errorf("%w: --listen %s: %w", reason.ErrInvalidOptions, c.listen, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	s.logger.Info("serving", "address", l.Addr().String(), "allow", c.allow)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.logger.Info("stopping", "cause", context.Cause(ctx))
	return srv.Shutdown(shutdown)
}

// warmFunc warms with o the images the endpoint asks for.
func warmFunc(o warm.Options) prefetch.WarmFunc {
	return func(ctx context.Context, ref name.Reference) (prefetch.Outcome, error) {
		res, err := warm.Warm(ctx, ref.String(), o)
		var out prefetch.Outcome
		if res != nil {
			out.Bytes = res.BytesFetched
			for _, b := range res.Blobs {
				if b.Action == warm.Fetched || b.Action == warm.Resumed {
					out.Fetched++
				} else {
					out.Skipped++
				}
			}
		}
		return out, err
	}
}
