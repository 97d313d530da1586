package main

import (
	"context"
	"io"
	"path/filepath"
	"runtime"
	"testing"
)

// TestAtLeastProcs: GOMAXPROCS is raised from Go's default of 1 (one
// CPU) to 2, never lowered, and left as the environment sets it.
func TestAtLeastProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for _, c := range []struct {
		procs int
		env   string
		want  int
	}{
		{1, "", 2},
		{2, "", 2},
		{3, "", 3},
		{1, "1", 1},
	} {
		t.Setenv("GOMAXPROCS", c.env)
		runtime.GOMAXPROCS(c.procs)
		atLeastProcs(2)
		if got := runtime.GOMAXPROCS(0); got != c.want {
			t.Errorf("GOMAXPROCS %d, environment %q: GOMAXPROCS %d after atLeastProcs(2); want %d",
				c.procs, c.env, got, c.want)
		}
	}
}

// TestExportProcs: an export on one CPU runs with two Ps (exportProcs);
// an import keeps Go's default.
func TestExportProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	t.Setenv("GOMAXPROCS", "")
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // each stops once its flags are checked
	out := filepath.Join(t.TempDir(), "disk.img")
	for _, c := range []struct {
		args []string
		want int
	}{
		{[]string{"export", "127.0.0.1:1/x:1", out, "-q"}, exportProcs},
		{[]string{"import", "http://127.0.0.1:1/disk.img", "127.0.0.1:1/x:1", "-q"}, 1},
	} {
		runtime.GOMAXPROCS(1)
		run(ctx, c.args, io.Discard, io.Discard)
		if got := runtime.GOMAXPROCS(0); got != c.want {
			t.Errorf("%s on one P: GOMAXPROCS %d after it, want %d", c.args[0], got, c.want)
		}
	}
}
