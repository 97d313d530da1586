package kube

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/diskimporter/diskimporter/e2e/registry"
)

const (
	// Version is the Kubernetes release whose kube-apiserver Build builds.
	Version = "v1.34.4"
	// stagingVersion is the version of k8s.io/api, k8s.io/apimachinery
	// and the other staging modules released with Version.
	stagingVersion = "v0.34.4"
	// binaryName is the cached binary's name in the cache directory.
	binaryName = "kube-apiserver-" + Version
)

// versionFlags set the version the binary reports, as Kubernetes' own
// build does; without them it says v0.0.0-master.
const versionFlags = "-X k8s.io/component-base/version.gitVersion=" + Version +
	" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34"

// ErrNotBuilt is returned by Binary when the API server has not been built
// yet; `go run ./e2e/setup` builds it.
var ErrNotBuilt = errors.New("kube-apiserver " + Version + " is not built: run `go run ./e2e/setup` (about 12 minutes on 2 cores, once; .ci/run does)")

// Binary returns the cached kube-apiserver, or ErrNotBuilt.
func Binary() (string, error) {
	dir, err := registry.CacheBinDir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, binaryName)
	if fi, err := os.Stat(bin); err != nil || !fi.Mode().IsRegular() {
		return "", ErrNotBuilt
	}
	return bin, nil
}

// Build builds kube-apiserver Version into the cache directory, unless it
// is there, and returns its path. k8s.io/kubernetes is not meant to be
// required as a module: its go.mod replaces its 31 staging modules
// (k8s.io/api, k8s.io/apimachinery, …) with directories of its own
// repository. So Build writes a throwaway module of its own (never the
// project's, whose client-go is newer) that requires it and replaces each
// of those with its released version, and builds the command there. go's
// output goes to log.
func Build(ctx context.Context, log io.Writer) (string, error) {
	if bin, err := Binary(); err == nil {
		return bin, nil
	}
	binDir, err := registry.CacheBinDir()
	if err != nil {
		return "", err
	}
	work := filepath.Join(filepath.Dir(binDir), "kube-apiserver-build")
	if err := os.MkdirAll(work, 0o755); err != nil {
		return "", err
	}
	staging, err := stagingModules(ctx, work)
	if err != nil {
		return "", err
	}
	if err := writeModule(work, staging); err != nil {
		return "", err
	}
	tmp := filepath.Join(binDir, "."+binaryName+".tmp")
	steps := [][]string{
		{"mod", "tidy"},
		{"build", "-trimpath", "-ldflags", versionFlags, "-o", tmp, "k8s.io/kubernetes/cmd/kube-apiserver"},
	}
	for _, args := range steps {
		if err := goTool(ctx, work, log, args...); err != nil {
			return "", err
		}
	}
	bin := filepath.Join(binDir, binaryName)
	return bin, os.Rename(tmp, bin)
}

// stagingModules returns the modules k8s.io/kubernetes Version replaces
// with its staging directories, read from its go.mod.
func stagingModules(ctx context.Context, work string) ([]string, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", "k8s.io/kubernetes@"+Version)
	cmd.Dir, cmd.Stdout, cmd.Stderr = work, &out, os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go mod download k8s.io/kubernetes@%s: %w", Version, err)
	}
	var info struct{ GoMod string }
	if err := json.Unmarshal(out.Bytes(), &info); err != nil {
		return nil, err
	}
	f, err := os.Open(info.GoMod)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mods []string
	for s := bufio.NewScanner(f); s.Scan(); {
		fields := strings.Fields(s.Text())
		if len(fields) == 3 && fields[1] == "=>" && strings.HasPrefix(fields[2], "./staging/") {
			mods = append(mods, fields[0])
		}
	}
	if len(mods) == 0 {
		return nil, fmt.Errorf("%s replaces no staging module", info.GoMod)
	}
	return mods, nil
}

// writeModule writes the throwaway module's go.mod and the file that
// imports the command.
func writeModule(work string, staging []string) error {
	var mod strings.Builder
	fmt.Fprintf(&mod, "module kubeapiserverbuild\n\ngo 1.24\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n", Version)
	for _, m := range staging {
		fmt.Fprintf(&mod, "\t%s => %s %s\n", m, m, stagingVersion)
	}
	mod.WriteString(")\n")
	if err := os.WriteFile(filepath.Join(work, "go.mod"), []byte(mod.String()), 0o644); err != nil {
		return err
	}
	src := "//go:build tools\n\npackage kubeapiserverbuild\n\nimport _ \"k8s.io/kubernetes/cmd/kube-apiserver\"\n"
	return os.WriteFile(filepath.Join(work, "tools.go"), []byte(src), 0o644)
}

// goTool runs the go command in dir, its output to log.
func goTool(ctx context.Context, dir string, log io.Writer, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, log, log
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GOWORK=off")
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s in %s: %w", strings.Join(args, " "), dir, err)
	}
	return nil
}
