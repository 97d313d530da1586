package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/diskimporter/diskimporter/importer/testdisk"
)

// jobContainer decodes manifests/job.yaml strictly and returns its
// container.
func jobContainer(t *testing.T) corev1.Container {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "manifests", "job.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	obj, _, err := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer().Decode(b, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	job, ok := obj.(*batchv1.Job)
	if !ok || len(job.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("manifests/job.yaml is not a Job with one container: %T", obj)
	}
	return job.Spec.Template.Spec.Containers[0]
}

// TestJobManifestRunsTheBinary runs the binary with exactly the container
// args and env of manifests/job.yaml, as the kubelet would: the downward
// API fields filled in, the mounts mapped to temporary directories, the
// credentials Secret and the placeholders patched as a kustomize overlay
// would. The termination message must hold the result.
func TestJobManifestRunsTheBinary(t *testing.T) {
	needE2E(t)
	t.Parallel()
	c := jobContainer(t)
	if c.TerminationMessagePath != "/dev/termination-log" {
		t.Fatalf("terminationMessagePath %q", c.TerminationMessagePath)
	}

	// The container's mounts, as directories of this test.
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = t.TempDir()
	}
	caDir, ok := mounts["/etc/diskimporter/ca"]
	if !ok {
		t.Fatal("the Job mounts no registry CA at /etc/diskimporter/ca")
	}
	if err := os.WriteFile(filepath.Join(caDir, "ca.crt"), reg.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	mapPath := func(v string) string {
		for in, out := range mounts {
			if v == in || strings.HasPrefix(v, in+"/") {
				return out + strings.TrimPrefix(v, in)
			}
		}
		return v
	}
	termination := filepath.Join(t.TempDir(), "termination-log")
	repo := newRepo(t)
	overlay := map[string]string{ // what a controller's kustomize patch sets
		"DISKIMPORTER_SOURCE":          src.URL + "/raw8.img",
		"DISKIMPORTER_DESTINATION":     reg.Addr + "/" + repo + ":v1",
		"DISKIMPORTER_PPROF_ADDRESS":   freeAddr(t),
		"DISKIMPORTER_METRICS_ADDRESS": freeAddr(t),
		// Where the checkpoint claim is mounted, here.
		"DISKIMPORTER_CHECKPOINT": filepath.Join(t.TempDir(), "upload.json"),
	}
	fields := map[string]string{"metadata.name": "diskimporter-abcde", "metadata.namespace": "vms"}

	env := []string{"DISKIMPORTER_TERMINATION_LOG=" + termination}
	for _, from := range c.EnvFrom {
		if from.SecretRef == nil {
			t.Fatalf("envFrom %+v: only the credentials Secret is expected", from)
		}
		env = append(env, credsEnv(reg)...) // the Secret's keys, with the test registry's values
	}
	for _, e := range c.Env {
		v := e.Value
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			v = fields[e.ValueFrom.FieldRef.FieldPath]
		case e.ValueFrom != nil:
			t.Fatalf("env %s comes from %+v, which this test cannot provide", e.Name, e.ValueFrom)
		case overlay[e.Name] != "":
			v = overlay[e.Name]
		default:
			v = mapPath(v)
		}
		env = append(env, e.Name+"="+v)
	}

	ctx, cancel := context.WithTimeout(t.Context(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, c.Args...)
	cmd.Env = childEnv(t, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("diskimporter %v with the Job's env: %v\n%s", c.Args, err, stderr.Bytes())
	}
	msg, err := os.ReadFile(termination)
	if err != nil {
		t.Fatalf("no termination message: %v", err)
	}
	if len(msg) > 4096 {
		t.Errorf("termination message is %d bytes, over the kubelet's 4096", len(msg))
	}
	var res result
	if err := json.Unmarshal(msg, &res); err != nil {
		t.Fatalf("termination message is not a result: %v\n%s", err, msg)
	}
	if res.Destination != overlay["DISKIMPORTER_DESTINATION"] || res.Size != rawSize || res.LayerDigest == "" {
		t.Errorf("termination message %+v does not describe the import", res)
	}
	if !bytes.Equal(bytes.TrimSpace(stdout.Bytes()), bytes.TrimSpace(msg)) {
		t.Errorf("stdout %s and termination message %s differ", stdout.Bytes(), msg)
	}
	// The checkpoint was written to the claim and removed on success.
	if _, err := os.Stat(overlay["DISKIMPORTER_CHECKPOINT"]); !os.IsNotExist(err) {
		t.Errorf("the checkpoint file is still there after the import: %v", err)
	}
	if bytes.Contains(stderr.Bytes(), []byte("checkpoint file")) {
		t.Errorf("the checkpoint file was not written as it should:\n%s", stderr.Bytes())
	}
	// Outside a cluster the pod annotations cannot be patched: that is
	// logged, and the import succeeds all the same.
	if !bytes.Contains(stderr.Bytes(), []byte("not reporting progress on the pod")) {
		t.Errorf("no warning about the pod annotations:\n%s", stderr.Bytes())
	}
}

// TestSIGTERMWhileSpooling stops an import whose gzip source is being
// spooled: it must exit within 2 s, non-zero, with the Cancelled reason in
// the termination message, no tag, and no spool left.
func TestSIGTERMWhileSpooling(t *testing.T) {
	needE2E(t)
	t.Parallel()
	disk := make([]byte, 4<<20)
	if _, err := testdisk.New(int64(len(disk))).ReadAt(disk, 0); err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(disk)
	zw.Close()
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := gz.Bytes()
		for off := 0; off < len(body); off += 64 << 10 {
			if _, err := w.Write(body[off:min(off+64<<10, len(body))]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}))
	defer slow.Close()

	scratch := t.TempDir()
	termination := filepath.Join(t.TempDir(), "termination-log")
	repo := newRepo(t)
	args := importArgs(reg, slow.URL+"/disk.img.gz", reg.Addr+"/"+repo+":v1", "--scratch-dir", scratch, "--progress-interval", "100ms")
	cmd := command(t.Context(), childEnv(t, append(credsEnv(reg), "POD_NAME=p", "POD_NAMESPACE=ns",
		"DISKIMPORTER_TERMINATION_LOG="+termination)...), args...)
	stderr := &logSink{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.After(20 * time.Second)
	for !bytes.Contains(stderr.Bytes(), []byte(`"phase":"spooling"`)) {
		select {
		case err := <-exited:
			t.Fatalf("import exited before spooling (%v):\n%s", err, stderr.Bytes())
		case <-deadline:
			t.Fatalf("no spooling progress in 20s:\n%s", stderr.Bytes())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if entries, _ := os.ReadDir(scratch); len(entries) == 0 {
		t.Fatal("spooling, but no spool file in the scratch directory")
	}
	signalled := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("still running 10s after SIGTERM")
	}
	if took := time.Since(signalled); took > 2*time.Second {
		t.Errorf("took %v to exit after SIGTERM, want under 2s", took)
	}
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != exitImportErr {
		t.Errorf("exit %v, want code %d", err, exitImportErr)
	}
	var fail failureResult
	readResultFile(t, termination, &fail)
	if fail.Reason != "Cancelled" {
		t.Errorf("termination message reason %q, want Cancelled (%s)", fail.Reason, fail.Message)
	}
	if entries, _ := os.ReadDir(scratch); len(entries) != 0 {
		t.Errorf("spool left behind: %v", entries)
	}
	checkNoTag(t, reg, repo, "v1")
}
