package main

import (
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/diskimporter/diskimporter/e2e/registry"
)

// result is one cell's outcome: a measurement or why there is none.
type result struct {
	cell
	m   *measurement
	err error
}

// columns are the table's columns, and their Markdown alignment.
var columns = []struct{ name, align string }{
	{"row", "---"}, {"CPU limit", "---"}, {"MiB/s", "---:"}, {"client CPU s/GiB", "---:"},
	{"peak RSS MiB", "---:"}, {"server CPU s/GiB", "---:"}, {"note", "---"},
}

// printHeader writes what the table needs to be read: when, on what, and
// how the processes are placed; as paragraphs when markdown is set.
func printHeader(w io.Writer, size int64, rounds int, markdown bool) {
	lines := []string{
		"diskimporter benchmark, " + time.Now().UTC().Format("2006-01-02 15:04 MST"),
		fmt.Sprintf("machine: %d cores (%s), %s/%s, %s; disk %s (%d bytes, disk-like: 1/3 random, 1/3 zeros, 1/3 text)",
			runtime.NumCPU(), cpuModel(), runtime.GOOS, runtime.GOARCH, runtime.Version(), humanSize(size), size),
		fmt.Sprintf("registry: distribution %s over TLS with htpasswd, on core 1; source: plain HTTP from a file, on core 1 (throttled-N: each connection paced to %s)",
			registry.Version, rateString(throttle)),
		fmt.Sprintf("pull rows: distribution %s with its s3 driver on MinIO (TLS, on core 1), blob GETs redirected (307) to presigned URLs of the store; -fast, crane, oras, curl: the store itself; pull-export-N, pull-curl: through a pacer, %s per connection; pull-export-direct: the filesystem registry",
			registry.Version, rateString(pullRate)),
		"CPU limit: where the client runs: 2cores on cores 0 and 1 (sharing core 1), 1core on core 0, millicores (750m) on core 0 under a cgroup v1 CPU quota",
		"MiB/s: wall clock for the whole push, source to tag, or pull (cpu-ceiling: per CPU second); client CPU and peak RSS from the client's rusage; server CPU: of the registries, S3 stores, sources and pacer (this process and its other children, from /proc) during the row",
	}
	if rounds > 1 {
		lines = append(lines, fmt.Sprintf("rounds: the plan measured %d times, one round after another; each row is its median round by MiB/s", rounds))
	}
	sep := "\n"
	if markdown {
		sep = "\n\n"
	}
	fmt.Fprint(w, strings.Join(lines, sep)+"\n\n")
}

// printTable writes one line per result, aligned in columns or as a
// Markdown table.
func printTable(w io.Writer, results []result, markdown bool) error {
	if markdown {
		return printMarkdown(w, results)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range columns {
		fmt.Fprintf(tw, "%s\t", c.name)
	}
	fmt.Fprintln(tw)
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t\n", strings.Join(r.fields(), "\t"))
	}
	return tw.Flush()
}

// printMarkdown writes the results as a Markdown table.
func printMarkdown(w io.Writer, results []result) error {
	var names, aligns []string
	for _, c := range columns {
		names, aligns = append(names, c.name), append(aligns, c.align)
	}
	fmt.Fprintf(w, "| %s |\n| %s |\n", strings.Join(names, " | "), strings.Join(aligns, " | "))
	for _, r := range results {
		fields := r.fields()
		for i, f := range fields {
			fields[i] = strings.ReplaceAll(f, "|", `\|`)
		}
		if _, err := fmt.Fprintf(w, "| %s |\n", strings.Join(fields, " | ")); err != nil {
			return err
		}
	}
	return nil
}

// fields are the result's cells in the order of columns.
func (r result) fields() []string {
	if r.err != nil {
		return []string{r.row, r.limit, "-", "-", "-", "-", "FAILED: " + oneLine(r.err)}
	}
	return []string{r.row, r.limit, fmt.Sprintf("%.0f", r.m.mibps), fmt.Sprintf("%.2f", r.m.cpuPerGiB),
		fmt.Sprintf("%.0f", r.m.rssMiB), fmt.Sprintf("%.2f", r.m.serverCPU), r.m.note}
}

// ratioSpec is one line of the summary: the rows a over the sum of the
// rows b, in what of measures, and the target for it, if any.
type ratioSpec struct {
	a      string
	b      []string
	of     string // "MiB/s" or "CPU s/GiB"
	target string
}

// ratios are the summary's lines: the targets of issue 15 first.
var ratios = []ratioSpec{
	{"diskimporter", []string{"put-ceiling", "sha256", "get"}, cpuCol, "≤ 1.15"},
	{"diskimporter", []string{"oras"}, rateCol, "≥ 1.3 at 250m"},
	{"diskimporter", []string{"gzip-stream-layer"}, rateCol, "≥ 2.5 at 250m"},
	{"pull-export-fast-8", []string{"pull-curl-fast"}, rateCol, "≥ 0.9 at 1core"},
	{"pull-export-fast-8", []string{"pull-crane"}, rateCol, "≥ 1 at 1core"},
	{"pull-export-fast-8", []string{"pull-oras"}, rateCol, "≥ 1 at 1core"},
	{"pull-export-8", []string{"pull-export-1"}, rateCol, "≥ 6 at 1core"},
	{"pull-export-fast-8", []string{"pull-curl-fast-sync"}, rateCol, ""},
	{"pull-export-1", []string{"pull-curl"}, rateCol, ""},
	{"pull-export-fast-1", []string{"pull-crane"}, cpuCol, ""},
	{"pull-export-fast-8", []string{"pull-crane"}, cpuCol, ""},
	{"pull-export-fast-8", []string{"pull-export-fast-1"}, rateCol, ""},
	{"diskimporter", []string{"put-ceiling"}, rateCol, ""},
	{"diskimporter", []string{"cpu-ceiling"}, cpuCol, ""},
	{"throttled-8", []string{"throttled-1"}, rateCol, ""},
}

const (
	rateCol = "MiB/s"
	cpuCol  = "client CPU s/GiB"
)

// line is the summary line of r at limit, or "" when a row is missing or
// failed there.
func (r ratioSpec) line(measured map[cell]*measurement, limit string) string {
	of := func(m *measurement) float64 { return m.mibps }
	if r.of == cpuCol {
		of = func(m *measurement) float64 { return m.cpuPerGiB }
	}
	ma := measured[cell{r.a, limit}]
	if ma == nil {
		return ""
	}
	sum := 0.0
	for _, row := range r.b {
		m := measured[cell{row, limit}]
		if m == nil {
			return ""
		}
		sum += of(m)
	}
	if sum <= 0 {
		return ""
	}
	b := strings.Join(r.b, " + ")
	if len(r.b) > 1 {
		b = "(" + b + ")"
	}
	s := fmt.Sprintf("%s: %s ÷ %s, %s: %.2f", limit, r.a, b, r.of, of(ma)/sum)
	if r.target != "" {
		s += " (issue 15: " + r.target + ")"
	}
	return s
}

// printSummary writes the ratios an issue asks about, at each CPU limit
// where their rows were measured, and diskimporter's largest peak RSS.
func printSummary(w io.Writer, results []result, markdown bool) {
	measured := map[cell]*measurement{}
	var limits []string
	maxRSS := 0.0
	for _, r := range results {
		if r.err != nil {
			continue
		}
		measured[r.cell] = r.m
		if !slices.Contains(limits, r.limit) {
			limits = append(limits, r.limit)
		}
		if r.row == "diskimporter" {
			maxRSS = max(maxRSS, r.m.rssMiB)
		}
	}
	var lines []string
	for _, spec := range ratios {
		for _, limit := range limits {
			if l := spec.line(measured, limit); l != "" {
				lines = append(lines, l)
			}
		}
	}
	if maxRSS > 0 {
		lines = append(lines, fmt.Sprintf("diskimporter (default settings) peak RSS, largest of its rows: %.0f MiB", maxRSS))
	}
	if len(lines) == 0 {
		return
	}
	if markdown {
		fmt.Fprintf(w, "\nSummary (ratios of rows at the same CPU limit):\n\n- %s\n", strings.Join(lines, "\n- "))
		return
	}
	fmt.Fprintf(w, "\nsummary (ratios of rows at the same CPU limit):\n  %s\n", strings.Join(lines, "\n  "))
}
