// Package prefetch is the HTTP endpoint through which a VM controller asks
// a node to warm an image before it starts a VM there, in the shape of
// Kraken's agent prefetch handler:
//
//	POST /v1/prefetch {"image": "REGISTRY/REPO:TAG", "trace_id": "…", "async": false}
//
// answers {"image", "prefetched", "status": "success"|"failure"|"accepted",
// "message", "trace_id"}. Only registries on an allow list are fetched
// from; at most a bounded number of warms run at once; every failure is a
// JSON body with a status code that says whose fault it is.
package prefetch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/diskimporter/diskimporter/importer/reason"
	"github.com/diskimporter/diskimporter/importer/redact"
	"github.com/google/go-containerregistry/pkg/name"
)

// Path is where the endpoint is served.
const Path = "/v1/prefetch"

// Statuses of a Response.
const (
	StatusSuccess  = "success"
	StatusFailure  = "failure"
	StatusAccepted = "accepted"
)

// maxBody bounds a request body: a request is an image name and an id.
const maxBody = 16 << 10

// Request is the body of a prefetch request.
type Request struct {
	// Image is [docker://]REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:….
	Image string `json:"image"`
	// TraceID is echoed in the response and the logs.
	TraceID string `json:"trace_id"`
	// Async answers 202 at once and warms in the background.
	Async bool `json:"async"`
}

// Response is the body of every answer.
type Response struct {
	Image      string `json:"image"`
	Prefetched bool   `json:"prefetched"`
	Status     string `json:"status"`
	Message    string `json:"message"`
	TraceID    string `json:"trace_id"`
}

// Outcome is what one warm did, for the metrics and the message.
type Outcome struct {
	// Fetched and Skipped count blobs written into the node's store, and
	// blobs left alone (present already, or outside the size bounds).
	Fetched, Skipped int
	// Bytes is how many blob bytes were fetched.
	Bytes int64
}

// WarmFunc warms the node with the image ref.
type WarmFunc func(ctx context.Context, ref name.Reference) (Outcome, error)

// Config configures a Handler.
type Config struct {
	// Allow lists the registries (HOST or HOST:PORT, as in an image
	// reference) images may come from; required.
	Allow []string
	// Warm does the work.
	Warm WarmFunc
	// Concurrency bounds the warms running at once; zero: 2. A request
	// beyond it waits for a slot (a synchronous one as long as its client
	// does; an asynchronous one is refused with 503 when Concurrency more
	// are already waiting).
	Concurrency int
	// Timeout bounds one warm; zero: 30 minutes.
	Timeout time.Duration
	// Logger receives one line per request; nil: slog.Default().
	Logger *slog.Logger
	// Metrics, if set, counts requests, blobs, bytes and durations.
	Metrics *Metrics
}

// Handler serves Path.
type Handler struct {
	cfg   Config
	allow map[string]bool
	slots chan struct{} // one per running warm
	queue chan struct{} // one per asynchronous warm waiting or running
	base  context.Context

	mu   sync.Mutex
	last map[string]chan struct{} // image → the turn of its latest request
}

// NewHandler returns the handler of cfg. Asynchronous warms run under
// base: cancelling it stops them.
func NewHandler(base context.Context, cfg Config) (*Handler, error) {
	if len(cfg.Allow) == 0 {
		return nil, fmt.Errorf("%w: no registry is allowed: give --allow-registry HOST[:PORT] for each registry images may come from", reason.ErrInvalidOptions)
	}
	if cfg.Warm == nil {
		return nil, fmt.Errorf("%w: no warm function", reason.ErrInvalidOptions)
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 2
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	h := &Handler{cfg: cfg, allow: map[string]bool{}, base: base, last: map[string]chan struct{}{},
		slots: make(chan struct{}, cfg.Concurrency), queue: make(chan struct{}, 2*cfg.Concurrency)}
	for _, a := range cfg.Allow {
		reg, err := name.NewRegistry(a, name.StrictValidation)
		if err != nil || strings.ContainsAny(a, "/@") {
			return nil, fmt.Errorf("%w: --allow-registry %q is not HOST[:PORT]", reason.ErrInvalidOptions, a)
		}
		h.allow[reg.RegistryStr()] = true
	}
	return h, nil
}

// ServeHTTP answers one prefetch request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	req, ref, code, err := h.parse(w, r)
	resp := Response{Image: req.Image, TraceID: req.TraceID, Status: StatusFailure}
	switch {
	case err != nil:
		resp.Message = err.Error()
	case req.Async:
		code, resp = h.async(ref, h.turn(ref), req, resp)
	default:
		code, resp = h.warm(r.Context(), ref, h.turn(ref), resp)
	}
	h.cfg.Metrics.request(resp.Status, code, time.Since(start))
	h.cfg.Logger.Info("prefetch", "image", resp.Image, "trace_id", resp.TraceID, "status", resp.Status,
		"code", code, "message", resp.Message, "seconds", time.Since(start).Seconds())
	writeJSON(w, code, resp)
}

// parse reads and checks the request: method, size, JSON, reference and
// registry. On an error it returns the status code to answer.
func (h *Handler) parse(w http.ResponseWriter, r *http.Request) (Request, name.Reference, int, error) {
	var req Request
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return req, nil, http.StatusMethodNotAllowed, fmt.Errorf("%s %s: only POST is served", r.Method, Path)
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return req, nil, http.StatusRequestEntityTooLarge, fmt.Errorf("the request body is over %d bytes", maxBody)
		}
		return Request{}, nil, http.StatusBadRequest, fmt.Errorf(`the body is not a prefetch request ({"image": "REGISTRY/REPO:TAG", "trace_id": "…", "async": false}): %v`, err)
	}
	if dec.More() {
		return req, nil, http.StatusBadRequest, errors.New("the body holds more than one JSON object")
	}
	req.Image = strings.TrimPrefix(req.Image, "docker://")
	if req.Image == "" {
		return req, nil, http.StatusBadRequest, errors.New(`no "image": give REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:<64 hex digits>`)
	}
	ref, err := name.ParseReference(req.Image, name.StrictValidation)
	if err != nil {
		return req, nil, http.StatusBadRequest, fmt.Errorf("image %q: %v; give REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:<64 hex digits>", req.Image, err)
	}
	if reg := ref.Context().RegistryStr(); !h.allow[reg] {
		return req, nil, http.StatusForbidden, fmt.Errorf("registry %s is not allowed here (--allow-registry)", reg)
	}
	return req, ref, 0, nil
}

// turn is a request's place among those for the same image: it waits
// for the one before it (it arrived first) and then lets the next go.
// Requests for one image run in the order they arrived, so that a request
// after an asynchronous one finds what that one fetched.
type turn struct {
	before <-chan struct{} // closed when the request before it is done
	done   func()
}

// closed is the turn before the first request for an image.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// turn takes the next turn for ref.
func (h *Handler) turn(ref name.Reference) turn {
	key := ref.String()
	mine := make(chan struct{})
	h.mu.Lock()
	before, ok := h.last[key]
	h.last[key] = mine
	h.mu.Unlock()
	if !ok {
		before = closed
	}
	return turn{before: before, done: func() {
		h.mu.Lock()
		if h.last[key] == mine {
			delete(h.last, key)
		}
		h.mu.Unlock()
		close(mine)
	}}
}

// warm warms ref within the request's context, in its turn, waiting for
// a slot.
func (h *Handler) warm(ctx context.Context, ref name.Reference, t turn, resp Response) (int, Response) {
	defer t.done()
	select {
	case <-t.before:
	case <-ctx.Done():
		resp.Message = "cancelled while waiting for an earlier prefetch of the image"
		return http.StatusServiceUnavailable, resp
	}
	select {
	case h.slots <- struct{}{}:
	case <-ctx.Done():
		resp.Message = "cancelled while waiting for a free slot"
		return http.StatusServiceUnavailable, resp
	}
	defer func() { <-h.slots }()
	ctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
	defer cancel()
	out, err := h.cfg.Warm(ctx, ref)
	h.cfg.Metrics.outcome(out)
	if err != nil {
		resp.Message = redact.Text(err.Error())
		return statusOf(err), resp
	}
	resp.Status, resp.Prefetched = StatusSuccess, true
	resp.Message = fmt.Sprintf("%d blobs fetched (%d bytes), %d present or skipped", out.Fetched, out.Bytes, out.Skipped)
	return http.StatusOK, resp
}

// async starts the warm in the background and answers 202, or 503 when
// too many are waiting already.
func (h *Handler) async(ref name.Reference, t turn, req Request, resp Response) (int, Response) {
	select {
	case h.queue <- struct{}{}:
	default:
		t.done()
		resp.Message = "too many prefetches are waiting: try again later"
		return http.StatusServiceUnavailable, resp
	}
	go func() {
		defer func() { <-h.queue }()
		code, done := h.warm(h.base, ref, t, Response{Image: req.Image, TraceID: req.TraceID, Status: StatusFailure})
		h.cfg.Logger.Info("prefetch finished", "image", done.Image, "trace_id", done.TraceID,
			"status", done.Status, "code", code, "message", done.Message)
	}()
	resp.Status, resp.Message = StatusAccepted, "warming in the background"
	return http.StatusAccepted, resp
}

// statusOf maps a warm's failure to the status code that says whose it is.
func statusOf(err error) int {
	is := func(targets ...error) bool {
		for _, t := range targets {
			if errors.Is(err, t) {
				return true
			}
		}
		return false
	}
	switch {
	case is(context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	case is(context.Canceled):
		return http.StatusServiceUnavailable
	case is(reason.ErrSourceNotFound):
		return http.StatusNotFound
	case is(reason.ErrUnsupportedFormat, reason.ErrInvalidOptions):
		return http.StatusUnprocessableEntity
	case is(reason.ErrSourceUnauthorized, reason.ErrSourceUnavailable, reason.ErrSourceChanged, reason.ErrSourceTruncated,
		reason.ErrCorruptSource, reason.ErrRegistry, reason.ErrRegistryTLS, reason.ErrRegistryUnauthorized):
		return http.StatusBadGateway
	}
	return http.StatusInternalServerError
}

// writeJSON writes v with code.
func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
