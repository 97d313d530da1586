package main

import (
	"bytes"
	"context"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/spf13/pflag"

	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/export"
)

// runCmd runs one command line in process and returns its exit code,
// stdout and stderr.
func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestSecretsNeverPrinted runs commands whose arguments hold secrets
// (credentials in a URL, a presigned signature, a password, a header) and
// fail: neither stderr nor stdout nor the result file may show them. A
// source that looks like a URL but does not parse is a usage error, never
// a path.
func TestSecretsNeverPrinted(t *testing.T) {
	cleanEnv(t)
	closed := closedPort(t)
	const secret = "S3CRETVALUE"
	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"bad port", []string{"import", "http://u:" + secret + "@host:22x01/d.img?X-Amz-Signature=" + secret, "reg.example/x:1"}, 2},
		{"bad escape", []string{"import", "https://example.com/%zz/d.img?sig=" + secret, "reg.example/x:1"}, 2},
		{"unclosed bracket", []string{"inspect", "https://u:" + secret + "@[::1/d.img?sig=" + secret}, 2},
		{"docker credentials", []string{"import", "docker://user:" + secret + "@reg.example/x:1", "reg.example/y:1"}, 2},
		{"export bad reference", []string{"export", "docker://user:" + secret + "@reg.example/x:1", filepath.Join(t.TempDir(), "out")}, 2},
		{"unreachable source", []string{"inspect", "http://u:" + secret + "@" + closed + "/d.img?sig=" + secret}, 1},
		{"password to an unreachable registry", []string{"import", "--password", secret, "--username", "u", "--timeout", "20s", filepath.Join(t.TempDir(), "none.img"), closed + "/x:1"}, 1},
		{"header to an unreachable source", []string{"inspect", "--source-header", "Authorization: Bearer " + secret, "https://" + closed + "/d.img"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resultFile := filepath.Join(t.TempDir(), "result.json")
			code, stdout, stderr := runCmd(t, append(tc.args, "--result-file", resultFile)...)
			if code != tc.code {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, tc.code, stderr)
			}
			result, _ := os.ReadFile(resultFile)
			for what, out := range map[string]string{"stdout": stdout, "stderr": stderr, "result file": string(result)} {
				if strings.Contains(out, secret) {
					t.Errorf("%s shows the secret:\n%s", what, out)
				}
			}
			if lines := strings.Count(stderr, "\n"); code == 2 && lines != 1 {
				t.Errorf("a usage error printed %d lines, want 1:\n%s", lines, stderr)
			}
		})
	}
}

// TestPeerTextEscaped: a source answering with a status line holding
// escape sequences and a NUL must not reach the terminal raw, and the
// failure stays one line.
func TestPeerTextEscaped(t *testing.T) {
	cleanEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				c.Read(buf)
				io.WriteString(c, "HTTP/1.1 500 \x1b]0;owned\x07\x1b[2Jgone\x00\x7f\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			}()
		}
	}()
	code, _, stderr := runCmd(t, "inspect", "-q", "--retries", "0", "http://"+ln.Addr().String()+"/d.img")
	if code != 1 {
		t.Fatalf("exit code %d, want 1; stderr %q", code, stderr)
	}
	for _, c := range []string{"\x1b", "\x07", "\x00", "\x7f"} {
		if strings.Contains(stderr, c) {
			t.Errorf("stderr holds the control character %q: %q", c, stderr)
		}
	}
	if !strings.HasPrefix(stderr, "diskimporter inspect: SourceUnavailable: ") || strings.Count(stderr, "\n") != 1 {
		t.Errorf("want one line \"diskimporter inspect: SourceUnavailable: ...\", got %q", stderr)
	}
}

// TestOneFailureLine: a runtime failure prints exactly one line, not a
// log line and then the same line again; a usage error names what is
// missing and exits 2.
func TestOneFailureLine(t *testing.T) {
	cleanEnv(t)
	srv := http.Server{Handler: http.NotFoundHandler(), ReadHeaderTimeout: time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"inspect", "http://" + ln.Addr().String() + "/d.img"}, 1, "diskimporter inspect: SourceNotFound: "},
		{[]string{"import", "disk.img"}, 2, "diskimporter import: missing DESTINATION"},
		{[]string{"export", "reg.example/x:1"}, 2, "diskimporter export: missing OUTPUT"},
		{[]string{"import", "--chunk-size", "0", "a.img", "r.example/x:1"}, 2, "want 64KiB to 1GiB"},
		{[]string{"import", "--connections", "0", "a.img", "r.example/x:1"}, 2, "--connections 0: want 1 to 64"},
		{[]string{"version", "extra"}, 2, "diskimporter version: unexpected arguments"},
	} {
		code, _, stderr := runCmd(t, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%q: exit %d, stderr %q; want exit %d and one line with %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
}

func TestSizeFlag(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want int64
		err  bool
	}{
		{"1GiB", 1 << 30, false}, {"2TiB", 2 << 40, false}, {"8MiB", 8 << 20, false}, {"64KiB", 64 << 10, false},
		{"1000", 1000, false}, {"5GB", 5e9, false}, {"10kB", 10e3, false}, {"7B", 7, false}, {" 3 MiB ", 3 << 20, false},
		{"0", 0, true}, {"-1", 0, true}, {"1PiB", 0, true}, {"abc", 0, true}, {"1.5GiB", 0, true}, {"", 0, true},
	} {
		var n int64
		err := newSize(&n, 1, 1<<50).Set(tc.in)
		if (err != nil) != tc.err || !tc.err && n != tc.want {
			t.Errorf("Set(%q) = %d, %v; want %d, error %v", tc.in, n, err, tc.want, tc.err)
		}
	}
	if got := formatSize(2 << 40); got != "2TiB" {
		t.Errorf("formatSize = %q", got)
	}
}

// TestFlagsDefinedOnce: a flag that two commands share has one meaning in
// both (the same usage text, the same type), and export takes import's
// registry flags under their import names.
// meaning is a flag's usage without the default it names.
func meaning(usage string) string {
	if i := strings.LastIndex(usage, " (default "); i >= 0 && strings.HasSuffix(usage, ")") {
		return usage[:i]
	}
	return usage
}

func TestFlagsDefinedOnce(t *testing.T) {
	var io importer.Options
	var ic cliOptions
	var eo export.Options
	var ec exportCLI
	var so importer.InspectOptions
	var sc inspectCLI
	sets := map[string]*pflag.FlagSet{
		"import": importFlags(&io, &ic), "export": exportFlags(&eo, &ec), "inspect": inspectFlags(&so, &sc),
	}
	seen := map[string]*pflag.Flag{}
	for cmd, fs := range sets {
		fs.VisitAll(func(f *pflag.Flag) {
			// Read defaults differ by command (export reads with more
			// connections); their meaning does not.
			// --source is what a command reads (export reads an image),
			// and export's hidden --source-* names are the spellings
			// of its registry flags in earlier versions.
			if f.Hidden || f.Name == "source" {
				return
			}
			if prev, ok := seen[f.Name]; ok && (prev.Value.Type() != f.Value.Type() || meaning(prev.Usage) != meaning(f.Usage) && !strings.Contains(f.Usage, "image of")) {
				t.Errorf("--%s in %s: %q (%s), elsewhere %q (%s)", f.Name, cmd, f.Usage, f.Value.Type(), prev.Usage, prev.Value.Type())
			}
			seen[f.Name] = f
		})
	}
	for _, name := range []string{"username", "password", "ca-file", "insecure-skip-tls-verify", "plain-http", "client-cert", "tls-max-version",
		"connections", "chunk-size", "retries", "stall-timeout", "quiet", "log-format", "pprof-address", "result-file", "timeout", "platform", "source"} {
		if sets["export"].Lookup(name) == nil {
			t.Errorf("export has no --%s", name)
		}
	}
	for _, name := range []string{"source-plain-http", "source-ca-file", "source-username", "quiet", "timeout", "result-file", "pprof-address"} {
		if sets["inspect"].Lookup(name) == nil || sets["import"].Lookup(name) == nil {
			t.Errorf("import or inspect has no --%s", name)
		}
	}
	if f := sets["export"].Lookup("source-ca-file"); f == nil || !f.Hidden {
		t.Errorf("export --source-ca-file: want a hidden alias of --ca-file")
	}
	if sets["inspect"].Lookup("output") != nil {
		t.Errorf("inspect --output exists: it would mean a format there and a path in export")
	}
}

// TestPprofNoCmdline: the pprof listener does not serve the command line,
// which holds passwords and header values given as flags.
func TestPprofNoCmdline(t *testing.T) {
	stop, addr, err := servePprof("127.0.0.1:0", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	os.Args = append(os.Args, "--password", "S3CRETVALUE")
	for path, want := range map[string]int{"/debug/pprof/cmdline": http.StatusNotFound, "/debug/pprof/goroutine?debug=1": http.StatusOK} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || strings.Contains(string(body), "S3CRETVALUE") {
			t.Errorf("GET %s: %d, want %d; secret shown: %v", path, resp.StatusCode, want, strings.Contains(string(body), "S3CRETVALUE"))
		}
	}
}

func TestEscape(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"plain text: ok":    "plain text: ok",
		"a\nb\x1b[31mc\x00": `a\nb\x1b[31mc\x00`,
		"tab\there\u202e":   `tab\there\u202e`,
		"ünïcode":           "ünïcode",
	} {
		if got := escape(in); got != want {
			t.Errorf("escape(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestPlainHTTPHint: --plain-http is suggested where it is the fix (the
// registry answers plain http), never for an untrusted certificate or a
// refused connection.
func TestPlainHTTPHint(t *testing.T) {
	cleanEnv(t)
	disk := filepath.Join(t.TempDir(), "d.img")
	if err := os.WriteFile(disk, bytes.Repeat([]byte{1}, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	plain := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer plain.Close()
	untrusted := httptest.NewUnstartedServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	untrusted.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake
	untrusted.StartTLS()
	defer untrusted.Close()
	host := func(u string) string { return strings.TrimPrefix(strings.TrimPrefix(u, "http://"), "https://") }
	for _, tc := range []struct {
		name, dest, reason string
		hint               bool
	}{
		{"plain http registry", host(plain.URL) + "/x:1", "RegistryError", true},
		{"untrusted certificate", host(untrusted.URL) + "/x:1", "RegistryTLS", false},
		{"connection refused", closedPort(t) + "/x:1", "RegistryError", false},
	} {
		code, _, stderr := runCmd(t, "import", "-q", "--retries", "0", disk, tc.dest)
		if code != 1 || !strings.HasPrefix(stderr, "diskimporter import: "+tc.reason+": ") {
			t.Errorf("%s: exit %d, stderr %q; want 1 and reason %s", tc.name, code, stderr, tc.reason)
		}
		if got := strings.Contains(stderr, "plain-http") || strings.Contains(stderr, "PlainHTTP"); got != tc.hint {
			t.Errorf("%s: plain http suggested: %v, want %v: %s", tc.name, got, tc.hint, stderr)
		}
	}
}
