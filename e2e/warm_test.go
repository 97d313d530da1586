package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/diskimporter/diskimporter/e2e/containerd"
)

// TestWarmCommands: "diskimporter warm" puts an imported image into a
// real containerd (recorded, unpacked), and reads nothing the second
// time; "diskimporter serve" warms on POST /v1/prefetch, refuses what it
// must with a JSON answer, counts in /metrics, and stops on SIGTERM.
func TestWarmCommands(t *testing.T) {
	needE2E(t)
	if why := containerd.CanRun(); why != "" {
		t.Skip(why)
	}
	t.Parallel()
	ctrd := containerd.StartT(t, containerd.Options{})
	dest, _ := importForExport(t, exportDisk(8<<20, 6<<20))
	env := exportEnv(t, reg)
	env = append(env, "DISKIMPORTER_USERNAME="+reg.Username, "DISKIMPORTER_PASSWORD="+reg.Password)
	node := []string{"--containerd-address", ctrd.Address, "--snapshotter", ctrd.Snapshotter, "--ca-file", reg.CAFile, "--log-format", "json"}

	var first, again struct {
		BytesFetched int64 `json:"bytes_fetched"`
		Recorded     bool  `json:"recorded"`
		Unpacked     bool  `json:"unpacked"`
	}
	warmOnce(t, env, append([]string{dest}, node...), &first)
	if first.BytesFetched == 0 || !first.Recorded || !first.Unpacked {
		t.Errorf("first warm: %+v, want bytes fetched, recorded and unpacked", first)
	}
	warmOnce(t, env, append([]string{dest}, node...), &again)
	if again.BytesFetched != 0 || !again.Recorded || !again.Unpacked {
		t.Errorf("second warm: %+v, want nothing fetched", again)
	}

	t.Run("serve", func(t *testing.T) {
		fresh, _ := importForExport(t, exportDisk(6<<20, 4<<20))
		serveOnce(t, env, node, dest, fresh)
	})
}

// warmOnce runs "diskimporter warm ARGS" and decodes its result into v.
func warmOnce(t *testing.T, env, args []string, v any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, append([]string{"warm"}, args...)...)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("warm: %v\n%s", err, stderr.Bytes())
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("warm's result %q: %v", out, err)
	}
}

// serveOnce runs "diskimporter serve", asks it to prefetch image (present
// already: nothing to fetch), fresh (asynchronously, then synchronously:
// the second finds everything present) and a disallowed one, reads its
// metrics, and stops it with SIGTERM.
func serveOnce(t *testing.T, env, node []string, image, fresh string) {
	addr, pprofAddr := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithTimeout(t.Context(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, append([]string{"serve", "--listen", addr, "--allow-registry", reg.Addr,
		"--pprof-address", pprofAddr}, node...)...)
	cmd.Env = env
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	lines := bufio.NewScanner(stderr)
	for lines.Scan() && !strings.Contains(lines.Text(), `"msg":"serving"`) {
		logs.WriteString(lines.Text() + "\n")
	}
	go io.Copy(&logs, stderr)
	for _, c := range []struct {
		body, status, message string
		code                  int
	}{
		{`{"image":"` + image + `","trace_id":"t1"}`, "success", "0 blobs fetched", 200},
		{`{"image":"` + fresh + `","async":true}`, "accepted", "", 202},
		// Warms of one image take turns: this one waits for the
		// asynchronous one, then finds everything present.
		{`{"image":"` + fresh + `"}`, "success", "0 blobs fetched", 200},
		{`{"image":"other.example/disks/x:1"}`, "failure", "not allowed", 403},
		{`{"image":`, "failure", "not a prefetch request", 400},
	} {
		resp, err := http.Post("http://"+addr+"/v1/prefetch", "application/json", strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		var got struct{ Status, Message string }
		json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if resp.StatusCode != c.code || got.Status != c.status || !strings.Contains(got.Message, c.message) {
			t.Errorf("POST %s: %d %q %q, want %d %q with %q", c.body, resp.StatusCode, got.Status, got.Message, c.code, c.status, c.message)
		}
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(metrics, []byte(`diskimporter_prefetch_requests_total{code="403",status="failure"} 1`)) {
		t.Errorf("metrics lack the refused request:\n%s", metrics)
	}
	if resp, err := http.Get("http://" + pprofAddr + "/debug/pprof/"); err != nil || resp.StatusCode != 200 {
		t.Errorf("--pprof-address: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil || time.Since(start) > 10*time.Second {
		t.Errorf("after SIGTERM: %v after %v\n%s", err, time.Since(start), logs.Bytes())
	}
}
