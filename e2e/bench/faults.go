package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/diskimporter/diskimporter/e2e/registry"
	"github.com/diskimporter/diskimporter/layer"
)

// faultRow is one fault of the fault table: what the proxy does to the
// import, and, for a killed import, what happens before it runs again.
type faultRow struct {
	name      string
	throttled bool // the source paces each connection to -throttle
	// cut drops the layer PATCH at this fraction of the layer; kill
	// holds it there and SIGKILLs the import, which then runs again with
	// the same --checkpoint.
	cut, kill float64
	// lie moves the offset the registry's GET on an upload reports.
	lie int64
	// between runs between a killed import and its rerun, and returns
	// what the row's note says of it.
	between func(f *faultBench, src *countingSource, checkpoint string) (string, error)
	// fresh: the import must give up the upload and start a fresh one,
	// saying so in its log.
	fresh bool
	// trace: print the requests of the rerun.
	trace bool
}

// baseline reports whether the row is a clean import, which the rows of
// its source are compared with.
func (r faultRow) baseline() bool { return r.cut == 0 && r.kill == 0 && r.lie == 0 }

// faultRows are the rows of the fault table, in order. A clean import
// runs first and last among the rows of the plain source: the faster is
// the baseline, and the two tell the noise of the machine.
var faultRows = []faultRow{
	{name: "clean import"},
	{name: "registry drops the PATCH at 30%", cut: 0.3},
	{name: "registry drops the PATCH at 60%", cut: 0.6},
	{name: "registry drops the PATCH at 90%", cut: 0.9},
	{name: "SIGKILL at 90%, rerun at once", kill: 0.9, trace: true},
	{name: "SIGKILL at 90%, rerun once the registry answers", kill: 0.9, between: awaitRegistry, trace: true},
	{name: "source changed between the runs (ETag)", kill: 0.5, between: changeSource, fresh: true},
	{name: "registry forgot the upload", kill: 0.5, between: forgetUpload, fresh: true},
	{name: "upload GET reports 4 KiB behind", cut: 0.5, lie: -4096, fresh: true},
	{name: "upload GET reports 4 KiB ahead", cut: 0.5, lie: 4096, fresh: true},
	{name: "upload GET reports one byte past", cut: 0.5, lie: 1, fresh: true},
	{name: "clean import again"},
	{name: "clean import, throttled source", throttled: true},
	{name: "SIGKILL at 70%, throttled source, rerun at once", throttled: true, kill: 0.7},
}

// faultBench is what the rows of the fault table share.
type faultBench struct {
	*setup
	layerSize        int64
	proxy            *faultProxy
	plain, throttled *countingSource
}

// importRun is one run of the importer.
type importRun struct {
	began          time.Time
	wall           time.Duration
	rssMiB         float64
	stdout, stderr []byte
}

// faultResult is one row's outcome.
type faultResult struct {
	row            faultRow
	first, last    *importRun // first is the killed run, if any
	reread, resent int64
	trace          []exchange // of the last run
	between, note  string
	err            error
}

// runFaults imports a disk of size bytes once per fault row (twice for a
// kill), all through the fault proxy, and prints the fault table.
func runFaults(ctx context.Context, size int64) error {
	s, cleanup, err := newSetup(ctx, size)
	defer cleanup()
	if err != nil {
		return err
	}
	f := &faultBench{setup: s}
	if f.layerSize, err = layer.TarSize(layer.DefaultDiskName, size); err != nil {
		return err
	}
	if f.proxy, err = startFaultProxy(s.reg, s.dir); err != nil {
		return err
	}
	if f.plain, err = startCountingSource(s.dir, 0); err != nil {
		return err
	}
	if f.throttled, err = startCountingSource(s.dir, throttle); err != nil {
		return err
	}
	var results []*faultResult
	for i, row := range faultRows {
		if ctx.Err() != nil {
			break
		}
		r := f.run(ctx, i, row)
		results = append(results, r)
		if r.err != nil {
			fmt.Fprintf(os.Stderr, "FAILED: %s: %s\n", row.name, oneLine(r.err))
		} else {
			fmt.Fprintf(os.Stderr, "done: %s\n", row.name)
		}
	}
	f.printFaults(os.Stdout, results)
	return ctx.Err()
}

// run measures one row; i numbers its repository and checkpoint file.
func (f *faultBench) run(ctx context.Context, i int, row faultRow) *faultResult {
	res := &faultResult{row: row}
	src := f.plain
	if row.throttled {
		src = f.throttled
	}
	src.served.Store(0)
	f.proxy.zero()
	if res.err = f.dropLayer(); res.err != nil {
		return res
	}
	checkpoint := filepath.Join(f.dir, fmt.Sprintf("row%d.checkpoint", i))
	args := f.importArgs(src.url+"disk.img", fmt.Sprintf("%s/faults/row%d:v1", f.proxy.addr, i), checkpoint)
	if row.kill > 0 {
		f.proxy.reset(proxyPlan{holdAt: f.at(row.kill)})
		if res.first, res.err = f.runImport(ctx, args, f.proxy.held()); res.err != nil {
			return res
		}
		if row.between != nil {
			if res.between, res.err = row.between(f, src, checkpoint); res.err != nil {
				return res
			}
		}
	}
	f.proxy.reset(proxyPlan{cutAt: f.at(row.cut), lie: row.lie})
	if res.last, res.err = f.runImport(ctx, args, nil); res.err != nil {
		return res
	}
	res.trace = f.proxy.exchanges()
	res.reread, res.resent = src.served.Load()-f.size, f.proxy.forwarded.Load()-f.layerSize
	res.note, res.err = f.check(row, res)
	return res
}

// dropLayer removes the layer from the registry's storage, so that each
// row's commit stores it as a first import does: distribution keeps a
// blob it already holds and deletes the upload's file instead, which for
// a 1 GiB file written by two processes took 0.6 s more here.
func (f *faultBench) dropLayer() error {
	hex := strings.TrimPrefix(f.layerDigest, "sha256:")
	return os.RemoveAll(filepath.Join(f.reg.DataDir, "docker/registry/v2/blobs/sha256", hex[:2], hex))
}

// at is the layer byte at fraction of the layer; 0 for 0.
func (f *faultBench) at(fraction float64) int64 { return int64(fraction * float64(f.layerSize)) }

// importArgs are the importer's arguments: the defaults but for what the
// bench needs, the proxy's CA, a JSON log and a checkpoint file.
func (f *faultBench) importArgs(source, dest, checkpoint string) []string {
	return []string{f.importer, "import", "--source", source, "--destination", dest,
		"--ca-file", f.proxy.caFile, "--log-format", "json", "--progress-interval", "1h",
		"--scratch-dir", f.dir, "--checkpoint", checkpoint}
}

// runImport runs the importer with argv on both cores, as the 2cores rows
// of the bench do, and SIGKILLs it when kill is signalled: with a kill
// channel, an import that ends on its own is a failure.
func (f *faultBench) runImport(ctx context.Context, argv []string, kill <-chan struct{}) (*importRun, error) {
	cmd, cleanup, err := limited(ctx, twoCores, argv)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	cmd.Env = append(os.Environ(), "DISKIMPORTER_USERNAME="+f.reg.Username, "DISKIMPORTER_PASSWORD="+f.reg.Password, "HOME="+f.dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	run := &importRun{began: time.Now()}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	killed := false
	select {
	case err = <-done:
	case <-kill:
		cmd.Process.Kill()
		<-done
		killed, err = true, nil
	}
	run.wall = time.Since(run.began)
	run.stdout, run.stderr = stdout.Bytes(), stderr.Bytes()
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		run.rssMiB = float64(ru.Maxrss) / 1024
	}
	switch {
	case err != nil:
		return nil, fmt.Errorf("%v: %s", err, lastLine(stderr.String()))
	case kill != nil && !killed:
		return nil, errors.New("the import ended before the proxy held its upload")
	}
	return run, nil
}

// importResult is what the bench reads of the importer's result.
type importResult struct {
	LayerDigest string `json:"layer_digest"`
	Resumes     int    `json:"resumes"`
	ResumedFrom int64  `json:"resumed_from"`
}

// check verifies the row's outcome, the image first, and returns its note.
func (f *faultBench) check(row faultRow, res *faultResult) (string, error) {
	var out importResult
	if err := json.Unmarshal(res.last.stdout, &out); err != nil {
		return "", fmt.Errorf("result %q: %w", res.last.stdout, err)
	}
	if out.LayerDigest != f.layerDigest {
		return "", fmt.Errorf("layer %s, want %s", out.LayerDigest, f.layerDigest)
	}
	freshLine := logLine(res.last.stderr, "starting a fresh")
	switch {
	case row.fresh && freshLine == "":
		return "", errors.New("no fresh upload in the log")
	case !row.fresh && freshLine != "":
		return "", fmt.Errorf("a fresh upload: %s", freshLine)
	case !row.baseline() && !row.fresh && out.Resumes == 0:
		return "", errors.New("the import did not resume")
	case row.lie != 0 && f.proxy.lies.Load() == 0:
		return "", errors.New("the registry was never asked where the upload stands")
	}
	notes := []string{fmt.Sprintf("resumes %d", out.Resumes)}
	if out.ResumedFrom > 0 {
		notes = append(notes, "the last from "+mib(out.ResumedFrom))
	}
	if freshLine != "" {
		notes = append(notes, "a fresh upload")
	}
	if res.first != nil {
		notes = append(notes, fmt.Sprintf("killed run %.2f s", res.first.wall.Seconds()))
	}
	if res.between != "" {
		notes = append(notes, res.between)
	}
	return strings.Join(notes, "; "), nil
}

// logLine is the first line of stderr holding text, or "".
func logLine(stderr []byte, text string) string {
	for line := range bytes.Lines(stderr) {
		if bytes.Contains(line, []byte(text)) {
			return strings.TrimSpace(string(line))
		}
	}
	return ""
}

// changeSource gives the source another ETag between the runs.
func changeSource(_ *faultBench, src *countingSource, _ string) (string, error) {
	src.change(`"disk-2"`)
	return "", nil
}

// awaitRegistry waits a second (no new pod of a Job runs sooner), then
// asks the registry directly where the upload the checkpoint file names
// stands, as the rerun will, and returns when it answered: distribution
// answers once it has written to disk what the killed upload had sent
// (its filesystem driver syncs each upload file as a request closes it).
func awaitRegistry(f *faultBench, _ *countingSource, checkpoint string) (string, error) {
	killed := time.Now()
	time.Sleep(time.Second)
	loc, err := f.uploadLocation(checkpoint)
	if err == nil {
		_, err = f.askRegistry(http.MethodGet, loc)
	}
	return fmt.Sprintf("registry answered %.2f s after the kill", time.Since(killed).Seconds()), err
}

// forgetUpload deletes, in the registry, the upload the checkpoint file
// names.
func forgetUpload(f *faultBench, _ *countingSource, checkpoint string) (string, error) {
	loc, err := f.uploadLocation(checkpoint)
	if err != nil {
		return "", err
	}
	// The saved location's _state is stale: distribution checks it on a
	// DELETE. A GET answers a fresh one; the registry may still be
	// storing what the killed import sent, and refuse that one: ask
	// again.
	for range 10 {
		if loc, err = f.askRegistry(http.MethodGet, loc); err != nil {
			return "", err
		}
		if _, err = f.askRegistry(http.MethodDelete, loc); err == nil {
			return "", nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return "", err
}

// uploadLocation is the upload location the checkpoint file names, on
// the registry itself.
func (f *faultBench) uploadLocation(checkpoint string) (string, error) {
	b, err := os.ReadFile(checkpoint)
	if err != nil {
		return "", err
	}
	var rec struct {
		Location string `json:"location"`
	}
	if err := json.Unmarshal(b, &rec); err != nil || rec.Location == "" {
		return "", fmt.Errorf("checkpoint file %s: no location (%v)", checkpoint, err)
	}
	return strings.Replace(rec.Location, f.proxy.addr, f.reg.Addr, 1), nil
}

// askRegistry sends method to the upload at loc, directly to the
// registry, and returns the upload's next location.
func (f *faultBench) askRegistry(method, loc string) (string, error) {
	req, err := http.NewRequest(method, loc, nil)
	if err != nil {
		return "", err
	}
	req.SetBasicAuth(f.reg.Username, f.reg.Password)
	resp, err := f.proxy.rt.RoundTrip(req)
	if err != nil {
		return "", err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return "", fmt.Errorf("%s of the upload: %s", method, resp.Status)
	}
	next, err := req.URL.Parse(resp.Header.Get("Location"))
	if err != nil {
		return "", err
	}
	return next.String(), nil
}

// printFaults writes the fault table, how the rows meet the issue's
// targets, and the requests of the reruns traced.
func (f *faultBench) printFaults(w io.Writer, results []*faultResult) {
	fmt.Fprintf(w, "diskimporter fault table, %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "machine: %d cores (%s), %s/%s, %s; disk %s (%d bytes), layer %d bytes\n",
		runtime.NumCPU(), cpuModel(), runtime.GOOS, runtime.GOARCH, runtime.Version(), humanSize(f.size), f.size, f.layerSize)
	fmt.Fprintf(w, "registry: distribution %s over TLS with htpasswd, on core 1, behind a loopback TLS fault proxy; source: plain HTTP, on core 1 (throttled: %s per connection); importer: default settings, on both cores\n",
		registry.Version, rateString(throttle))
	fmt.Fprintf(w, "re-read: bytes the source served beyond the disk; re-sent: layer PATCH bytes the proxy passed on beyond the layer; both over both runs of a kill row\n")
	fmt.Fprintf(w, "wall: the import's, a kill row's rerun's; wall / clean: against the fastest clean import of the same source; peak RSS: the largest of the row's runs\n\n")
	clean := fastestClean(results)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "fault\tre-read\tre-sent\twall\twall / clean\tpeak RSS\tnote\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t\n", strings.Join(r.fields(clean[r.row.throttled]), "\t"))
	}
	tw.Flush()
	printTargets(w, results, clean[false])
	for _, r := range results {
		if r.err == nil && r.row.trace {
			printTrace(w, r)
		}
	}
}

// fastestClean is the wall time of the fastest clean import, by whether
// its source was throttled: the least flattering measure to compare with.
func fastestClean(results []*faultResult) map[bool]time.Duration {
	clean := map[bool]time.Duration{}
	for _, r := range results {
		if best, ok := clean[r.row.throttled]; r.err == nil && r.row.baseline() && (!ok || r.last.wall < best) {
			clean[r.row.throttled] = r.last.wall
		}
	}
	return clean
}

// fields are a result's cells, against clean, the wall time of a clean
// import of the same source (0: none).
func (r *faultResult) fields(clean time.Duration) []string {
	if r.err != nil {
		return []string{r.row.name, "-", "-", "-", "-", "-", "FAILED: " + oneLine(r.err)}
	}
	ratio := "-"
	if clean > 0 {
		ratio = fmt.Sprintf("%.0f%%", 100*r.last.wall.Seconds()/clean.Seconds())
	}
	return []string{r.row.name, mib(r.reread), mib(r.resent), fmt.Sprintf("%.2f s", r.last.wall.Seconds()),
		ratio, fmt.Sprintf("%.0f MiB", r.peakRSS()), r.note}
}

// peakRSS is the largest peak RSS of the row's runs, in MiB.
func (r *faultResult) peakRSS() float64 {
	if r.first != nil {
		return max(r.first.rssMiB, r.last.rssMiB)
	}
	return r.last.rssMiB
}

// printTargets says how the rows meet the targets: a rerun after
// a kill at 90% in at most 25% of a clean import's time (clean), and a
// peak RSS of at most 64 MiB with the default settings.
func printTargets(w io.Writer, results []*faultResult, clean time.Duration) {
	fmt.Fprintln(w)
	maxRSS := 0.0
	for _, r := range results {
		if r.err != nil {
			continue
		}
		if clean > 0 && r.row.kill == 0.9 {
			fmt.Fprintf(w, "%s: the rerun took %.0f%% of a clean import (target ≤ 25%%)\n",
				r.row.name, 100*r.last.wall.Seconds()/clean.Seconds())
		}
		maxRSS = max(maxRSS, r.peakRSS())
	}
	if maxRSS > 0 {
		fmt.Fprintf(w, "peak RSS, the largest of all runs: %.0f MiB (target ≤ 64 MiB)\n", maxRSS)
	}
}

// printTrace writes the requests of a kill row's rerun as the proxy saw
// them, and when the importer logged that it was importing.
func printTrace(w io.Writer, r *faultResult) {
	fmt.Fprintf(w, "\nthe rerun of %q, %.2f s: its requests through the proxy (start, duration, status)\n", r.row.name, r.last.wall.Seconds())
	if at, ok := loggedAt(r.last, "importing"); ok {
		fmt.Fprintf(w, "  %7.3f s             log: importing\n", at.Seconds())
	}
	for _, e := range r.trace {
		if e.start >= 0 { // not the killed run's PATCH, which ends late
			fmt.Fprintf(w, "  %7.3f s  %7.3f s  %d %s\n", e.start.Seconds(), e.took.Seconds(), e.status, e.what)
		}
	}
}

// loggedAt is when, after the run began, the importer logged msg.
func loggedAt(run *importRun, msg string) (time.Duration, bool) {
	for l := range bytes.Lines(run.stderr) {
		var line struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal(l, &line) == nil && line.Msg == msg {
			return line.Time.Sub(run.began), true
		}
	}
	return 0, false
}

// mib formats a byte count in MiB.
func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
