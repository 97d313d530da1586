package importer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/diskimporter/diskimporter/importer/reason"
	"github.com/diskimporter/diskimporter/tlsconfig"
)

// hangBound is how long a cancelled or stalled import may take to return.
const hangBound = 5 * time.Second

// hangRegistry is the in-memory registry over TLS on loopback, behind a
// handler that may stall requests: a stalled request signals reached and
// holds until the client goes away or the test ends.
type hangRegistry struct {
	host, caFile string
	reached      chan struct{}
	release      chan struct{}
}

// newHangRegistry serves the in-memory registry through wrap, which is
// given the registry and the hangRegistry (for stall).
func newHangRegistry(t *testing.T, wrap func(next http.Handler, hr *hangRegistry) http.Handler) *hangRegistry {
	t.Helper()
	hr := &hangRegistry{reached: make(chan struct{}, 1), release: make(chan struct{})}
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h, hr)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(hr.release) }) // before srv.Close
	hr.host = srv.Listener.Addr().String()
	hr.caFile = filepath.Join(t.TempDir(), "ca.pem")
	p := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(hr.caFile, p, 0o600); err != nil {
		t.Fatal(err)
	}
	return hr
}

// stall signals reached and holds the request until the client goes away
// or the test ends.
func (hr *hangRegistry) stall(r *http.Request) {
	select {
	case hr.reached <- struct{}{}:
	default:
	}
	select {
	case <-r.Context().Done():
	case <-hr.release:
	}
}

// stallBody sends the headers of a body of 1000 bytes and 10 of its bytes,
// then stalls.
func (hr *hangRegistry) stallBody(w http.ResponseWriter, r *http.Request, contentType string) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", "1000")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, `{"token":"`)
	w.(http.Flusher).Flush()
	hr.stall(r)
}

// hangDisk is the source of every import in these tests.
var hangDisk = bytes.Repeat([]byte("diskimporter hangs "), 4<<10)

func hangOptions(t *testing.T, hr *hangRegistry, source string) Options {
	t.Helper()
	var o Options
	o.Source = source
	o.Destination = hr.host + "/disks/hang:v1"
	o.RegistryTLS = tlsconfig.Options{CAFile: hr.caFile}
	o.Keychain = anonymous{}
	o.Logger = slog.New(slog.DiscardHandler)
	o.ScratchDir = t.TempDir()
	o.StallTimeout = -1 // never: only the context may end a stall
	return o
}

type anonymous struct{}

func (anonymous) Resolve(authn.Resource) (authn.Authenticator, error) { return authn.Anonymous, nil }

// runAsync runs Run on a goroutine of its own and returns its outcome.
func runAsync(ctx context.Context, o Options) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := Run(ctx, o)
		done <- err
	}()
	return done
}

// waitRun waits up to hangBound for Run's outcome.
func waitRun(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(hangBound):
		t.Fatalf("Run did not return within %v", hangBound)
		return nil
	}
}

// bearerChallenge answers /v2/ with a bearer challenge whose realm is
// /token on the same server.
func bearerChallenge(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="https://%s/token",service="hang"`, r.Host))
	http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
}

// TestRegistryHangs: a registry that stalls any request of an import (the
// /v2/ ping, the token request, the upload POST, the manifest PUT's
// answer) or the body of an answer does not hold the import once its
// context ends: Run returns within seconds, cancelled. A stalled body also
// fails by itself after StallTimeout, as a registry error.
func TestRegistryHangs(t *testing.T) {
	t.Parallel()
	sum := sha256.Sum256(hangDisk)
	for _, tc := range []struct {
		name string
		// handle answers the request, or returns false for the registry
		// to answer it.
		handle func(hr *hangRegistry, w http.ResponseWriter, r *http.Request) bool
		// skipExisting looks for an earlier import first.
		skipExisting bool
		// stallTimeout: the import is not cancelled; StallTimeout ends
		// the stall.
		stallTimeout time.Duration
	}{
		{name: "ping", handle: func(hr *hangRegistry, w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != "/v2/" {
				return false
			}
			hr.stall(r)
			return true
		}},
		{name: "token request", handle: func(hr *hangRegistry, w http.ResponseWriter, r *http.Request) bool {
			switch r.URL.Path {
			case "/v2/":
				bearerChallenge(w, r)
			case "/token":
				hr.stall(r)
			default:
				return false
			}
			return true
		}},
		{name: "token body", handle: tokenBody},
		{name: "token body, stall timeout", handle: tokenBody, stallTimeout: 500 * time.Millisecond},
		{name: "upload POST", handle: func(hr *hangRegistry, w http.ResponseWriter, r *http.Request) bool {
			if r.Method != http.MethodPost {
				return false
			}
			hr.stall(r)
			return true
		}},
		{name: "manifest PUT answer", handle: func(hr *hangRegistry, w http.ResponseWriter, r *http.Request) bool {
			if r.Method != http.MethodPut || !strings.Contains(r.URL.Path, "/manifests/") {
				return false
			}
			io.Copy(io.Discard, r.Body)
			hr.stall(r)
			return true
		}},
		{name: "manifest body (skip existing)", handle: manifestBody, skipExisting: true},
		{name: "manifest body (skip existing), stall timeout", handle: manifestBody, skipExisting: true, stallTimeout: 500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			hr := newHangRegistry(t, func(next http.Handler, hr *hangRegistry) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if !tc.handle(hr, w, r) {
						next.ServeHTTP(w, r)
					}
				})
			})
			o := hangOptions(t, hr, writeHangFile(t, hangDisk))
			if tc.skipExisting {
				o.SkipExisting = true
				o.Checksums = []Checksum{{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sum)}}
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if tc.stallTimeout > 0 {
				o.StallTimeout = tc.stallTimeout
			}
			start := time.Now()
			done := runAsync(ctx, o)
			select {
			case <-hr.reached:
			case err := <-done:
				t.Fatalf("Run returned before the stall: %v", err)
			case <-time.After(hangBound):
				t.Fatal("the import never reached the stall")
			}
			if tc.stallTimeout == 0 {
				cancel()
			}
			err := waitRun(t, done)
			took := time.Since(start)
			if tc.stallTimeout > 0 {
				if err == nil || errors.Is(err, context.Canceled) || !errors.Is(err, ErrRegistry) ||
					reason.Of(err) != reason.RegistryError || !strings.Contains(err.Error(), "StallTimeout") {
					t.Errorf("Run: %v (reason %s); want a registry error naming StallTimeout", err, reason.Of(err))
				}
				if took > 4*tc.stallTimeout+time.Second {
					t.Errorf("Run took %v with a stall timeout of %v", took, tc.stallTimeout)
				}
				return
			}
			if !errors.Is(err, context.Canceled) || reason.Of(err) != reason.Cancelled {
				t.Errorf("Run: %v (reason %s); want context.Canceled, reason Cancelled", err, reason.Of(err))
			}
		})
	}
}

// tokenBody challenges for a bearer token and stalls in the token's body.
func tokenBody(hr *hangRegistry, w http.ResponseWriter, r *http.Request) bool {
	switch r.URL.Path {
	case "/v2/":
		bearerChallenge(w, r)
	case "/token":
		hr.stallBody(w, r, "application/json")
	default:
		return false
	}
	return true
}

// manifestBody stalls in the body of a manifest GET.
func manifestBody(hr *hangRegistry, w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/manifests/") {
		return false
	}
	hr.stallBody(w, r, "application/vnd.oci.image.manifest.v1+json")
	return true
}

func writeHangFile(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestFIFOHangs: a FIFO source with no writer, or whose writer sends a
// little and then goes idle (while the import spools it), does not hold
// a cancelled import: Run returns within seconds, cancelled, and leaves no
// spool file in the scratch directory.
func TestFIFOHangs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// write is what the writer sends before it idles; nil: no writer
		// opens the FIFO.
		write []byte
		// waitIn is the function the import waits in.
		waitIn string
	}{
		{name: "no writer", waitIn: "importer.openSource"},
		// More than a pipe holds: the write returns once the import
		// has read (and spooled) most of it.
		{name: "writer idle while spooling", write: bytes.Repeat(hangDisk, 40), waitIn: "importer.copySpool"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			hr := newHangRegistry(t, nil)
			fifo := filepath.Join(t.TempDir(), "disk.fifo")
			if err := syscall.Mkfifo(fifo, 0o600); err != nil {
				t.Fatal(err)
			}
			o := hangOptions(t, hr, fifo)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			done := runAsync(ctx, o)
			if tc.write != nil {
				w := openWriter(t, fifo)
				if _, err := w.Write(tc.write); err != nil {
					t.Logf("writing the FIFO: %v", err)
					buf := make([]byte, 1<<20)
					t.Logf("%s", buf[:runtime.Stack(buf, true)])
					t.Fatalf("Run: %v", waitRun(t, done))
				}
				// The writer stays open, idle, until the test ends.
			}
			if !waitParked(t, tc.waitIn, done) {
				return
			}
			cancel()
			err := waitRun(t, done)
			if !errors.Is(err, context.Canceled) || reason.Of(err) != reason.Cancelled {
				t.Errorf("Run: %v (reason %s); want context.Canceled, reason Cancelled", err, reason.Of(err))
			}
			if entries, _ := os.ReadDir(o.ScratchDir); len(entries) != 0 {
				t.Errorf("%d files left in the scratch directory, want none", len(entries))
			}
		})
	}
}

// openWriter opens the FIFO for writing (once the import opened it for
// reading), closed when the test ends.
func openWriter(t *testing.T, fifo string) *os.File {
	t.Helper()
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// waitParked waits until a goroutine of this process is parked in I/O (a
// system call or the poller) with fn on its stack, looking every 10 ms
// for up to hangBound: there, the import waits on the FIFO. It reports
// false when Run returned first.
func waitParked(t *testing.T, fn string, done <-chan error) bool {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(hangBound)
	for {
		var dump bytes.Buffer
		pprof.Lookup("goroutine").WriteTo(&dump, 2)
		for _, g := range strings.Split(dump.String(), "\n\n") {
			header, _, _ := strings.Cut(g, "\n")
			if (strings.Contains(header, "[IO wait") || strings.Contains(header, "[syscall")) && strings.Contains(g, fn) {
				return true
			}
		}
		select {
		case err := <-done:
			t.Errorf("Run returned before it waited on the FIFO: %v", err)
			return false
		case <-deadline:
			t.Errorf("no goroutine waits on the FIFO in %s after %v", fn, hangBound)
			return false
		case <-tick.C:
		}
	}
}

// blockingSource is a reader whose Read, after the first, blocks until
// interrupted; it records Reads that start after closed is set.
type blockingSource struct {
	blocked     chan struct{} // closed when the second Read starts
	interrupted chan struct{}
	once        sync.Once
	reads       atomic.Int64
	closed      atomic.Bool // set by the test once Close returned
	lateReads   atomic.Int64
}

func (b *blockingSource) Read(p []byte) (int, error) {
	if b.closed.Load() {
		b.lateReads.Add(1)
	}
	if b.reads.Add(1) == 1 {
		return copy(p, "first"), nil
	}
	close(b.blocked)
	<-b.interrupted
	return 0, errors.New("interrupted")
}

func (b *blockingSource) interrupt() { b.once.Do(func() { close(b.interrupted) }) }

// TestReadAheadCloseJoins: Close returns once the read-ahead goroutine has
// ended (it interrupts a Read of the source in progress), closes the source
// once, and the source is never read after Close returned.
func TestReadAheadCloseJoins(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// read reads from the read-ahead before Close.
		read bool
	}{
		{name: "goroutine blocked in a Read of the source", read: true},
		{name: "no Read came"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			src := &blockingSource{blocked: make(chan struct{}), interrupted: make(chan struct{})}
			var closes atomic.Int64
			ra := newReadAhead(src, func() { closes.Add(1) }).interruptWith(src.interrupt)
			if tc.read {
				buf := make([]byte, 16)
				// The goroutine reads "first", then blocks in its
				// second Read to fill the buffer.
				go ra.Read(buf)
				<-src.blocked
			}
			closed := make(chan struct{})
			go func() {
				ra.Close()
				src.closed.Store(true)
				close(closed)
			}()
			select {
			case <-closed:
			case <-time.After(hangBound):
				t.Fatal("Close did not return")
			}
			if n := closes.Load(); n != 1 {
				t.Errorf("the source was closed %d times, want once", n)
			}
			if !tc.read {
				return
			}
			select {
			case <-ra.done:
			default:
				t.Error("Close returned before the goroutine ended")
			}
			if n := src.lateReads.Load(); n != 0 {
				t.Errorf("the source was read %d times after Close returned", n)
			}
		})
	}
}
