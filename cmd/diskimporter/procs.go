package main

import (
	"os"
	"runtime"
)

// exportProcs is the fewest Ps (GOMAXPROCS) an export runs with. Its
// writes and fsyncs of the output block in the kernel, and a goroutine
// blocked in a system call keeps its P until the runtime's monitor takes
// it back, which can be milliseconds later: with one P (a process pinned
// to one CPU, where Go's default is 1) every other goroutine, the reads
// of the pieces and the hash, stood still meanwhile, and the CPU idled.
// On one pinned core an export of a MinIO store read 458 and 462 MiB/s
// with one P, 502 and 515 with two, crane 514 and 520 (go run ./e2e/bench
// -rows pull-export-fast-8,pull-crane -limits 1core, 2026-12-06). An
// import, whose byte path does not block in the kernel, keeps Go's
// default: there two Ps on one core cost 3–15% more CPU per GiB.
const exportProcs = 2

// atLeastProcs raises GOMAXPROCS to n when Go's default is lower and the
// environment does not set it.
func atLeastProcs(n int) {
	if runtime.GOMAXPROCS(0) < n && os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(n)
	}
}
