package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is the unit of the CPU times in /proc/PID/stat (USER_HZ,
// 100 on every Linux the benchmark runs on).
const clockTicks = 100

// serverTicks returns the CPU time, in clock ticks, of this process (the
// sources, the pacer) and of each of its children (the registries and
// their stores; a client too while it runs), by pid. The servers' CPU
// during a row is the difference of two of these taken around it: a
// client is in neither, since it starts after the first and is reaped
// before the second. Nil where /proc cannot be read.
func serverTicks() map[int]int64 {
	self := os.Getpid()
	ticks := map[int]int64{}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range dirs {
		pid, err := strconv.Atoi(filepath.Base(dir))
		if err != nil {
			continue
		}
		ppid, t, ok := procTicks(dir)
		if ok && (pid == self || ppid == self) {
			ticks[pid] = t
		}
	}
	return ticks
}

// procTicks reads a process's parent and user+system CPU ticks from
// /proc/PID/stat.
func procTicks(dir string) (ppid int, ticks int64, ok bool) {
	b, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return 0, 0, false
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return 0, 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return ppid, utime + stime, true
}

// serverSeconds is the CPU seconds the processes of before used until
// after.
func serverSeconds(before, after map[int]int64) float64 {
	var d int64
	for pid, t := range after {
		if t0, ok := before[pid]; ok {
			d += t - t0
		}
	}
	return float64(d) / clockTicks
}
