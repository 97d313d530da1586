// Package podstatus reports the progress of an import as annotations on the
// importer's own Pod, so that the controller that started the Job (or a
// person running kubectl) can follow it without reading logs.
//
// Reporting is best effort: a failed or slow patch never fails, and never
// holds up for long, the import. Outside a cluster nothing is attempted.
//
// The Pod needs POD_NAME and POD_NAMESPACE from the downward API and a
// service account allowed to patch pods in its namespace; see manifests/.
//
// The package talks to the API server through a bare REST client
// (k8s.io/client-go/rest) that knows no API type but metav1.Status: the
// typed clientset (k8s.io/client-go/kubernetes) would cost the importer
// about 10 MiB of memory and 20 MB of binary for one PATCH request.
package podstatus

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"

	"github.com/diskimporter/diskimporter/importer"
)

// Annotations written on the Pod by Report. Every value is a string.
const (
	// AnnotationPhase is the importer.Phase: downloading, spooling,
	// pushing, done or failed.
	AnnotationPhase = "diskimporter.io/phase"
	// AnnotationBytes is how many bytes the phase has moved, in decimal.
	AnnotationBytes = "diskimporter.io/bytes"
	// AnnotationTotal is how many bytes the phase will move; "0" when
	// unknown.
	AnnotationTotal = "diskimporter.io/total"
	// AnnotationPercent is bytes as a percentage of total with one decimal,
	// such as "42.5"; "0.0" when the total is unknown.
	AnnotationPercent = "diskimporter.io/percent"
	// AnnotationMBPerSecond is the phase's average rate in MB/s (10^6
	// bytes) with one decimal.
	AnnotationMBPerSecond = "diskimporter.io/mb-per-second"
	// AnnotationUpdated is when the annotations were written, RFC 3339 in
	// UTC.
	AnnotationUpdated = "diskimporter.io/updated"
)

// Environment variables read by FromEnv, set from the downward API
// (fieldRef metadata.name and metadata.namespace).
const (
	EnvPodName      = "POD_NAME"
	EnvPodNamespace = "POD_NAMESPACE"
)

const (
	// DefaultInterval is the default minimum time between two patches.
	DefaultInterval = 5 * time.Second
	// DefaultTimeout is the default time limit of one patch request.
	DefaultTimeout = 5 * time.Second
)

// Reporter patches progress annotations onto one Pod. A nil *Reporter is
// valid and reports nothing. Its methods are safe for concurrent use.
type Reporter struct {
	client    *rest.RESTClient // for the core API group, /api/v1
	namespace string
	pod       string

	interval time.Duration
	timeout  time.Duration
	now      func() time.Time
	logger   *slog.Logger
	base     context.Context // parent of every patch; never cancelled

	mu         sync.Mutex // held for the whole of a Report, patch included
	lastSent   time.Time  // last patch attempt; zero before the first
	final      bool       // a done or failed phase was sent
	lastErrLog time.Time  // last logged patch error
	suppressed int        // patch errors not logged since lastErrLog
}

// Option configures a Reporter.
type Option func(*Reporter)

// WithInterval sets the minimum time between two patches (DefaultInterval
// when d <= 0). Reports of the final phases, done and failed, are always
// sent.
func WithInterval(d time.Duration) Option {
	return func(r *Reporter) {
		if d > 0 {
			r.interval = d
		}
	}
}

// WithTimeout sets the time limit of one patch request (DefaultTimeout
// when d <= 0). It bounds how long Report can block its caller.
func WithTimeout(d time.Duration) Option {
	return func(r *Reporter) {
		if d > 0 {
			r.timeout = d
		}
	}
}

// WithClock replaces time.Now, for tests. It drives the rate limit, the
// error-log limit and the updated annotation.
func WithClock(now func() time.Time) Option {
	return func(r *Reporter) {
		if now != nil {
			r.now = now
		}
	}
}

// WithLogger sets the logger that receives patch errors (slog.Default()
// when nil or not given).
func WithLogger(l *slog.Logger) Option {
	return func(r *Reporter) {
		if l != nil {
			r.logger = l
		}
	}
}

// UserAgent is the User-Agent of the patch requests when the rest.Config
// given to New sets none.
const UserAgent = "diskimporter"

// New returns a Reporter patching pod in namespace through the API server
// that cfg reaches with its credentials. cfg is not modified; New uses a
// copy talking JSON to the core API (/api/v1) and, where cfg leaves them
// unset, sets the User-Agent to UserAgent, the HTTP client timeout to the
// patch timeout (a backstop under the per-patch deadline) and the handler
// of the API server's warnings to one logging them to the Reporter's
// logger. The error is about cfg (such as no host or unreadable TLS
// files); nothing is sent before the first Report.
func New(cfg *rest.Config, namespace, pod string, opts ...Option) (*Reporter, error) {
	if cfg == nil {
		return nil, fmt.Errorf("pod status: no REST configuration for pod %s/%s", namespace, pod)
	}
	r := &Reporter{
		namespace: namespace,
		pod:       pod,
		interval:  DefaultInterval,
		timeout:   DefaultTimeout,
		now:       time.Now,
		logger:    slog.Default(),
		base:      context.Background(),
	}
	for _, o := range opts {
		o(r)
	}
	client, err := newRESTClient(cfg, r.timeout, r.logger)
	if err != nil {
		return nil, fmt.Errorf("pod status: client for pod %s/%s: %w", namespace, pod, err)
	}
	r.client = client
	return r, nil
}

// newRESTClient returns a REST client for the core API group from a copy of
// cfg. Its scheme holds metav1.Status only, enough to turn the API server's
// error responses into errors such as `pods "x" not found`; the body of a
// successful patch (the Pod) is never decoded.
func newRESTClient(cfg *rest.Config, timeout time.Duration, logger *slog.Logger) (*rest.RESTClient, error) {
	scheme := runtime.NewScheme()
	scheme.AddUnversionedTypes(metav1.Unversioned, &metav1.Status{})

	c := rest.CopyConfig(cfg)
	c.APIPath = "/api"
	c.GroupVersion = &schema.GroupVersion{Version: "v1"}
	c.ContentType = runtime.ContentTypeJSON
	c.AcceptContentTypes = runtime.ContentTypeJSON
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = UserAgent
	}
	if c.Timeout == 0 {
		c.Timeout = timeout
	}
	if c.WarningHandler == nil && c.WarningHandlerWithContext == nil {
		// API server warnings go to the import's log, not to klog's
		// stderr lines in another format.
		c.WarningHandler = slogWarnings{logger}
	}
	return rest.RESTClientFor(c)
}

// FromEnv returns a Reporter for the Pod named by POD_NAME in POD_NAMESPACE,
// talking to the API server with the in-cluster configuration (the Pod's
// service account). When neither variable is set it returns (nil, nil):
// outside a cluster nothing is attempted, and the nil Reporter's Report
// does nothing. Only one of them set, or no in-cluster configuration, is
// an error; the caller may log it and import without reporting.
//
// The values of ctx (not its cancellation, so that the final phase is still
// reported after a cancelled import) are passed to every patch.
func FromEnv(ctx context.Context, opts ...Option) (*Reporter, error) {
	pod, namespace := os.Getenv(EnvPodName), os.Getenv(EnvPodNamespace)
	switch {
	case pod == "" && namespace == "":
		return nil, nil
	case pod == "" || namespace == "":
		return nil, fmt.Errorf("pod status: %s and %s must both be set (downward API metadata.name and metadata.namespace), got %s=%q %s=%q",
			EnvPodName, EnvPodNamespace, EnvPodName, pod, EnvPodNamespace, namespace)
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("pod status: in-cluster configuration for pod %s/%s: %w", namespace, pod, err)
	}
	r, err := New(cfg, namespace, pod, opts...)
	if err != nil {
		return nil, err
	}
	r.base = context.WithoutCancel(ctx)
	return r, nil
}

// Report writes p as annotations on the Pod. It does nothing on a nil
// Reporter. It patches at most once per interval, dropping the reports in
// between, except for the final phases (done, failed), which are always
// sent; once one is sent, later non-final reports are dropped. It blocks at
// most about the patch timeout, and a failed patch is only logged (at most
// once per interval) and otherwise ignored.
func (r *Reporter) Report(p importer.Progress) {
	if r == nil || r.client == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()

	now := r.now()
	isFinal := p.Phase == importer.PhaseDone || p.Phase == importer.PhaseFailed
	if !isFinal && (r.final || (!r.lastSent.IsZero() && now.Sub(r.lastSent) < r.interval)) {
		return
	}
	// Rate-limit attempts, not successes: a failing API server is not
	// asked more often.
	r.lastSent = now
	if isFinal {
		r.final = true
	}

	body, err := patchBody(p, now)
	if err == nil {
		ctx, cancel := context.WithTimeout(r.base, r.timeout)
		err = r.client.Patch(types.MergePatchType).
			Namespace(r.namespace).Resource("pods").Name(r.pod).
			Body(body).Do(ctx).Error()
		cancel()
	}
	if err != nil {
		r.logError(now, p, err)
	}
}

// logError logs a patch error, at most once per interval.
func (r *Reporter) logError(now time.Time, p importer.Progress, err error) {
	if !r.lastErrLog.IsZero() && now.Sub(r.lastErrLog) < r.interval {
		r.suppressed++
		return
	}
	attrs := []any{"namespace", r.namespace, "pod", r.pod, "phase", p.Phase, "error", err}
	if r.suppressed > 0 {
		attrs = append(attrs, "suppressed_errors", r.suppressed)
	}
	r.logger.Warn("could not annotate the pod with the import progress; the import goes on", attrs...)
	r.lastErrLog, r.suppressed = now, 0
}

// patchBody returns the JSON merge patch setting the annotations of p.
func patchBody(p importer.Progress, now time.Time) ([]byte, error) {
	type meta struct {
		Annotations map[string]string `json:"annotations"`
	}
	return json.Marshal(struct {
		Metadata meta `json:"metadata"`
	}{meta{annotations(p, now)}})
}

// annotations returns the annotations Report writes for p at time now.
func annotations(p importer.Progress, now time.Time) map[string]string {
	return map[string]string{
		AnnotationPhase:       string(p.Phase),
		AnnotationBytes:       strconv.FormatInt(p.Bytes, 10),
		AnnotationTotal:       strconv.FormatInt(max(p.Total, 0), 10),
		AnnotationPercent:     strconv.FormatFloat(p.Percent(), 'f', 1, 64),
		AnnotationMBPerSecond: strconv.FormatFloat(p.BytesPerSecond/1e6, 'f', 1, 64),
		AnnotationUpdated:     now.UTC().Format(time.RFC3339),
	}
}

// slogWarnings logs the warnings the API server sends in its responses.
type slogWarnings struct{ logger *slog.Logger }

func (w slogWarnings) HandleWarningHeader(code int, agent, text string) {
	if text != "" {
		w.logger.Warn("warning from the Kubernetes API server", "agent", agent, "warning", text)
	}
}
