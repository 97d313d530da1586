package main

import (
	"fmt"
	"io"
	"runtime"
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
	{"peak RSS MiB", "---:"}, {"note", "---"},
}

// printHeader writes what the table needs to be read: when, on what, and
// how the processes are placed; as paragraphs when markdown is set.
func printHeader(w io.Writer, size int64, markdown bool) {
	lines := []string{
		"diskimporter benchmark, " + time.Now().UTC().Format("2006-01-02 15:04 MST"),
		fmt.Sprintf("machine: %d cores (%s), %s/%s, %s; disk %s (%d bytes, disk-like: 1/3 random, 1/3 zeros, 1/3 text)",
			runtime.NumCPU(), cpuModel(), runtime.GOOS, runtime.GOARCH, runtime.Version(), humanSize(size), size),
		fmt.Sprintf("registry: distribution %s over TLS with htpasswd, on core 1; source: plain HTTP from a file, on core 1 (throttled-N: each connection paced to %s)",
			registry.Version, rateString(throttle)),
		"CPU limit: where the client runs: 2cores on cores 0 and 1 (sharing core 1), 1core on core 0, millicores (750m) on core 0 under a cgroup v1 CPU quota",
		"MiB/s: wall clock for the whole push, source to tag (cpu-ceiling: per CPU second); client CPU and peak RSS from the client's rusage",
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
		return []string{r.row, r.limit, "-", "-", "-", "FAILED: " + oneLine(r.err)}
	}
	return []string{r.row, r.limit, fmt.Sprintf("%.0f", r.m.mibps), fmt.Sprintf("%.2f", r.m.cpuPerGiB),
		fmt.Sprintf("%.0f", r.m.rssMiB), r.m.note}
}

// printSummary writes the ratios an issue asks about, from the rows
// measured at 2cores, and diskimporter's largest peak RSS. A ratio whose
// rows are missing or failed is left out.
func printSummary(w io.Writer, results []result, markdown bool) {
	measured := map[cell]*measurement{}
	maxRSS := 0.0
	for _, r := range results {
		if r.err != nil {
			continue
		}
		measured[r.cell] = r.m
		if r.row == "diskimporter" {
			maxRSS = max(maxRSS, r.m.rssMiB)
		}
	}
	rate := func(m *measurement) float64 { return m.mibps }
	cpu := func(m *measurement) float64 { return m.cpuPerGiB }
	var lines []string
	ratio := func(label, a, b string, of func(*measurement) float64) {
		ma, mb := measured[cell{a, twoCores}], measured[cell{b, twoCores}]
		if ma != nil && mb != nil && of(mb) > 0 {
			lines = append(lines, fmt.Sprintf("%s ÷ %s, %s: %.2f", a, b, label, of(ma)/of(mb)))
		}
	}
	ratio("MiB/s", "diskimporter", "put-ceiling", rate)
	ratio("MiB/s", "diskimporter", "gzip-stream-layer", rate)
	ratio("client CPU s/GiB", "diskimporter", "cpu-ceiling", cpu)
	ratio("MiB/s", "throttled-8", "throttled-1", rate)
	ratio("MiB/s", "pull-export-8", "pull-export-1", rate)
	ratio("MiB/s", "pull-export-8", "pull-crane", rate)
	ratio("MiB/s", "pull-export-8", "pull-oras", rate)
	ratio("MiB/s", "pull-export-fast-8", "pull-curl-fast", rate)
	ratio("MiB/s", "pull-export-fast-8", "pull-export-fast-1", rate)
	if maxRSS > 0 {
		lines = append(lines, fmt.Sprintf("diskimporter (default settings) peak RSS, largest of its rows: %.0f MiB", maxRSS))
	}
	if len(lines) == 0 {
		return
	}
	if markdown {
		fmt.Fprintf(w, "\nSummary (ratios of the rows at %s):\n\n- %s\n", twoCores, strings.Join(lines, "\n- "))
		return
	}
	fmt.Fprintf(w, "\nsummary (ratios of the rows at %s):\n  %s\n", twoCores, strings.Join(lines, "\n  "))
}
