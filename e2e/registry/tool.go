package registry

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Tool returns the path of the command name built by
// "go install module@version", installed into the same cache directory as
// the registry binary (see Binary) as name-version, so that two versions
// never share a file. module is the package path of the command, whose last
// element go install names the binary after; name must be that element.
//
// As for Binary, installation is serialised across processes with an
// flock(2), here on <bin dir>/.install-<name>.lock, and the binary is built
// into a temporary directory and renamed into place. ctx bounds the wait for
// the lock and the build.
func Tool(ctx context.Context, name, module, version string) (string, error) {
	if filepath.Base(module) != name {
		return "", fmt.Errorf("registry: go install %s names its binary %s, not %s", module, filepath.Base(module), name)
	}
	binDir, err := CacheBinDir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(binDir, name+"-"+version)
	if isExecutableFile(bin) {
		return bin, nil
	}
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return "", fmt.Errorf("registry: creating %s: %w", binDir, err)
	}
	unlock, err := lockFile(ctx, filepath.Join(binDir, ".install-"+name+".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	// Someone else may have finished the build while we waited for the lock.
	if isExecutableFile(bin) {
		return bin, nil
	}
	if err := installTool(ctx, binDir, name, module, version, bin); err != nil {
		return "", err
	}
	return bin, nil
}

// installTool runs "go install module@version" into a temporary GOBIN
// inside binDir and renames the binary it built, binDir/name, to bin.
func installTool(ctx context.Context, binDir, name, module, version, bin string) error {
	goTool := "go"
	if goroot := os.Getenv("GOROOT"); goroot != "" {
		if p := filepath.Join(goroot, "bin", "go"); isExecutableFile(p) {
			goTool = p
		}
	}
	tmp, err := os.MkdirTemp(binDir, ".install-")
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	defer os.RemoveAll(tmp)

	ctx, cancel := context.WithTimeout(ctx, installTimeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, goTool, "install", module+"@"+version)
	cmd.Env = append(os.Environ(), "GOBIN="+tmp)
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("registry: go install %s@%s failed after %v: %w\n%s",
			module, version, time.Since(start).Round(time.Second), err, out.Bytes())
	}
	if err := os.Rename(filepath.Join(tmp, name), bin); err != nil {
		return fmt.Errorf("registry: installing %s: %w", name, err)
	}
	return nil
}
