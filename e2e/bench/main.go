// Command bench measures diskimporter against the design it replaces and
// against the ceilings of the machine, in one run, and prints one table.
//
//	go run ./e2e/bench                 # 1 GiB, no CPU limit, 750m and 250m
//	go run ./e2e/bench -size 4GiB -limits none
//
// Everything runs on loopback: a real distribution registry (TLS, htpasswd)
// pinned to the second core, an HTTP source serving a generated disk-like
// image from a file (sendfile), and each client as its own process pinned
// to the first core, optionally held to a CPU quota with a cgroup v1 CPU
// group, as a Kubernetes CPU limit holds the Job. Client CPU seconds and
// peak RSS come from the child's rusage.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/diskimporter/diskimporter/e2e/registry"
	"github.com/diskimporter/diskimporter/importer/testdisk"
)

func main() {
	log.SetFlags(0)
	if len(os.Args) > 1 {
		if run, ok := clients[os.Args[1]]; ok {
			if err := run(os.Args[2:]); err != nil {
				log.Fatalf("%s: %v", os.Args[1], err)
			}
			return
		}
	}
	size := flag.String("size", "1GiB", "disk size (KiB, MiB, GiB suffixes)")
	limits := flag.String("limits", "none,750m,250m", "client CPU limits to measure, comma-separated (none, or millicores such as 750m)")
	rowsFlag := flag.String("rows", "diskimporter,diskimporter-http1,gzip-stream-layer,put-ceiling,cpu-ceiling",
		"rows to run, comma-separated; also diskimporter-qcow2, -gz, -xz, -zst: the same disk in those containers")
	flag.StringVar(&profileDir, "profile-dir", "", "save a 2-second CPU profile of each diskimporter row (taken through --pprof-address) into this directory")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	n, err := parseSize(*size)
	if err != nil {
		log.Fatal(err)
	}
	if err := bench(ctx, n, strings.Split(*limits, ","), strings.Split(*rowsFlag, ",")); err != nil {
		log.Fatal(err)
	}
}

// profileDir is where diskimporter rows save a CPU profile; empty: none.
var profileDir string

func parseSize(s string) (int64, error) {
	mult := int64(1)
	for suffix, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if strings.HasSuffix(s, suffix) {
			s, mult = strings.TrimSuffix(s, suffix), m
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive number with an optional KiB/MiB/GiB suffix", s)
	}
	return n * mult, nil
}

// setup is what every row shares.
type setup struct {
	dir       string
	disk      string // path of the generated image
	size      int64
	sha256    string
	sourceURL string
	reg       *registry.Registry
	self      string // this program's binary, for the client subcommands
	importer  string // the diskimporter binary
}

func bench(ctx context.Context, size int64, limits, rows []string) error {
	// This process serves the source; keep it and the registry on the
	// second core, and the measured client alone on the first.
	if runtime.NumCPU() >= 2 {
		if out, err := exec.Command("taskset", "-a", "-p", "-c", "1", strconv.Itoa(os.Getpid())).CombinedOutput(); err != nil {
			log.Printf("taskset of the bench process failed (%v: %s); cores are shared", err, out)
		}
	}
	dir, err := os.MkdirTemp("", "diskimporter-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	s := &setup{dir: dir, size: size}
	if err := s.prepare(ctx); err != nil {
		return err
	}
	defer s.reg.Stop()

	fmt.Printf("diskimporter benchmark, %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Printf("machine: %d cores (%s), %s/%s, %s; disk %s (%d bytes, disk-like: 1/3 random, 1/3 zeros, 1/3 text)\n",
		runtime.NumCPU(), cpuModel(), runtime.GOOS, runtime.GOARCH, runtime.Version(), humanSize(size), size)
	fmt.Printf("registry: distribution %s over TLS with htpasswd, on core 1; source: plain HTTP from a file, on core 1; client: core 0\n\n", registry.Version)

	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "row\tCPU limit\tMiB/s\tclient CPU s/GiB\tpeak RSS MiB\tnote\t")
	for _, limit := range limits {
		for _, row := range rows {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			m, err := s.run(ctx, row, strings.TrimSpace(limit))
			if err != nil {
				fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\tFAILED: %s\t\n", row, limit, oneLine(err))
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.2f\t%.0f\t%s\t\n", row, limit, m.mibps, m.cpuPerGiB, m.rssMiB, m.note)
			fmt.Fprintf(os.Stderr, "done: %s at %s\n", row, limit)
		}
	}
	return tw.Flush()
}

func (s *setup) prepare(ctx context.Context) error {
	s.disk = filepath.Join(s.dir, "disk.img")
	f, err := os.Create(s.disk)
	if err != nil {
		return err
	}
	h := sha256.New()
	buf := make([]byte, 1<<20)
	if _, err := io.CopyBuffer(io.MultiWriter(f, h), testdisk.New(s.size).Reader(), buf); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	s.sha256 = fmt.Sprintf("sha256:%x", h.Sum(nil))

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go http.Serve(ln, http.FileServer(http.Dir(s.dir)))
	s.sourceURL = "http://" + ln.Addr().String() + "/"

	cpus := ""
	if runtime.NumCPU() >= 2 {
		cpus = "1"
	}
	s.reg, err = registry.Start(ctx, registry.Options{CPUs: cpus, Dir: filepath.Join(s.dir, "registry")})
	if err != nil {
		return err
	}

	if s.self, err = os.Executable(); err != nil {
		return err
	}
	s.importer = filepath.Join(s.dir, "diskimporter")
	root, err := repoRoot()
	if err != nil {
		return err
	}
	build := exec.CommandContext(ctx, "go", "build", "-o", s.importer, "./cmd/diskimporter")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building diskimporter: %v\n%s", err, out)
	}
	return nil
}

// measurement is one row's outcome.
type measurement struct {
	mibps, cpuPerGiB, rssMiB float64
	note                     string
}

func (s *setup) run(ctx context.Context, row, limit string) (*measurement, error) {
	repo := fmt.Sprintf("%s/bench/%s-%s:v%d", s.reg.Addr, row, strings.ReplaceAll(limit, "none", "nolimit"), time.Now().UnixNano())
	var argv []string
	file, err := s.sourceFile(row)
	if err != nil {
		return nil, err
	}
	switch {
	case row == "diskimporter" || row == "diskimporter-http1" || sourceRows[row] != "":
		argv = []string{s.importer, "import", "--source", s.sourceURL + file, "--destination", repo,
			"--ca-file", s.reg.CAFile, "--log-format", "json", "--progress-interval", "1h", "--scratch-dir", s.dir}
		if row == "diskimporter-http1" {
			argv = append(argv, "--http1")
		}
		if profileDir != "" {
			addr, err := freeAddr()
			if err != nil {
				return nil, err
			}
			argv = append(argv, "--pprof-address", addr)
			go saveProfile(ctx, addr, filepath.Join(profileDir, row+"-"+limit+".pprof"))
		}
	case row == "gzip-stream-layer":
		argv = []string{s.self, "gzip-stream-layer", s.sourceURL + file, repo, s.reg.CAFile}
	case row == "put-ceiling":
		argv = []string{s.self, "put-ceiling", s.disk, s.sha256, repo, s.reg.CAFile}
	case row == "cpu-ceiling":
		argv = []string{s.self, "cpu-ceiling", s.disk}
	default:
		return nil, fmt.Errorf("unknown row %q", row)
	}
	cmd, cleanup, err := limited(ctx, limit, argv)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	cmd.Env = append(os.Environ(),
		"DISKIMPORTER_USERNAME="+s.reg.Username, "DISKIMPORTER_PASSWORD="+s.reg.Password,
		"HOME="+s.dir)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	took := time.Since(start)
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, lastLine(stderr.String()))
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	gib := float64(s.size) / (1 << 30)
	m := &measurement{
		mibps:     float64(s.size) / (1 << 20) / took.Seconds(),
		cpuPerGiB: cpu / gib,
		rssMiB:    float64(ru.Maxrss) / 1024,
	}
	if row == "cpu-ceiling" {
		// In memory: the rate is the CPU's, not the wall clock's.
		m.mibps = float64(s.size) / (1 << 20) / cpu
		m.note = "sha256 + AES-128-GCM of the bytes, in memory"
	}
	if row == "put-ceiling" {
		m.note = "one PUT of the bytes, digest known, HTTP/1.1"
	}
	if strings.HasPrefix(row, "diskimporter") {
		var res struct {
			DiskSHA256 string `json:"disk_sha256"`
			SizeFrom   string `json:"size_from"`
		}
		if err := json.Unmarshal(out, &res); err != nil {
			return nil, fmt.Errorf("result %q: %w", out, err)
		}
		// A qcow2 is stored as such: its sha256 is the image's.
		if row != "diskimporter-qcow2" && res.DiskSHA256 != s.sha256 {
			return nil, fmt.Errorf("result does not name the disk's sha256: %s", out)
		}
		m.note = "size from " + res.SizeFrom
	}
	return m, nil
}

// limited returns argv as a command pinned to core 0 and, unless limit is
// "none", held to limit millicores by a cgroup v1 CPU group that cleanup
// removes.
func limited(ctx context.Context, limit string, argv []string) (*exec.Cmd, func(), error) {
	pin := []string{}
	if runtime.NumCPU() >= 2 {
		pin = []string{"taskset", "-c", "0"}
	}
	if limit == "none" || limit == "" {
		all := append(pin, argv...)
		return exec.CommandContext(ctx, all[0], all[1:]...), func() {}, nil
	}
	milli, err := strconv.Atoi(strings.TrimSuffix(limit, "m"))
	if err != nil || !strings.HasSuffix(limit, "m") || milli <= 0 {
		return nil, nil, fmt.Errorf("CPU limit %q: want none or millicores such as 750m", limit)
	}
	cg := fmt.Sprintf("/sys/fs/cgroup/cpu/diskimporter-bench-%d-%d", os.Getpid(), time.Now().UnixNano())
	if err := os.Mkdir(cg, 0o755); err != nil {
		return nil, nil, fmt.Errorf("CPU limit needs a writable cgroup v1 cpu controller: %w", err)
	}
	cleanup := func() { os.Remove(cg) }
	if err := os.WriteFile(filepath.Join(cg, "cpu.cfs_quota_us"), []byte(strconv.Itoa(milli*100)), 0o644); err != nil {
		cleanup()
		return nil, nil, err
	}
	// The shell moves itself into the group, then becomes the client: only
	// the client is limited, never this process.
	all := append([]string{"bash", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, cg}, append(pin, argv...)...)
	return exec.CommandContext(ctx, all[0], all[1:]...), cleanup, nil
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// saveProfile fetches a 2-second CPU profile from a diskimporter that is
// starting to serve pprof on addr.
func saveProfile(ctx context.Context, addr, path string) {
	for range 50 {
		time.Sleep(100 * time.Millisecond)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/debug/pprof/profile?seconds=2", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			continue
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode == http.StatusOK {
			if err := os.WriteFile(path, b, 0o644); err != nil {
				log.Printf("saving profile: %v", err)
			}
		}
		return
	}
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run the benchmark from inside the diskimporter repository")
		}
		dir = parent
	}
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func humanSize(n int64) string {
	switch {
	case n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d B", n)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }
