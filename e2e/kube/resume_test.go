package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/e2e/registry"
	"github.com/diskimporter/diskimporter/importer/testdisk"
	"github.com/diskimporter/diskimporter/layer"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestNewPodResumes: the Job's pod, run as in a cluster (its bound token
// where client-go reads it, the own-pod-only policy enforced), reports its
// progress on its pod and is killed halfway; the Job's next pod finds the
// checkpoint on the claim they share, goes on with the upload where the
// registry stands, reports on its own pod and writes the result to its
// termination message.
func TestNewPodResumes(t *testing.T) {
	need(t)
	const (
		ns       = "imports-resume"
		size     = 64 << 20
		interval = 4 << 20
	)
	restrictedNamespace(t, ns)
	src := newGatedSource(t, size, size/2)
	base, policy := renderImport(t, Overlay{Namespace: ns, NameSuffix: "-r",
		Source: src.url, Destination: reg.Host + "/disks/resume:v1"})
	apply(t, base, false)
	job := only[batchv1.Job](t, base, "Job")
	claim := t.TempDir() // the checkpoint claim both pods mount
	podA := podOf(t, job, "diskimporter-r-aaaaa")
	tokenA := podToken(t, ns, job.Spec.Template.Spec.ServiceAccountName, podA)
	applyPolicy(t, policy, as(t, tokenA), podA)

	first := newPodProcess(t, podA, tokenA, claim, interval)
	first.start(t)
	waitFor(t, "checkpoint past a quarter", first, func() bool {
		return checkpointPast(filepath.Join(claim, "upload.json"), size/4)
	})
	waitFor(t, "progress annotation", first, func() bool { return annotations(t, podA)["diskimporter.io/phase"] != "" })
	_ = syscall.Kill(-first.cmd.Process.Pid, syscall.SIGKILL)
	<-first.done
	src.open()

	podB := podOf(t, job, "diskimporter-r-bbbbb")
	second := newPodProcess(t, podB, podToken(t, ns, job.Spec.Template.Spec.ServiceAccountName, podB), claim, interval)
	second.start(t)
	if <-second.done; second.err != nil {
		t.Fatalf("the second pod's import: %v\n%s", second.err, second.stderr.Bytes())
	}
	var res struct {
		LayerDigest string `json:"layer_digest"`
		Resumes     int    `json:"resumes"`
		ResumedFrom int64  `json:"resumed_from"`
	}
	if err := json.Unmarshal(second.stdout.Bytes(), &res); err != nil {
		t.Fatalf("result %q: %v", second.stdout.Bytes(), err)
	}
	if want := layerDigest(t, size); res.LayerDigest != want || res.Resumes != 1 || res.ResumedFrom < size/4 {
		t.Errorf("result %+v; want layer %s, resumed once from at least %d\n%s", res, want, size/4, second.stderr.Bytes())
	}
	if phase := annotations(t, podB)["diskimporter.io/phase"]; phase != "done" {
		t.Errorf("the second pod's phase annotation is %q, want done", phase)
	}
	if msg, err := os.ReadFile(second.terminationLog); err != nil || !bytes.Contains(msg, []byte(res.LayerDigest)) {
		t.Errorf("termination message %q (%v), want the result", msg, err)
	}
}

// podProcess is the importer run as the container of a pod.
type podProcess struct {
	cmd            *exec.Cmd
	stdout, stderr registry.LockedBuffer
	terminationLog string
	done           chan struct{} // closed when the process has ended
	err            error         // cmd.Wait's, once done is closed
}

// start starts the process.
func (p *podProcess) start(t *testing.T) {
	t.Helper()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
}

// newPodProcess returns the command that runs the pod's container here:
// the binary with the container's arguments and environment, the pod's
// volumes as directories (its checkpoint claim as claim), and the bound
// token and CA where client-go's in-cluster configuration reads them
// (/var/run/secrets/kubernetes.io/serviceaccount, bind-mounted in a mount
// namespace of its own).
func newPodProcess(t *testing.T, pod *corev1.Pod, token, claim string, interval int) *podProcess {
	t.Helper()
	dir := t.TempDir()
	sa := filepath.Join(dir, "serviceaccount")
	ca, err := os.ReadFile(cluster.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"token": []byte(token), "ca.crt": ca, "namespace": []byte(pod.Namespace)} {
		writeFile(t, filepath.Join(sa, name), data)
	}
	c := pod.Spec.Containers[0]
	p := &podProcess{terminationLog: filepath.Join(dir, "termination-log"), done: make(chan struct{})}
	env := append(hostEnv(), "HOME="+dir,
		"KUBERNETES_SERVICE_HOST=127.0.0.1", "KUBERNETES_SERVICE_PORT="+strconv.Itoa(cluster.Port),
		"DISKIMPORTER_USERNAME="+reg.Username, "DISKIMPORTER_PASSWORD="+reg.Password,
		"DISKIMPORTER_TERMINATION_LOG="+p.terminationLog,
		"DISKIMPORTER_CHECKPOINT_INTERVAL="+strconv.Itoa(interval), "DISKIMPORTER_PROGRESS_INTERVAL=200ms")
	env = append(env, containerEnv(t, pod, c, volumeDirs(t, c, dir, claim))...)
	script := `mount -t tmpfs tmpfs /run && mkdir -p /run/secrets/kubernetes.io/serviceaccount && ` +
		`mount --bind "$0" /run/secrets/kubernetes.io/serviceaccount && exec "$@"`
	args := append([]string{"-m", "--propagation", "private", "sh", "-c", script, sa, binPath}, c.Args...)
	p.cmd = exec.CommandContext(t.Context(), "unshare", args...)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p.cmd.WaitDelay = 5 * time.Second
	return p
}

// volumeDirs maps each mount path of c to a directory here: the checkpoint
// claim to claim, the registry CA to one holding the test registry's, the
// others to empty directories under dir.
func volumeDirs(t *testing.T, c corev1.Container, dir, claim string) map[string]string {
	t.Helper()
	dirs := map[string]string{}
	for _, m := range c.VolumeMounts {
		d := filepath.Join(dir, "volumes", m.Name)
		switch m.Name {
		case "checkpoint":
			d = claim
		case "registry-ca":
			writeFile(t, filepath.Join(d, "ca.crt"), reg.CAPEM)
		}
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		dirs[m.MountPath] = d
	}
	return dirs
}

// containerEnv is c's environment as the kubelet would set it, with paths
// under a volume mount moved to its directory in dirs. The pprof and
// metrics listeners are left off: the pod's fixed ports are the host's
// here.
func containerEnv(t *testing.T, pod *corev1.Pod, c corev1.Container, dirs map[string]string) []string {
	t.Helper()
	var env []string
	for _, e := range c.Env {
		v := e.Value
		switch {
		case e.Name == "DISKIMPORTER_PPROF_ADDRESS", e.Name == "DISKIMPORTER_METRICS_ADDRESS":
			continue
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
			v = pod.Name
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
			v = pod.Namespace
		case e.ValueFrom != nil:
			t.Fatalf("env %s: %+v is not known to this test", e.Name, e.ValueFrom)
		}
		for mount, d := range dirs {
			if v == mount || strings.HasPrefix(v, mount+"/") {
				v = d + strings.TrimPrefix(v, mount)
				break
			}
		}
		env = append(env, e.Name+"="+v)
	}
	return env
}

// hostEnv is this process's environment without what would configure the
// importer or client-go from outside the test.
func hostEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "DISKIMPORTER_") && !strings.HasPrefix(k, "KUBERNETES_") && k != "HOME" && k != "DOCKER_CONFIG" &&
			!strings.HasSuffix(strings.ToUpper(k), "_PROXY") {
			env = append(env, kv)
		}
	}
	return env
}

// waitFor waits until done reports true, or p exits, or 60 s pass.
func waitFor(t *testing.T, what string, p *podProcess, done func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !done() {
		select {
		case <-ctx.Done():
			t.Fatalf("no %s after 60 s:\n%s", what, p.stderr.Bytes())
		case <-p.done:
			t.Fatalf("the import ended before %s:\n%s", what, p.stderr.Bytes())
		case <-tick.C:
		}
	}
}

// checkpointPast reports whether the checkpoint file at path holds a
// checkpoint at or past offset.
func checkpointPast(path string, offset int64) bool {
	var rec struct{ Checkpoints []layer.Checkpoint }
	b, err := os.ReadFile(path)
	if err != nil || json.Unmarshal(b, &rec) != nil {
		return false
	}
	n := len(rec.Checkpoints)
	return n > 0 && rec.Checkpoints[n-1].Offset >= offset
}

// annotations are the pod's annotations as the API server has them.
func annotations(t *testing.T, pod *corev1.Pod) map[string]string {
	t.Helper()
	got, err := admin(t).CoreV1().Pods(pod.Namespace).Get(t.Context(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return got.Annotations
}

// gatedSource serves a generated disk over HTTP and holds every read past
// gate until open is called.
type gatedSource struct {
	url      string
	disk     *testdisk.Disk
	gate     int64
	opened   chan struct{}
	openOnce sync.Once
}

func newGatedSource(t *testing.T, size, gate int64) *gatedSource {
	s := &gatedSource{disk: testdisk.New(size), gate: gate, opened: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"gated-disk"`)
		http.ServeContent(w, r, "disk.raw", time.Unix(0, 0), io.NewSectionReader(s, 0, size))
	}))
	t.Cleanup(func() { s.open(); srv.Close() })
	s.url = srv.URL + "/disk.raw"
	return s
}

// ReadAt reads the disk, waiting for open before anything past the gate.
func (s *gatedSource) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > s.gate {
		<-s.opened
	}
	return s.disk.ReadAt(p, off)
}

func (s *gatedSource) open() { s.openOnce.Do(func() { close(s.opened) }) }

// layerDigest is the digest of the layer a clean import of the generated
// disk of size bytes makes.
func layerDigest(t *testing.T, size int64) string {
	t.Helper()
	d, err := layer.DigestOf(testdisk.New(size).Reader(), size)
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
