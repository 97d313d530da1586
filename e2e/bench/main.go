// Command bench measures diskimporter against the design it replaces, other
// tools (crane, oras) and the ceilings of the machine, in one run, and
// prints one table.
//
//	go run ./e2e/bench                 # 1 GiB, the default plan (below)
//	go run ./e2e/bench -markdown       # the same, as a Markdown table
//	go run ./e2e/bench -rounds 3       # the plan three times over, each row its median round
//	go run ./e2e/bench -size 4GiB -limits 1core -rows diskimporter,put-ceiling
//	go run ./e2e/bench -faults         # the fault table instead (faults.go)
//	go run ./e2e/bench -warm           # node warming against containerd's fetch (warm.go)
//
// Everything runs on loopback: a real distribution registry (TLS, htpasswd)
// pinned to the second core, an HTTP source serving a generated disk-like
// image from a file (sendfile), a second source on the same file that paces
// each connection to -throttle bytes/s, and each client as its own process.
// The client's CPU placement (a row's "CPU limit") is 2cores (both cores,
// sharing the second with the registry), 1core (pinned to the first core),
// or millicores such as 750m: the first core, held to that quota by a
// cgroup v1 CPU group, as a Kubernetes CPU limit holds the Job. Client CPU
// seconds and peak RSS come from the child's rusage.
//
// The pull rows read the disk back out of distribution with its s3 storage
// driver on a real S3 store (MinIO over TLS, also on the second core),
// whose blob GETs answer 307 to presigned URLs: unthrottled, the store
// itself; throttled (pull-export-N, pull-curl), a pacer before it
// (pull.go). The table's server CPU column is what the registries, stores,
// sources and pacer spent during each row. Rows sha256 and get are the
// parts of an import's work besides the upload (put-ceiling), each alone:
// the summary sets the import's CPU against their sum at each limit.
//
// Without -rows and -limits it runs every row but the pull rows at 2cores;
// diskimporter, diskimporter-http2, gzip-stream-layer, oras, put-ceiling,
// sha256 and get at 1core, 750m and 250m; and the pull rows at 1core. With
// either flag it runs the cross product of the two lists, as in
//
//	go run ./e2e/bench -rows diskimporter,put-ceiling,sha256,get,oras,gzip-stream-layer -limits 250m,1core
//	go run ./e2e/bench -rows pull-export-fast-8,pull-curl-fast,pull-crane,pull-oras,pull-export-1,pull-export-8 -limits 1core -profile-dir /tmp/prof
package main

import (
	"cmp"
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
	"slices"
	"strconv"
	"strings"
	"syscall"
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
	limits := flag.String("limits", "",
		"client CPU placements, comma-separated: 2cores (not pinned), 1core (pinned to core 0; also none), or millicores on core 0 such as 750m; "+
			"when only -rows is given: "+strings.Join(defaultLimits, ","))
	rowsFlag := flag.String("rows", "",
		"rows, comma-separated, of: "+strings.Join(knownRows(), ", ")+
			" (diskimporter-qcow2, -gz, -xz, -zst import the same disk in those containers); when only -limits is given: "+strings.Join(defaultRows, ","))
	rounds := flag.Int("rounds", 1, "measure the whole plan this many times, one round after another, and print each cell's median round by MiB/s: a slow minute of a shared machine then moves a row less")
	markdown := flag.Bool("markdown", false, "print the table as Markdown, the header lines as text above it")
	warmRows := flag.Bool("warm", false, "print the warm table instead: containerd's own fetch of the imported image against diskimporter warm, on a registry on MinIO, unthrottled and throttled (-pull-throttle); needs root and containerd")
	faults := flag.Bool("faults", false, "print the fault table instead: upload faults (dropped PATCH, SIGKILL and rerun, changed source, forgotten upload, wrong offsets) against a clean import; -rows and -limits do not apply")
	flag.Float64Var(&pullRate, "pull-throttle", 40e6, "bytes per second each connection to the throttled object store of the pull rows is paced to")
	flag.Float64Var(&throttle, "throttle", 12.5e6, "bytes per second each connection to the throttled source (rows throttled-N) is paced to")
	flag.StringVar(&profileDir, "profile-dir", "", "save a CPU profile of each diskimporter row, import and export (pull-export-*), taken through --pprof-address, into this directory as ROW-LIMIT.pprof")
	flag.IntVar(&profileSeconds, "profile-seconds", 2, "length of the -profile-dir profiles, from when the client serves pprof: shorter than the row, or there is none")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: go run ./e2e/bench [flags]\n\n"+
			"Without -rows and -limits: every row but the pull rows at 2cores, %s at %s, and the pull rows at %s.\n"+
			"With either: every row given under every limit given.\n\n", strings.Join(limitedRows, ", "), strings.Join(limitedLimits, ", "), oneCore)
		flag.PrintDefaults()
	}
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	n, err := parseSize(*size)
	if err != nil {
		log.Fatal(err)
	}
	if throttle <= 0 {
		log.Fatalf("-throttle %g: want a positive number of bytes per second", throttle)
	}
	if profileDir != "" {
		if err := os.MkdirAll(profileDir, 0o755); err != nil {
			log.Fatal(err)
		}
	}
	if *faults {
		if err := runFaults(ctx, n); err != nil {
			log.Fatal(err)
		}
		return
	}
	if *warmRows {
		if err := benchWarm(ctx, n); err != nil {
			log.Fatal(err)
		}
		return
	}
	cells := defaultPlan()
	if given("rows") || given("limits") {
		rows, lims := defaultRows, defaultLimits
		if given("rows") {
			rows = strings.Split(*rowsFlag, ",")
		}
		if given("limits") {
			lims = strings.Split(*limits, ",")
		}
		if cells, err = crossPlan(rows, lims); err != nil {
			log.Fatal(err)
		}
	}
	if *rounds < 1 {
		log.Fatalf("-rounds %d: want 1 or more", *rounds)
	}
	if err := bench(ctx, n, cells, *rounds, *markdown); err != nil {
		log.Fatal(err)
	}
}

// median is the round of rs whose MiB/s is the median of those that
// succeeded (the lower one of the middle two), or the first failure when
// none did.
func median(rs []result) result {
	var ok []result
	for _, r := range rs {
		if r.err == nil {
			ok = append(ok, r)
		}
	}
	if len(ok) == 0 {
		return rs[0]
	}
	slices.SortStableFunc(ok, func(a, b result) int { return cmp.Compare(a.m.mibps, b.m.mibps) })
	return ok[(len(ok)-1)/2]
}

// given reports whether the flag name was set on the command line.
func given(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

var (
	// profileDir is where diskimporter rows save a CPU profile; empty: none.
	profileDir string
	// profileSeconds is how long each of those profiles is.
	profileSeconds int
	// throttle is the rate in bytes per second of each connection to the
	// throttled source.
	throttle float64
)

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
	dir          string
	disk         string // path of the generated image
	size         int64
	sha256       string
	layerDigest  string // of the layer every import of disk.img must report
	sourceURL    string
	throttledURL string // the same directory, each connection paced to throttle
	reg          *registry.Registry
	dockerConfig string                 // path of a Docker config.json with the registry's credentials
	pulls        map[string]*pullSource // the registries of the pull rows, by store kind, once used
	pageCacheUp  bool                   // warmPageCache has run
	stops        []func()               // stop what the pull rows started
	serverCPUs   string                 // where the registries run: "1", or "" on one core
	self         string                 // this program's binary, for the client subcommands
	importer     string                 // the diskimporter binary
}

// bench measures every cell, the whole plan rounds times over, one round
// after another, and prints each cell's median round.
func bench(ctx context.Context, size int64, cells []cell, rounds int, markdown bool) error {
	s, cleanup, err := newSetup(ctx, size)
	defer cleanup()
	if err != nil {
		return err
	}

	printHeader(os.Stdout, size, rounds, markdown)
	samples := make([][]result, len(cells))
	for round := 1; round <= rounds; round++ {
		for i, c := range cells {
			if ctx.Err() != nil {
				break
			}
			m, err := s.run(ctx, c.row, c.limit)
			samples[i] = append(samples[i], result{cell: c, m: m, err: err})
			if err != nil {
				fmt.Fprintf(os.Stderr, "FAILED: %s at %s, round %d: %s\n", c.row, c.limit, round, oneLine(err))
			} else {
				fmt.Fprintf(os.Stderr, "done: %s at %s, round %d of %d\n", c.row, c.limit, round, rounds)
			}
		}
	}
	var results []result
	for _, rs := range samples {
		if len(rs) > 0 {
			results = append(results, median(rs))
		}
	}
	if err := printTable(os.Stdout, results, markdown); err != nil {
		return err
	}
	printSummary(os.Stdout, results, markdown)
	return ctx.Err()
}

// newSetup prepares what every row shares, for a disk of size bytes;
// cleanup stops the registry and removes the files, also after an error.
func newSetup(ctx context.Context, size int64) (s *setup, cleanup func(), err error) {
	// This process serves the source; keep it and the registry on the
	// second core, and the measured client alone on the first (but at
	// 2cores, where it may use both).
	if runtime.NumCPU() >= 2 {
		if out, err := exec.Command("taskset", "-a", "-p", "-c", "1", strconv.Itoa(os.Getpid())).CombinedOutput(); err != nil {
			log.Printf("taskset of the bench process failed (%v: %s); cores are shared", err, out)
		}
	}
	dir, err := os.MkdirTemp("", "diskimporter-bench-")
	if err != nil {
		return nil, func() {}, err
	}
	s = &setup{dir: dir, size: size}
	cleanup = func() {
		for _, stop := range s.stops {
			stop()
		}
		if s.reg != nil {
			s.reg.Stop()
		}
		os.RemoveAll(dir)
	}
	return s, cleanup, s.prepare(ctx)
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

	if s.sourceURL, err = serve(s.dir, 0); err != nil {
		return err
	}
	if s.throttledURL, err = serve(s.dir, throttle); err != nil {
		return err
	}

	if runtime.NumCPU() >= 2 {
		s.serverCPUs = "1"
	}
	s.reg, err = registry.Start(ctx, registry.Options{CPUs: s.serverCPUs, Dir: filepath.Join(s.dir, "registry")})
	if err != nil {
		return err
	}
	if err := s.writeDockerConfig(); err != nil {
		return err
	}

	if s.self, err = os.Executable(); err != nil {
		return err
	}
	if err := s.expectLayerDigest(); err != nil {
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

// serve serves dir over plain HTTP on a loopback port, each connection
// paced to rate bytes per second unless rate is 0, and returns its URL.
// http.FileServer answers Range requests and sends Accept-Ranges and
// Last-Modified.
func serve(dir string, rate float64) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	url := "http://" + ln.Addr().String() + "/"
	if rate > 0 {
		ln = throttledListener{Listener: ln, rate: rate}
	}
	go http.Serve(ln, http.FileServer(http.Dir(dir)))
	return url, nil
}

// measurement is one row's outcome.
type measurement struct {
	mibps, cpuPerGiB, rssMiB float64
	serverCPU                float64 // CPU s/GiB of the registries, stores, sources and pacer
	note                     string
}

// client is how one row runs.
type client struct {
	argv []string
	dir  string   // working directory; empty: this process's
	env  []string // added to the environment
	note string   // the row's note
	// check, when set, validates what the client printed on stdout and
	// returns the row's note.
	check func(stdout []byte) (string, error)
}

// importerFlags are the rows that import disk.img with diskimporter, and
// the flags each adds to the defaults. The throttled-N rows read the
// throttled source.
var importerFlags = map[string][]string{
	"diskimporter":       nil,
	"diskimporter-1conn": {"--connections", "1"},
	"diskimporter-http2": {"--http1=false"},
	"throttled-1":        {"--connections", "1"},
	"throttled-4":        {"--connections", "4"},
	"throttled-8":        {"--connections", "8"},
}

// isImporterRow reports whether row runs diskimporter.
func isImporterRow(row string) bool {
	_, ok := importerFlags[row]
	return ok || sourceRows[row] != ""
}

func (s *setup) run(ctx context.Context, row, limit string) (*measurement, error) {
	// A repository of its own for every measurement: oras and crane
	// skip a blob the repository already holds, which would make a second
	// round of theirs free.
	repo := fmt.Sprintf("%s/bench/%s-%s-%d:v1", s.reg.Addr, row, limit, time.Now().UnixNano())
	c, err := s.client(ctx, row, limit, repo)
	if err != nil {
		return nil, err
	}
	cmd, cleanup, err := limited(ctx, limit, c.argv)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(),
		"DISKIMPORTER_USERNAME="+s.reg.Username, "DISKIMPORTER_PASSWORD="+s.reg.Password,
		"HOME="+s.dir)
	cmd.Env = append(cmd.Env, c.env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	servers := serverTicks()
	start := time.Now()
	out, err := cmd.Output()
	took := time.Since(start)
	serverCPU := serverSeconds(servers, serverTicks())
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, lastLine(stderr.String()))
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	gib := float64(s.size) / (1 << 30)
	m := &measurement{
		mibps:     float64(s.size) / (1 << 20) / took.Seconds(),
		cpuPerGiB: cpu / gib,
		serverCPU: serverCPU / gib,
		rssMiB:    float64(ru.Maxrss) / 1024,
		note:      c.note,
	}
	if row == "cpu-ceiling" {
		// In memory: the rate is the CPU's, not the wall clock's.
		m.mibps = float64(s.size) / (1 << 20) / cpu
	}
	if c.check != nil {
		if m.note, err = c.check(out); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// client returns how row runs, pushing to repo. Whatever it needs first
// (a source file, a tool) is made here, before the row is timed.
func (s *setup) client(ctx context.Context, row, limit, repo string) (*client, error) {
	file, err := s.sourceFile(row)
	if err != nil {
		return nil, err
	}
	switch {
	case isImporterRow(row):
		return s.importerClient(ctx, row, limit, file, repo)
	case row == "gzip-stream-layer":
		return &client{argv: []string{s.self, "gzip-stream-layer", s.sourceURL + file, repo, s.reg.CAFile},
			note: "go-containerregistry stream.NewLayer, reads the URL"}, nil
	case row == "put-ceiling":
		return &client{argv: []string{s.self, "put-ceiling", s.disk, s.sha256, repo, s.reg.CAFile},
			note: "one PUT of the bytes, digest known, HTTP/1.1"}, nil
	case row == "cpu-ceiling":
		return &client{argv: []string{s.self, "cpu-ceiling", s.disk},
			note: "sha256 + AES-128-GCM of the bytes, in memory"}, nil
	case row == "sha256":
		return &client{argv: []string{s.self, "sha256", s.disk}, check: s.checkSHA256}, nil
	case row == "get":
		return &client{argv: []string{s.self, "get", s.sourceURL + file}, check: s.checkGot}, nil
	case pullRows[row] != "":
		return s.pullClient(ctx, row, limit)
	case row == "crane":
		return s.craneClient(ctx, repo)
	case row == "oras":
		return s.orasClient(ctx, repo)
	}
	return nil, fmt.Errorf("unknown row %q", row)
}

// importerClient runs diskimporter on file with the row's flags, and
// checks that the result names the layer digest of disk.img: a compressed
// raw disk is stored as disk.img again; only a qcow2 is stored as such, in
// a layer of its own.
func (s *setup) importerClient(ctx context.Context, row, limit, file, repo string) (*client, error) {
	source, note := s.sourceURL, ""
	if strings.HasPrefix(row, "throttled-") {
		source, note = s.throttledURL, "source "+rateString(throttle)+" per connection; "
	}
	if flags := importerFlags[row]; len(flags) > 0 {
		note += strings.Join(flags, " ") + "; "
	}
	argv := []string{s.importer, "import", "--source", source + file, "--destination", repo,
		"--ca-file", s.reg.CAFile, "--log-format", "json", "--progress-interval", "1h", "--scratch-dir", s.dir}
	argv = append(argv, importerFlags[row]...)
	prof, err := profileArgs(ctx, row, limit)
	if err != nil {
		return nil, err
	}
	argv = append(argv, prof...)
	check := func(out []byte) (string, error) {
		var res struct {
			LayerDigest string `json:"layer_digest"`
			SizeFrom    string `json:"size_from"`
		}
		if err := json.Unmarshal(out, &res); err != nil {
			return "", fmt.Errorf("result %q: %w", out, err)
		}
		if row != "diskimporter-qcow2" && res.LayerDigest != s.layerDigest {
			return "", fmt.Errorf("result's layer_digest is not %s: %s", s.layerDigest, out)
		}
		return note + "size from " + res.SizeFrom, nil
	}
	return &client{argv: argv, check: check}, nil
}

// limited returns argv as a command placed as limit says: on cores 0 and 1
// for 2cores (this process is pinned to core 1, and a child inherits
// that), else pinned to core 0 and, unless limit is 1core (or none), held
// to limit millicores by a cgroup v1 CPU group that cleanup removes.
func limited(ctx context.Context, limit string, argv []string) (*exec.Cmd, func(), error) {
	pin := []string{}
	if runtime.NumCPU() >= 2 {
		cpus := "0"
		if limit == twoCores {
			cpus = "0,1"
		}
		pin = []string{"taskset", "-c", cpus}
	}
	if limit == twoCores || limit == oneCore || limit == "none" || limit == "" {
		all := append(pin, argv...)
		return exec.CommandContext(ctx, all[0], all[1:]...), func() {}, nil
	}
	milli, err := strconv.Atoi(strings.TrimSuffix(limit, "m"))
	if err != nil || !strings.HasSuffix(limit, "m") || milli <= 0 {
		return nil, nil, fmt.Errorf("CPU limit %q: want 2cores, 1core (or none), or millicores such as 750m", limit)
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

// profileArgs are the flags that make a diskimporter row serve pprof, and
// start saving its CPU profile into profileDir as ROW-LIMIT.pprof; none
// without -profile-dir.
func profileArgs(ctx context.Context, row, limit string) ([]string, error) {
	if profileDir == "" {
		return nil, nil
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	go saveProfile(ctx, addr, filepath.Join(profileDir, row+"-"+limit+".pprof"))
	return []string{"--pprof-address", addr}, nil
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// saveProfile fetches a CPU profile of profileSeconds from a diskimporter
// that is starting to serve pprof on addr, and says so when it could not:
// a client that ends before the profile does leaves none.
func saveProfile(ctx context.Context, addr, path string) {
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, profileSeconds)
	var err error
	for range 50 {
		time.Sleep(100 * time.Millisecond)
		var b []byte
		if b, err = getProfile(ctx, url); err == nil {
			if err := os.WriteFile(path, b, 0o644); err != nil {
				log.Printf("saving profile: %v", err)
			}
			return
		}
	}
	log.Printf("no profile %s (the client ends before -profile-seconds %d?): %v", filepath.Base(path), profileSeconds, err)
}

func getProfile(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %s", url, resp.Status)
	}
	return b, err
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
