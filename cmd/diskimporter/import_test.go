package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/diskimporter/diskimporter/importer"
)

// cleanEnv unsets, for the test, every variable that could configure the
// command from outside it.
func cleanEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "DISKIMPORTER_") || k == "POD_NAME" || k == "POD_NAMESPACE" {
			t.Setenv(k, "") // restored after the test
			os.Unsetenv(k)
		}
	}
}

// parseImport parses an import command line as runImport does.
func parseImport(t *testing.T, args ...string) (importer.Options, cliOptions, map[string]bool, error) {
	t.Helper()
	var o importer.Options
	var c cliOptions
	fs := importFlags(&o, &c)
	fs.SetOutput(&bytes.Buffer{})
	fromEnv, err := parseFlagsPositional(fs, args, "source", "destination")
	return o, c, fromEnv, err
}

func TestPositionalArguments(t *testing.T) {
	cases := []struct {
		name      string
		args      []string
		env       map[string]string
		src, dest string
		err       string // substring of the error; "" for none
	}{
		{name: "flags", args: []string{"--source", "s.img", "--destination", "r/x:1"}, src: "s.img", dest: "r/x:1"},
		{name: "arguments", args: []string{"s.img", "r/x:1"}, src: "s.img", dest: "r/x:1"},
		{name: "arguments between flags", args: []string{"--retries", "2", "s.img", "--connections", "2", "r/x:1", "--quiet"}, src: "s.img", dest: "r/x:1"},
		{name: "after --", args: []string{"--", "-dash.img", "r/x:1"}, src: "-dash.img", dest: "r/x:1"},
		{name: "environment only", env: map[string]string{"DISKIMPORTER_SOURCE": "e.img", "DISKIMPORTER_DESTINATION": "r/e:1"}, src: "e.img", dest: "r/e:1"},
		{name: "arguments win over the environment", args: []string{"s.img", "r/x:1"},
			env: map[string]string{"DISKIMPORTER_SOURCE": "e.img", "DISKIMPORTER_DESTINATION": "r/e:1"}, src: "s.img", dest: "r/x:1"},
		{name: "one argument", args: []string{"s.img"}, err: "missing DESTINATION: got 1 argument(s), want SOURCE DESTINATION"},
		{name: "three arguments", args: []string{"s.img", "r/x:1", "Bearer-secret"}, err: "unexpected arguments: got 3"},
		{name: "source twice", args: []string{"s.img", "r/x:1", "--source", "t.img"}, err: "SOURCE given twice, as an argument and as --source"},
		{name: "destination twice", args: []string{"--destination", "r/y:1", "s.img", "r/x:1"}, err: "DESTINATION given twice"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cleanEnv(t)
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			o, _, _, err := parseImport(t, c.args...)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want one containing %q", err, c.err)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("error %q echoes an argument", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.Source != c.src || o.Destination != c.dest {
				t.Errorf("source %q destination %q, want %q %q", o.Source, o.Destination, c.src, c.dest)
			}
		})
	}
}

// TestParseFlagsUnchanged: parseFlags, for commands without positional
// arguments, still refuses any.
func TestParseFlagsUnchanged(t *testing.T) {
	cleanEnv(t)
	var o importer.Options
	var c cliOptions
	fs := importFlags(&o, &c)
	if err := parseFlags(fs, []string{"a", "b"}); err == nil || !strings.Contains(err.Error(), "unexpected arguments") {
		t.Errorf("parseFlags with arguments: %v", err)
	}
}

func TestSourceHeaders(t *testing.T) {
	dir := t.TempDir()
	headerFile := filepath.Join(dir, "headers")
	if err := os.WriteFile(headerFile, []byte("# a Secret's key\r\n\r\nX-Api-Key: k1\r\n   # indented comment\n  \nCookie: a=b; c=d\nx-api-key:k2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want http.Header
	}{
		{name: "none"},
		{name: "flags", args: []string{"--source-header", "Authorization: Bearer tok", "--source-header", "x-token:\t t2 "},
			want: http.Header{"Authorization": {"Bearer tok"}, "X-Token": {"t2"}}},
		{name: "a value with colons", args: []string{"--source-header", "X-Url: http://a:b@c"},
			want: http.Header{"X-Url": {"http://a:b@c"}}},
		{name: "environment", env: map[string]string{"DISKIMPORTER_SOURCE_HEADER": "Authorization: Bearer env, with a comma"},
			want: http.Header{"Authorization": {"Bearer env, with a comma"}}},
		{name: "empty environment variable", env: map[string]string{"DISKIMPORTER_SOURCE_HEADER": ""}},
		{name: "flag wins over the environment", args: []string{"--source-header", "Authorization: Bearer flag"},
			env:  map[string]string{"DISKIMPORTER_SOURCE_HEADER": "Authorization: Bearer env"},
			want: http.Header{"Authorization": {"Bearer flag"}}},
		{name: "file", args: []string{"--source-header-file", headerFile},
			want: http.Header{"X-Api-Key": {"k1", "k2"}, "Cookie": {"a=b; c=d"}}},
		{name: "file from the environment and a flag", args: []string{"--source-header", "Authorization: Bearer tok"},
			env:  map[string]string{"DISKIMPORTER_SOURCE_HEADER_FILE": headerFile},
			want: http.Header{"Authorization": {"Bearer tok"}, "X-Api-Key": {"k1", "k2"}, "Cookie": {"a=b; c=d"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cleanEnv(t)
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			_, cli, fromEnv, err := parseImport(t, append([]string{"s.img", "r/x:1"}, c.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			got, err := cli.headers(fromEnv["source-header"])
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("headers %v, want %v", got, c.want)
			}
		})
	}
}

// TestMalformedSourceHeader: a bad header is a usage error (exit 2) before
// anything else happens, and no part of its value reaches stderr.
func TestMalformedSourceHeader(t *testing.T) {
	const secret = "s3cr3t-t0ken"
	dir := t.TempDir()
	file := func(content string) string {
		f, err := os.CreateTemp(dir, "headers")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString(content); err != nil {
			t.Fatal(err)
		}
		return f.Name()
	}
	cases := []struct {
		name   string
		args   []string
		env    map[string]string
		stderr string
	}{
		{name: "no colon", args: []string{"--source-header", "Authorization Bearer " + secret},
			stderr: "--source-header #1: want 'Name: value'"},
		{name: "the second one", args: []string{"--source-header", "X-A: 1", "--source-header", "Bearer" + secret},
			stderr: "--source-header #2: want 'Name: value'"},
		{name: "space in the name", args: []string{"--source-header", "Bearer " + secret + ": x"},
			stderr: "not a valid HTTP field name"},
		{name: "empty name", args: []string{"--source-header", ": " + secret}, stderr: "not a valid HTTP field name"},
		{name: "empty flag", args: []string{"--source-header", ""}, stderr: "--source-header #1: want 'Name: value'"},
		{name: "empty value (unquoted on a shell)", args: []string{"--source-header", "Authorization:"},
			stderr: "header Authorization has an empty value (quote the whole header: --source-header 'Authorization: value')"},
		{name: "unquoted on a shell: its value became arguments", args: []string{"--source-header", "Authorization:", "Bearer", secret},
			stderr: "--source-header #1: header Authorization has an empty value"},
		{name: "control character", args: []string{"--source-header", "X-Token: " + secret + "\x01"},
			stderr: "header X-Token: a control character in the value"},
		{name: "newline", args: []string{"--source-header", "X-Token: " + secret + "\r\nHost: evil"},
			stderr: "header X-Token: a control character in the value"},
		{name: "reserved Host", args: []string{"--source-header", "host: " + secret}, stderr: "header Host is set by diskimporter itself"},
		{name: "reserved Range", args: []string{"--source-header", "Range: bytes=0-" + secret}, stderr: "header Range is set by diskimporter itself"},
		{name: "environment", env: map[string]string{"DISKIMPORTER_SOURCE_HEADER": "Authorization=" + secret},
			stderr: "DISKIMPORTER_SOURCE_HEADER: want 'Name: value'"},
		{name: "file line", args: []string{"--source-header-file", file("# comment\n\nX-A: 1\nBearer " + secret + "\n")},
			stderr: "line 4: want 'Name: value'"},
		{name: "missing file", args: []string{"--source-header-file", filepath.Join(dir, "missing")},
			stderr: "--source-header-file: open"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cleanEnv(t)
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			resultFile := filepath.Join(t.TempDir(), "result.json")
			var stdout, stderr bytes.Buffer
			// The source would answer nothing: the command must stop first.
			args := append([]string{"import", "http://127.0.0.1:1/disk.img", "127.0.0.1:1/r/x:1", "--result-file", resultFile}, c.args...)
			code := run(t.Context(), args, &stdout, &stderr)
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if !strings.Contains(stderr.String(), c.stderr) {
				t.Errorf("stderr %q, want %q", stderr.String(), c.stderr)
			}
			if strings.Contains(stderr.String(), secret) {
				t.Errorf("stderr holds the header value: %q", stderr.String())
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout %q", stdout.String())
			}
			if _, err := os.Stat(resultFile); !os.IsNotExist(err) {
				t.Errorf("a usage error wrote the result file (%v)", err)
			}
		})
	}
}

// TestMetricsAddressInUse: an InvalidOptions failure before the import
// starts, as for --pprof-address.
func TestMetricsAddressInUse(t *testing.T) {
	cleanEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	resultFile := filepath.Join(t.TempDir(), "result.json")
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"import", "http://127.0.0.1:1/disk.img", "127.0.0.1:1/r/x:1",
		"--metrics-address", ln.Addr().String(), "--log-format", "json", "--result-file", resultFile}, &stdout, &stderr)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	want := "diskimporter import: InvalidOptions: invalid options: --metrics-address " + ln.Addr().String() + ": listen tcp"
	if !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr %q, want %q", stderr.String(), want)
	}
	var f failure
	b, err := os.ReadFile(resultFile)
	if err != nil || json.Unmarshal(b, &f) != nil || f.Reason != "InvalidOptions" || !strings.Contains(f.Message, "address already in use") {
		t.Errorf("result file %s (%v), want an InvalidOptions failure", b, err)
	}
	if strings.Contains(stderr.String(), `"msg":"importing"`) {
		t.Errorf("the import started: %s", stderr.String())
	}
}

// TestHelp: every command has --help with examples, on stderr with exit 0,
// and "help COMMAND" is the same.
func TestHelp(t *testing.T) {
	cleanEnv(t)
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"import", "--help"}, []string{"diskimporter import SOURCE DESTINATION [flags]", "Examples:",
			"diskimporter import https://cloud.example/fedora.raw registry.example:5000/disks/fedora:41",
			"DISKIMPORTER_SOURCE_HEADER=", "--metrics-address :9090", "--source-header-file", "--quiet", "DISKIMPORTER_SOURCE_CA_FILE"}},
		{[]string{"help", "import"}, []string{"diskimporter import SOURCE DESTINATION [flags]", "Examples:"}},
		{[]string{"demo", "--help"}, []string{"Examples:", "diskimporter demo --size 1GiB", "--metrics-address 127.0.0.1:9090"}},
		{[]string{"version", "-h"}, []string{"Usage: diskimporter version", "Examples:", "docker run --rm"}},
		{[]string{"help", "version"}, []string{"Usage: diskimporter version"}},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), c.args, &stdout, &stderr); code != 0 {
			t.Errorf("%q: exit %d, want 0", c.args, code)
		}
		for _, w := range c.want {
			if !strings.Contains(stderr.String(), w) {
				t.Errorf("%q: help lacks %q:\n%s", c.args, w, stderr.String())
			}
		}
		if stdout.Len() != 0 {
			t.Errorf("%q: stdout %q", c.args, stdout.String())
		}
	}

	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"help"}, &stdout, &stderr); code != 0 ||
		!strings.Contains(stdout.String(), "diskimporter import SOURCE DESTINATION") ||
		!strings.Contains(stdout.String(), "diskimporter import --source") {
		t.Errorf("help: exit %d, stdout %q", code, stdout.String())
	}
	stdout.Reset()
	if code := run(context.Background(), []string{"version", "extra"}, &stdout, &stderr); code != 2 {
		t.Errorf("version with an argument: exit %d, want 2", code)
	}
	stdout.Reset()
	if code := run(context.Background(), []string{"version"}, &stdout, &stderr); code != 0 || !strings.HasPrefix(stdout.String(), "diskimporter ") {
		t.Errorf("version: exit %d, stdout %q", code, stdout.String())
	}
}
