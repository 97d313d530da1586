package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// cell is one row measured under one CPU placement.
type cell struct {
	row, limit string
}

// The CPU placements of a client (the -limits values). The registry and
// this process stay on core 1 under all of them.
const (
	// twoCores leaves the client free to use both cores, sharing core 1
	// with the registry and the source.
	twoCores = "2cores"
	// oneCore pins the client to core 0; "none" is its old name.
	oneCore = "1core"
)

var (
	// allRows are the rows the default plan runs with the client on both
	// cores, in the order they are printed.
	allRows = []string{
		"diskimporter", "diskimporter-1conn", "diskimporter-http2", "gzip-stream-layer",
		"crane", "oras", "put-ceiling", "sha256", "get", "cpu-ceiling",
		"throttled-1", "throttled-4", "throttled-8",
	}
	// pullPlanRows are the pull rows, which the default plan runs at 1core
	// only: with both cores, a client of many connections takes CPU from
	// the store it reads, which flatters it.
	pullPlanRows = []string{
		"pull-curl", "pull-export-1", "pull-export-4", "pull-export-8", "pull-export-16",
		"pull-export-fast-1", "pull-export-fast-8", "pull-curl-fast", "pull-curl-fast-sync", "pull-crane", "pull-oras",
		"pull-export-direct",
	}
	// limitedRows are the rows the default plan runs under each
	// single-core placement: the designs compared, the parts of an
	// import's work (put-ceiling, sha256, get), and the transport's
	// ceiling.
	limitedRows = []string{"diskimporter", "diskimporter-http2", "gzip-stream-layer", "oras", "put-ceiling", "sha256", "get"}
	// limitedLimits are the single-core placements of the default plan.
	limitedLimits = []string{oneCore, "750m", "250m"}

	// defaultRows and defaultLimits stand in for whichever of -rows and
	// -limits is not given when the other is.
	defaultRows   = []string{"diskimporter", "diskimporter-http2", "gzip-stream-layer", "put-ceiling", "sha256", "get", "cpu-ceiling"}
	defaultLimits = limitedLimits
)

// defaultPlan is what a run without -rows and -limits measures: every row
// but the pull rows with the client on both cores, limitedRows under each
// single-core placement, and the pull rows at 1core. The pull rows come
// last: the MinIO stores they start stay up, and their background work
// on core 1 would otherwise weigh on the registry of the rows after them.
func defaultPlan() []cell {
	var cells []cell
	for _, row := range allRows {
		cells = append(cells, cell{row, twoCores})
	}
	for _, limit := range limitedLimits {
		for _, row := range limitedRows {
			cells = append(cells, cell{row, limit})
		}
	}
	for _, row := range pullPlanRows {
		cells = append(cells, cell{row, oneCore})
	}
	return cells
}

// crossPlan measures every row under every limit, limit by limit, after
// checking that both lists name known rows and placements.
func crossPlan(rows, limits []string) ([]cell, error) {
	var cells []cell
	for _, l := range limits {
		limit, err := normLimit(strings.TrimSpace(l))
		if err != nil {
			return nil, err
		}
		for _, r := range rows {
			row := strings.TrimSpace(r)
			if !knownRow(row) {
				return nil, fmt.Errorf("unknown row %q (known: %s)", row, strings.Join(knownRows(), ", "))
			}
			cells = append(cells, cell{row, limit})
		}
	}
	return cells, nil
}

// normLimit checks a -limits value and returns its canonical name: "none"
// becomes 1core.
func normLimit(limit string) (string, error) {
	switch limit {
	case twoCores, oneCore:
		return limit, nil
	case "none", "":
		return oneCore, nil
	}
	milli, err := strconv.Atoi(strings.TrimSuffix(limit, "m"))
	if err != nil || !strings.HasSuffix(limit, "m") || milli <= 0 {
		return "", fmt.Errorf("CPU limit %q: want 2cores, 1core (or none), or millicores such as 750m", limit)
	}
	return limit, nil
}

// knownRows lists every row the benchmark can run: those of the default
// plan in its order, then the other import containers.
func knownRows() []string {
	rows := slices.Concat(allRows, pullPlanRows)
	n := len(rows)
	for row := range sourceRows {
		rows = append(rows, row)
	}
	slices.Sort(rows[n:])
	return rows
}

func knownRow(row string) bool { return slices.Contains(knownRows(), row) }
