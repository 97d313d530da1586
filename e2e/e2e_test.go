// Package e2e runs the diskimporter binary against a real CNCF distribution
// registry (see package registry) and an HTTP source on loopback, then
// pulls the images back and checks them byte for byte.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/e2e/registry"
)

// TestImport imports disks in the ways a user would and checks each image
// pulled back.
func TestImport(t *testing.T) {
	needE2E(t)

	// A second registry that speaks HTTP/1.1 only (no h2 in ALPN).
	h1Log := &logSink{}
	h1 := registry.StartT(t, registry.Options{HTTP1Only: true, LogOutput: h1Log})

	host := strings.TrimPrefix(src.URL, "http://")
	rawURL := src.URL + "/raw8.img"
	raw := want{source: rawURL, sha256: src.rawSum, size: rawSize, format: "raw", diskName: "disk.img"}
	iso := want{source: src.URL + "/disk.iso", sha256: src.isoSum, size: isoSize, format: "iso", diskName: "disk.iso"}

	with := func(w want, f func(*want)) want { f(&w); return w }

	type tc struct {
		name string
		// source returns the --source value and the redacted form the
		// result and annotation must show.
		source func(t *testing.T) (string, string)
		args   []string
		env    []string
		reg    *registry.Registry
		log    *logSink
		proto  string // HTTP version every registry request of the repo must use
		noCA   bool   // no --ca-file
		noTag  bool   // destination REGISTRY/REPO, which means :latest
		gets   int    // GETs the source must have had, when not 0
		want   want
	}
	httpSource := func(u string) func(*testing.T) (string, string) {
		return func(*testing.T) (string, string) { return u, u }
	}
	fileSource := func(url bool) func(*testing.T) (string, string) {
		return func(t *testing.T) (string, string) {
			p := writeDiskFile(t, src.raw8, rawSize, "disk.raw")
			if url {
				return "file://" + p, p
			}
			return p, p
		}
	}
	cases := []tc{
		{name: "raw over http", source: httpSource(rawURL), proto: "HTTP/1.1", want: raw},
		{name: "http2 allowed", source: httpSource(rawURL), args: []string{"--http1=false"}, proto: "HTTP/2.0", want: raw},
		{name: "raw over http with its sha256 recorded", source: httpSource(rawURL), args: []string{"--disk-sha256"},
			want: with(raw, func(w *want) { w.hashed = true })},
		{name: "raw over http in 1 MiB pieces on 4 connections", source: func(*testing.T) (string, string) {
			return rawURL + "?pieces", rawURL + "?REDACTED"
		}, args: []string{"--connections", "4", "--chunk-size", "1MiB"}, gets: rawSize >> 20, want: raw},
		{name: "raw from a file path", source: fileSource(false), want: raw},
		{name: "raw from a file URL", source: fileSource(true), want: raw},
		{name: "iso over http", source: httpSource(iso.source), want: iso},
		{name: "iso from a file path", source: func(t *testing.T) (string, string) {
			p := writeDiskFile(t, bytes.NewReader(src.iso), isoSize, "installer.bin")
			return p, p
		}, want: iso},
		{name: "disk name flag", source: httpSource(rawURL), args: []string{"--disk-name", "fedora-41.raw"},
			want: with(raw, func(w *want) { w.diskName = "fedora-41.raw" })},
		{name: "disk name from env", source: httpSource(iso.source), env: []string{"DISKIMPORTER_DISK_NAME=installer.iso"},
			want: with(iso, func(w *want) { w.diskName = "installer.iso" })},
		{name: "platform arm64", source: httpSource(rawURL), args: []string{"--platform", "linux/arm64"},
			want: with(raw, func(w *want) { w.arch = "arm64"; w.os = "linux" })},
		{name: "platform arm v7 from env", source: httpSource(rawURL), env: []string{"DISKIMPORTER_PLATFORM=linux/arm/v7"},
			want: with(raw, func(w *want) { w.os, w.arch, w.variant = "linux", "arm", "v7" })},
		{name: "http1 flag", source: httpSource(rawURL), args: []string{"--http1"}, proto: "HTTP/1.1", want: raw},
		{name: "http1-only registry", source: httpSource(rawURL), reg: h1, log: h1Log, proto: "HTTP/1.1", want: raw},
		{name: "http1-only registry with http1 flag", source: httpSource(rawURL), args: []string{"--http1"},
			reg: h1, log: h1Log, proto: "HTTP/1.1", want: raw},
		{name: "docker media types", source: httpSource(rawURL), args: []string{"--docker-media-types"},
			want: with(raw, func(w *want) { w.docker = true })},
		{name: "docker media types from env", source: httpSource(iso.source), env: []string{"DISKIMPORTER_DOCKER_MEDIA_TYPES=true"},
			want: with(iso, func(w *want) { w.docker = true })},
		{name: "tls 1.3", source: httpSource(rawURL), args: []string{"--tls-max-version", "1.3"},
			want: with(raw, func(w *want) { w.tlsVer = "TLS 1.3" })},
		{name: "size not a multiple of 512", source: httpSource(src.URL + "/odd.img"),
			want: with(raw, func(w *want) { w.size, w.sha256 = oddSize, src.oddSum })},
		{name: "insecure skip verify instead of CA file", source: httpSource(rawURL), noCA: true,
			args: []string{"--insecure-skip-tls-verify"}, want: raw},
		{name: "destination without tag", source: httpSource(rawURL), noTag: true, want: raw},
		{name: "raw over https with source CA from env", source: httpSource(src.TLS.URL + "/raw8.img"),
			env: []string{"DISKIMPORTER_SOURCE_CA_FILE=" + src.CAFile}, want: raw},
		{name: "raw over https without verification", source: httpSource(src.TLS.URL + "/raw8.img"),
			args: []string{"--source-insecure-skip-tls-verify"}, want: raw},
		{name: "redirected source", source: func(*testing.T) (string, string) {
			return src.URL + "/redirect?token=redirtoken", src.URL + "/redirect?REDACTED"
		}, want: with(raw, func(w *want) { w.forbidden = []string{"redirtoken", "redirsecret"} })},
		{name: "credentials and query redacted",
			source: func(*testing.T) (string, string) {
				return "http://alice:s3cr3tpass@" + host + "/raw8.img?X-Amz-Signature=sigsecret&X-Amz-Credential=akid",
					"http://" + host + "/raw8.img?REDACTED"
			},
			want: with(raw, func(w *want) {
				w.forbidden, w.redacted = []string{"alice", "s3cr3tpass", "sigsecret", "akid"}, true
			})},
	}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r, log := c.reg, c.log
			if r == nil {
				r, log = reg, regLog
			}
			source, display := c.source(t)
			repo := newRepo(t)
			dest := r.Addr + "/" + repo + ":v1"
			if c.noTag {
				dest = r.Addr + "/" + repo
			}
			resultFile := filepath.Join(t.TempDir(), "result.json")
			args := importArgs(r, source, dest, append(c.args, "--result-file", resultFile)...)
			if c.noCA {
				i := slices.Index(args, "--ca-file")
				args = slices.Delete(args, i, i+2)
			}

			run := runImport(t, childEnv(t, append(credsEnv(r), c.env...)...), args...)
			res := parseSuccess(t, run)
			t.Logf("imported %d bytes in %v (%.1f MB/s reported, %s, %s)",
				res.Size, run.took.Round(time.Millisecond), res.MBPerSecond, res.TLSVersion, res.TLSCipherSuite)

			w := c.want
			w.reg, w.dest, w.source = r, dest, display
			if c.noTag {
				w.dest = dest + ":latest" // the result names the tag it wrote
			}
			verify(t, res, w)
			if n := src.gets(strings.TrimPrefix(source, src.URL)); c.gets != 0 && n != c.gets {
				t.Errorf("source had %d GETs, want %d", n, c.gets)
			}
			if c.noTag {
				if list, _ := tags(t, r, repo); !slices.Equal(list, []string{"latest"}) {
					t.Errorf("tags of %s = %v, want [latest]", repo, list)
				}
			}

			// --result-file holds the same JSON as stdout.
			var fromFile result
			b := readResultFile(t, resultFile, &fromFile)
			if !bytes.Equal(b, run.stdout) {
				t.Errorf("result file %q differs from stdout %q", b, run.stdout)
			}

			for _, s := range append(w.forbidden, r.Password) {
				if bytes.Contains(run.stdout, []byte(s)) || bytes.Contains(run.stderr, []byte(s)) {
					t.Errorf("output contains the secret %q:\n%s", s, run)
				}
			}

			if c.proto != "" {
				lines := log.writeLines(repo)
				if len(lines) < 3 { // POST, PATCH or PUT of the blob, PUT of the manifest
					t.Errorf("access log has %d write requests to %s, want at least 3: %q", len(lines), repo, lines)
				}
				t.Logf("%d write requests to the registry, checked for %s", len(lines), c.proto)
				for _, l := range lines {
					if !strings.Contains(l, " "+c.proto+`" `) {
						t.Errorf("registry request not over %s: %s", c.proto, l)
					}
				}
			}
		})
	}
}

// TestSameDiskTwoTags imports one disk twice, under two tags: the layer
// (and with it the whole image) must come out the same.
func TestSameDiskTwoTags(t *testing.T) {
	needE2E(t)
	t.Parallel()
	repo := newRepo(t)
	var results []*result
	for _, tag := range []string{"first", "second"} {
		dest := reg.Addr + "/" + repo + ":" + tag
		res := parseSuccess(t, runImport(t, childEnv(t, credsEnv(reg)...), importArgs(reg, src.URL+"/raw8.img", dest)...))
		verify(t, res, want{dest: dest, source: src.URL + "/raw8.img", sha256: src.rawSum, size: rawSize, format: "raw", diskName: "disk.img"})
		results = append(results, res)
	}
	if results[0].LayerDigest != results[1].LayerDigest || results[0].LayerSize != results[1].LayerSize {
		t.Errorf("same disk, different layers: %s (%d) and %s (%d)",
			results[0].LayerDigest, results[0].LayerSize, results[1].LayerDigest, results[1].LayerSize)
	}
	if results[0].ManifestDigest != results[1].ManifestDigest {
		t.Errorf("same disk, different manifests: %s and %s", results[0].ManifestDigest, results[1].ManifestDigest)
	}
	list, _ := tags(t, reg, repo)
	if len(list) != 2 {
		t.Errorf("tags of %s = %v, want first and second", repo, list)
	}
}

// TestImportFailures checks that each kind of bad input fails with its
// reason, writes nothing on stdout and tags nothing.
func TestImportFailures(t *testing.T) {
	needE2E(t)

	type tc struct {
		name   string
		source string
		// dest is the destination given; repo and tag where a tag must
		// not appear ("" tag: the destination is one the registry cannot
		// even name, so check repo for any tag).
		dest func(repo string) string
		env  func(t *testing.T) []string // nil: good credentials
		args []string
		// argsFn returns more arguments; it may hold resources until
		// the test ends.
		argsFn func(t *testing.T) []string
		noCA   bool
		reason string
		// forbidden must appear neither on stderr nor in the result file.
		forbidden []string
		// onePass: the source must be requested once (a failed source is
		// not downloaded again by an upload retry).
		onePass bool
	}
	secretURL := func(base, path string) string {
		host := strings.TrimPrefix(base, "http://")
		return "http://alice:s3cr3tpass@" + host + path + "?X-Amz-Signature=sigsecret"
	}
	secrets := []string{"s3cr3tpass", "sigsecret"}
	goodDest := func(repo string) string { return reg.Addr + "/" + repo + ":v1" }
	cases := []tc{
		{name: "source 404", source: src.URL + "/status/404", reason: "SourceNotFound"},
		{name: "source 410", source: src.URL + "/status/410", reason: "SourceNotFound"},
		{name: "source 403", source: src.URL + "/status/403", reason: "SourceUnauthorized"},
		{name: "source 401", source: src.URL + "/status/401", reason: "SourceUnauthorized"},
		{name: "source 500", source: src.URL + "/status/500", reason: "SourceUnavailable"},
		{name: "connection refused", source: "http://" + closedAddr(t) + "/disk.img", reason: "SourceUnavailable"},
		{name: "short download", source: src.URL + "/truncated.img", reason: "SourceTruncated", onePass: true},
		{name: "source 404 with credentials in the URL", source: secretURL(src.URL, "/status/404"),
			reason: "SourceNotFound", forbidden: secrets},
		{name: "connection refused with credentials in the URL",
			source: secretURL("http://"+closedAddr(t), "/disk.img"),
			reason: "SourceUnavailable", forbidden: secrets},
		{name: "short download with credentials in the URL", source: secretURL(src.URL, "/truncated.img"),
			reason: "SourceTruncated", forbidden: secrets, onePass: true},
		{name: "untrusted https source", source: src.TLS.URL + "/raw8.img", reason: "SourceUnavailable"},
		{name: "bad platform", source: src.URL + "/raw8.img", args: []string{"--platform", "arm64"}, reason: "InvalidOptions"},
		{name: "no such file", source: filepath.Join(t.TempDir(), "missing.img"), reason: "SourceNotFound"},
		{name: "qcow2 with an empty header", source: src.URL + "/disk.qcow2", reason: "CorruptSource"},
		{name: "wrong password", source: src.URL + "/raw8.img", reason: "Unauthorized",
			env: func(t *testing.T) []string {
				return []string{"DISKIMPORTER_USERNAME=" + reg.Username, "DISKIMPORTER_PASSWORD=wrong-" + reg.Password[:8]}
			}},
		{name: "unknown user", source: src.URL + "/raw8.img", reason: "Unauthorized",
			env: func(t *testing.T) []string {
				return []string{"DISKIMPORTER_USERNAME=nobody", "DISKIMPORTER_PASSWORD=" + reg.Password}
			}},
		{name: "untrusted registry certificate", source: src.URL + "/raw8.img", noCA: true, reason: "RegistryTLS"},
		{name: "registry unreachable", source: src.URL + "/raw8.img", reason: "RegistryError",
			dest: func(repo string) string {
				return closedAddr(t) + "/" + repo + ":v1"
			}},
		{name: "pprof address in use", source: src.URL + "/raw8.img", reason: "InvalidOptions",
			argsFn: func(t *testing.T) []string {
				l, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { l.Close() })
				return []string{"--pprof-address", l.Addr().String()}
			}},
		{name: "invalid destination tag", source: src.URL + "/raw8.img", reason: "InvalidDestination",
			dest: func(repo string) string { return reg.Addr + "/" + repo + ":bad tag!" }},
		{name: "digest destination", source: src.URL + "/raw8.img", reason: "InvalidDestination",
			dest: func(repo string) string {
				return reg.Addr + "/" + repo + "@sha256:" + strings.Repeat("ab", 32)
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			repo := newRepo(t)
			dest := goodDest(repo)
			if c.dest != nil {
				dest = c.dest(repo)
			}
			env := credsEnv(reg)
			if c.env != nil {
				env = c.env(t)
			}
			source := c.source
			if c.onePass {
				// A query unique to this subtest, to count its requests.
				sep := "?"
				if strings.Contains(source, "?") {
					sep = "&"
				}
				source += sep + "run=" + strings.ReplaceAll(repo, "/", "-")
			}
			resultFile := filepath.Join(t.TempDir(), "result.json")
			args := []string{"--source", source, "--destination", dest, "--log-format", "json", "--result-file", resultFile}
			if !c.noCA {
				args = append(args, "--ca-file", reg.CAFile)
			}
			args = append(args, c.args...)
			if c.argsFn != nil {
				args = append(args, c.argsFn(t)...)
			}
			run := runImport(t, childEnv(t, env...), args...)
			if c.onePass {
				u, err := url.Parse(source)
				if err != nil {
					t.Fatal(err)
				}
				if n := src.gets(u.RequestURI()); n != 1 {
					t.Errorf("source %s requested %d times, want 1", u.RequestURI(), n)
				}
			}
			checkFailure(t, run, c.reason)

			// Nothing was tagged, whatever the tag would have been.
			if list, found := tags(t, reg, repo); found && len(list) > 0 {
				t.Errorf("failed import left tags %v in %s", list, repo)
			}
			checkNoTag(t, reg, repo, "v1")

			var f failureResult
			raw := readResultFile(t, resultFile, &f)
			for _, s := range c.forbidden {
				if bytes.Contains(run.stderr, []byte(s)) || bytes.Contains(raw, []byte(s)) {
					t.Errorf("stderr or result file contains the secret %q:\n%s\n%s", s, run, raw)
				}
			}
			if f.Reason != c.reason || f.Message == "" {
				t.Errorf("result file %+v, want reason %q and a message", f, c.reason)
			}
			if last := lastLine(run.stderr); !strings.HasSuffix(last, f.Message) {
				t.Errorf("result file message %q is not the one on stderr %q", f.Message, last)
			}
			if bytes.Contains(run.stderr, []byte(reg.Password)) {
				t.Errorf("stderr contains the registry password")
			}
		})
	}
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	return lines[len(lines)-1]
}

// TestPprof profiles a running import through --pprof-address and checks
// that the pprof listener serves pprof and nothing else.
func TestPprof(t *testing.T) {
	needE2E(t)
	t.Parallel()

	addr := freeAddr(t)
	repo := newRepo(t)
	dest := reg.Addr + "/" + repo + ":v1"
	ctx, cancel := context.WithTimeout(t.Context(), cliTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	uri := "/slow.img?run=" + strings.ReplaceAll(repo, "/", "-") // unique: counts this test's requests
	args := importArgs(reg, src.URL+uri, dest, "--pprof-address", addr, "--progress-interval", "1s")
	cmd := command(ctx, childEnv(t, credsEnv(reg)...), args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	wait := func() { <-exited }
	defer wait()

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}
	get := func(path string) (int, []byte, http.Header) {
		t.Helper()
		resp, err := client.Get("http://" + addr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("GET %s: reading body: %v", path, err)
		}
		return resp.StatusCode, b, resp.Header
	}

	// Wait for the pprof listener.
	for {
		resp, err := client.Get("http://" + addr + "/debug/pprof/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /debug/pprof/: %s", resp.Status)
			}
			break
		}
		select {
		case <-exited:
			t.Fatalf("import exited before pprof answered (%v):\n%s", waitErr, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("pprof on %s not answering: %v", addr, err)
		}
	}
	t.Logf("pprof up after %v", time.Since(start).Round(time.Millisecond))

	profStart := time.Now()
	code, body, hdr := get("/debug/pprof/profile?seconds=1")
	if code != http.StatusOK {
		t.Errorf("GET /debug/pprof/profile: %d %s", code, body)
	}
	if len(body) < 2 || body[0] != 0x1f || body[1] != 0x8b {
		t.Errorf("profile is not gzip (%d bytes, %q...); Content-Type %s", len(body), body[:min(len(body), 16)], hdr.Get("Content-Type"))
	}
	t.Logf("CPU profile: %d bytes in %v", len(body), time.Since(profStart).Round(time.Millisecond))
	select {
	case <-exited:
		t.Errorf("import finished before the profile did: the profile did not cover the import")
	default:
	}

	// The command line holds --password: it is not served.
	if code, _, _ := get("/debug/pprof/cmdline"); code != http.StatusNotFound {
		t.Errorf("GET /debug/pprof/cmdline: %d, want 404", code)
	}
	// Only pprof: not the default mux (expvar and others register there).
	for _, p := range []string{"/debug/vars", "/", "/metrics", "/debug/requests"} {
		if code, b, _ := get(p); code != http.StatusNotFound {
			t.Errorf("GET %s on the pprof address: %d, want 404: %.200s", p, code, b)
		}
	}

	wait()
	run := &run{args: args, stdout: stdout.Bytes(), stderr: stderr.Bytes(), took: time.Since(start)}
	if waitErr != nil {
		t.Fatalf("import: %v\n%s", waitErr, run)
	}
	res := parseSuccess(t, run)
	t.Logf("throttled import of %d MiB took %v", slowSize>>20, run.took.Round(time.Millisecond))
	verify(t, res, want{dest: dest, source: src.URL + "/slow.img?REDACTED", sha256: src.slowSum, size: slowSize, format: "raw", diskName: "disk.img"})

	// The progress log ran (interval 1s over a ~4s import).
	var progress int
	for _, rec := range checkJSONLogs(t, run, 0) {
		if rec["msg"] == "progress" {
			progress++
		}
	}
	if progress == 0 {
		t.Errorf("no progress records with --progress-interval 1s over %v", run.took)
	}
	// One pass over the source.
	if n := src.gets(uri); n != 1 {
		t.Errorf("slow source requested %d times, want 1", n)
	}
}

// TestCancel stops a running import with SIGTERM: it must end promptly as
// Cancelled and leave no tag.
func TestCancel(t *testing.T) {
	needE2E(t)
	t.Parallel()

	repo := newRepo(t)
	dest := reg.Addr + "/" + repo + ":v1"
	ctx, cancel := context.WithTimeout(t.Context(), cliTimeout)
	defer cancel()
	var stdout bytes.Buffer
	stderr := &logSink{}
	args := importArgs(reg, src.URL+"/slow-cancel.img", dest)
	cmd := command(ctx, childEnv(t, credsEnv(reg)...), args...)
	cmd.Stdout, cmd.Stderr = &stdout, stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	// Let the upload get going, then stop it.
	for !bytes.Contains(stderr.Bytes(), []byte(`"msg":"importing"`)) {
		select {
		case err := <-exited:
			t.Fatalf("import exited early (%v):\n%s", err, stderr.Bytes())
		case <-time.After(20 * time.Millisecond):
		}
	}
	time.Sleep(500 * time.Millisecond)
	signalled := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	select {
	case waitErr = <-exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("import still running 15s after SIGTERM:\n%s", stderr.Bytes())
	}
	t.Logf("exited %v after SIGTERM (%v in all): %v", time.Since(signalled).Round(time.Millisecond),
		time.Since(start).Round(time.Millisecond), waitErr)
	if d := time.Since(signalled); d > 5*time.Second {
		t.Errorf("import took %v to stop after SIGTERM", d)
	}
	run := &run{args: args, stdout: stdout.Bytes(), stderr: stderr.Bytes(), took: time.Since(start)}
	var exitErr *exec.ExitError
	if errors.As(waitErr, &exitErr) && exitErr.Exited() {
		run.code = exitErr.ExitCode()
	} else if waitErr != nil {
		t.Fatalf("import did not exit normally: %v\n%s", waitErr, run)
	}
	checkFailure(t, run, "Cancelled")
	checkNoTag(t, reg, repo, "v1")
}

// TestCLI checks the command line outside of imports: exit codes of usage
// errors, version, help, and the self-contained demo.
func TestCLI(t *testing.T) {
	needE2E(t)
	t.Parallel()

	type tc struct {
		name   string
		args   []string
		env    []string
		code   int
		stdout string // substring of stdout ("" = must be empty)
		stderr string // substring of stderr
	}
	cases := []tc{
		{name: "version", args: []string{"version"}, code: 0, stdout: "diskimporter "},
		{name: "help", args: []string{"help"}, code: 0, stdout: "diskimporter import --source"},
		{name: "no command", args: nil, code: 2, stderr: "Usage:"},
		{name: "unknown command", args: []string{"teleport"}, code: 2, stderr: `unknown command "teleport"`},
		{name: "import help", args: []string{"import", "--help"}, code: 0, stderr: "DISKIMPORTER_SOURCE_CA_FILE"},
		{name: "unknown flag", args: []string{"import", "--bogus"}, code: 2, stderr: "unknown flag: --bogus"},
		{name: "positional argument", args: []string{"import", "disk.img"}, code: 2, stderr: "missing DESTINATION"},
		{name: "bad env value", args: []string{"import"}, env: []string{"DISKIMPORTER_HTTP1=maybe"},
			code: 2, stderr: "DISKIMPORTER_HTTP1"},
		{name: "password without username", args: []string{"import", "d.img", "r.example/x:1"}, env: []string{"DISKIMPORTER_PASSWORD=pw-not-shown"},
			code: 2, stderr: "--password without --username"},
		{name: "bad log format", args: []string{"import", "--log-format", "xml", "d.img", "r.example/x:1"}, code: 2, stderr: "--log-format"},
		{name: "bad tls max version", args: []string{"import", "--tls-max-version", "1.1", "d.img", "r.example/x:1"}, code: 2, stderr: "--tls-max-version"},
		{name: "demo", args: []string{"demo", "--size", "4194304"}, code: 0, stdout: "demo passed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), cliTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, binPath, c.args...)
			cmd.Env = childEnv(t, c.env...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			var exitErr *exec.ExitError
			if errors.As(err, &exitErr) && exitErr.Exited() {
				code = exitErr.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != c.code {
				t.Errorf("exit %d, want %d", code, c.code)
			}
			if c.stdout == "" && stdout.Len() != 0 {
				t.Errorf("stdout not empty: %q", stdout.String())
			}
			if !strings.Contains(stdout.String(), c.stdout) || !strings.Contains(stderr.String(), c.stderr) {
				t.Errorf("stdout %q, stderr %q; want %q and %q", stdout.String(), stderr.String(), c.stdout, c.stderr)
			}
		})
	}
}
