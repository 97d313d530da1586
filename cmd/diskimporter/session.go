package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/diskimporter/diskimporter/cmd/diskimporter/podstatus"
	"github.com/diskimporter/diskimporter/importer"
	"github.com/diskimporter/diskimporter/importer/reason"
	"github.com/diskimporter/diskimporter/importer/redact"
	"github.com/spf13/pflag"
)

// session is one run of a command that does work. Everything the command
// prints goes through it, so that every line is redacted and escaped the
// same way: the usage error or the failure (one line each), the logs, the
// result on stdout, the result file and the termination message.
type session struct {
	name           string
	stdout, stderr io.Writer
	red            redact.Redactor
	common         commonCLI
	con            *console
	logger         *slog.Logger
	// closeMetrics, once the metrics are served, serves the final values
	// for --metrics-linger after the result is out, then stops.
	closeMetrics func()
	// signals is the command's context before --timeout: a signal ends
	// it, --timeout does not.
	signals context.Context
}

func newSession(name string, stdout, stderr io.Writer) *session {
	return &session{name: name, stdout: stdout, stderr: stderr}
}

// secret makes every output hide v.
func (s *session) secret(v string) { s.red.Add(v) }

// clean redacts text and escapes its control characters: what a peer
// sent (a status line, a registry's message) reaches a terminal as text.
func (s *session) clean(text string) string { return escape(s.red.String(text)) }

// usageError prints err as one line and returns the exit code of a usage
// error, 2.
func (s *session) usageError(err error) int {
	fmt.Fprintf(s.stderr, "diskimporter %s: %s\n", s.name, s.clean(err.Error()))
	return 2
}

// startLogging sets up the console (the live line, unless quiet or not
// a terminal) and the logger, once the flags are parsed. live says whether
// the command draws a progress line.
func (s *session) startLogging(live bool) error {
	mode := chooseProgressMode(s.common.quiet, live && canDrawLine(s.stderr), os.Getenv("TERM"))
	s.con = newConsole(s.stderr, mode)
	s.con.red = &s.red
	logger, err := s.con.newLogger(s.common.logFormat)
	if err != nil {
		return err
	}
	s.logger = logger
	return nil
}

// withTimeout applies --timeout to ctx.
func (s *session) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	s.signals = ctx
	if s.common.timeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeoutCause(ctx, s.common.timeout,
		fmt.Errorf("%w: --timeout %s reached", context.DeadlineExceeded, s.common.timeout))
}

// failure is the result written on error.
type failure struct {
	Reason  reason.Reason `json:"reason"`
	Message string        `json:"message"`
}

// fail reports err: one line "diskimporter CMD: REASON: message" (with
// the hint for the flags of the reason) on stderr, the failure in the
// result file and termination message; it returns the exit code of a
// failure, 1.
func (s *session) fail(err error) int {
	if s.con != nil {
		s.con.finish() // the failure goes below the progress line
	}
	r := reason.Of(err)
	msg := s.clean(err.Error())
	h := hint(s.name, r)
	if errors.Is(err, importer.ErrPlainHTTP) {
		h = "--plain-http allows plain http to the registry"
		if s.name != "export" && r == reason.SourceUnavailable {
			h = "--source-plain-http allows plain http to a docker:// source's registry"
		}
	}
	if h != "" && !strings.Contains(msg, h) {
		msg += "; " + h
	}
	fmt.Fprintf(s.stderr, "diskimporter %s: %s: %s\n", s.name, r, msg)
	s.writeResult(failure{Reason: r, Message: msg})
	s.end()
	return 1
}

// end stops what served the command's progress, once its result is out.
func (s *session) end() {
	if s.closeMetrics != nil {
		s.closeMetrics()
	}
}

// succeed prints the result as one JSON line on stdout (or, when stdout
// carries the data, as a log line) and writes the result files.
func (s *session) succeed(v any, stdoutIsData bool) int {
	if s.con != nil {
		s.con.finish() // the result goes below the progress line
	}
	line := s.json(v)
	if stdoutIsData {
		s.logger.Info("result", "result", json.RawMessage(line))
	} else {
		fmt.Fprintf(s.stdout, "%s\n", line)
	}
	s.writeResult(v)
	s.end()
	return 0
}

// json marshals v, without HTML escapes (a URL's & stays itself, so that
// its query is redacted whole), and redacts it.
func (s *session) json(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		b.Reset()
		enc.Encode(failure{Reason: reason.Failed, Message: err.Error()})
	}
	return []byte(s.red.String(strings.TrimSuffix(b.String(), "\n")))
}

// writeResult writes v as JSON to --result-file (when set) and, in a Pod,
// to the termination message file.
func (s *session) writeResult(v any) {
	if f := s.common.resultFile; f != "" {
		if err := os.WriteFile(f, append(s.json(v), '\n'), 0o644); err != nil {
			s.log().Error("writing the result file", "path", f, "error", err)
		}
	}
	if os.Getenv(podstatus.EnvPodName) != "" && s.common.terminationLog != "" {
		if err := podstatus.WriteTerminationMessage(s.common.terminationLog, json.RawMessage(s.json(v))); err != nil {
			s.log().Error("writing the termination message", "error", err)
		}
	}
}

// log is the session's logger, or one to stderr before it exists.
func (s *session) log() *slog.Logger {
	if s.logger != nil {
		return s.logger
	}
	return slog.New(slog.NewTextHandler(redactWriter{s.stderr, &s.red}, nil))
}

// hint is what a user of cmd can do about a failure of reason r, in the
// command's own flags; the library's messages name Options fields.
func hint(cmd string, r reason.Reason) string {
	source := "--source-username/--source-password"
	if cmd == "export" || cmd == "warm" || cmd == "serve" {
		source = "--username/--password"
	}
	switch r {
	case reason.Unauthorized:
		return "check --username/--password or the Docker config for the registry"
	case reason.SourceUnauthorized:
		return "check " + source + ", --source-header or the Docker config for the source"
	case reason.RegistryTLS:
		if cmd == "export" || cmd == "warm" || cmd == "serve" {
			return "give the registry's CA with --ca-file"
		}
		return "give the registry's CA with --ca-file, or allow TLS 1.3 with --tls-max-version 1.3"
	case reason.Timeout:
		return "raise --timeout, or --stall-timeout when a peer stalls"
	case reason.ScratchSpace:
		return "give a larger --scratch-dir"
	case reason.TooLarge:
		return "raise --max-size or --max-virtual-size"
	}
	return ""
}

// escape writes the control characters of s (a newline, an escape
// sequence, a NUL) as Go escapes, so that a line stays one line of text.
func escape(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) && r != ' ' {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if r == ' ' || unicode.IsPrint(r) && r != utf8.RuneError {
			b.WriteRune(r)
			continue
		}
		q := strconv.QuoteRune(r)
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
}

// redactWriter redacts what it writes: a log record, written whole.
type redactWriter struct {
	w   io.Writer
	red *redact.Redactor
}

func (r redactWriter) Write(p []byte) (int, error) {
	if _, err := io.WriteString(r.w, r.red.String(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// instrument runs fn with what the command line adds around a command
// that moves a disk: pprof, the metrics, the pod's annotations and the
// live line, which fn's command feeds through onProgress and onRetry.
func (s *session) instrument(ctx context.Context, fn func(onProgress func(importer.Progress), onRetry func(importer.Retry)) error) error {
	stop, err := s.servePprof()
	if err != nil {
		return err
	}
	defer stop()
	var metrics *importMetrics
	var reportMetrics func(importer.Progress)
	var onRetry func(importer.Retry)
	if s.common.metricsAddress != "" {
		metrics = newImportMetrics(time.Now)
		onRetry, reportMetrics = metrics.retried, metrics.report
		srv, err := serveMetrics(s.common.metricsAddress, metrics, s.logger)
		if err != nil {
			return fmt.Errorf("%w: %w", reason.ErrInvalidOptions, err)
		}
		// A signal, not --timeout, ends the linger.
		s.closeMetrics = func() {
			srv.linger(s.signals, s.common.metricsLinger, s.logger)
			srv.stop()
		}
	}
	// In a Pod, progress goes to the Pod's annotations; failing to set
	// that up costs the annotations, never the command.
	reporter, err := podstatus.FromEnv(ctx, podstatus.WithLogger(s.logger))
	if err != nil {
		s.logger.Warn("not reporting progress on the pod", "error", err)
	}
	err = fn(composeProgress(s.con.report, reportMetrics, reporter.Report), onRetry)
	if metrics != nil {
		metrics.finish(err)
	}
	return err
}

// parse parses args into fs, with the flags named positional also taken as
// arguments. On a usage error it prints it (what explain says first, when
// it finds something wrong) and returns the exit code with ok false; for
// --help, 0.
func (s *session) parse(fs *pflag.FlagSet, args []string, explain func() error, positional ...string) (fromEnv map[string]bool, code int, ok bool) {
	fromEnv, err := parseFlagsPositional(fs, args, positional...)
	switch {
	case err == nil:
		return fromEnv, 0, true
	case errors.Is(err, pflag.ErrHelp):
		return nil, 0, false
	}
	if explain != nil {
		if xerr := explain(); xerr != nil {
			err = xerr
		}
	}
	return nil, s.usageError(err), false
}

// prepare parses args into fs (usage: the command's help, shown with its
// flags for --help), checks them with check, and starts the session with
// common; live says whether the command draws a progress line. ok false:
// the command ends with code (--help, a usage error).
func (s *session) prepare(fs *pflag.FlagSet, usage string, args []string, explain func() error,
	check func(fromEnv map[string]bool) error, common *commonCLI, live bool, positional ...string) (code int, ok bool) {
	fs.SetOutput(s.stderr)
	fs.Usage = func() { fmt.Fprint(s.stderr, usage+fs.FlagUsages()) }
	fromEnv, code, ok := s.parse(fs, args, explain, positional...)
	if !ok {
		return code, false
	}
	if err := check(fromEnv); err != nil {
		return s.usageError(err), false
	}
	return s.start(*common, live)
}

// start sets the session up once the command's flags are checked: the
// common flags, the console and the logger. live says whether the command
// draws a progress line.
func (s *session) start(common commonCLI, live bool) (code int, ok bool) {
	s.common = common
	if err := s.startLogging(live); err != nil {
		return s.usageError(err), false
	}
	return 0, true
}
