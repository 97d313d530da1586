package registry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

const (
	// Module is the Go package path of the registry command that Binary installs.
	Module = "github.com/distribution/distribution/v3/cmd/registry"
	// Version is the distribution release that Binary installs.
	Version = "v3.1.2"

	// BinaryEnv names the environment variable that, when set, points to a
	// registry binary to use instead of the cached/installed one.
	BinaryEnv = "DISKIMPORTER_REGISTRY_BIN"

	// lockWait bounds how long Binary waits for another process that holds
	// the install lock (a cold build takes a few minutes on a small machine).
	lockWait = 20 * time.Minute
	// installTimeout bounds a single "go install" run.
	installTimeout = 20 * time.Minute
)

// Binary returns the path of a CNCF distribution registry executable.
//
// The lookup order is:
//  1. $DISKIMPORTER_REGISTRY_BIN, if set (it must name an existing file);
//  2. <repo root>/.cache/bin/registry, if it exists, where the repo root is
//     the nearest directory at or above the working directory that contains
//     go.mod (if there is none, the user cache directory is used instead:
//     $XDG_CACHE_HOME/diskimporter/bin);
//  3. otherwise it runs
//     "go install github.com/distribution/distribution/v3/cmd/registry@v3.1.2"
//     with GOBIN set to that directory and returns the result.
//
// Installation is serialised across processes with an flock(2) on
// <bin dir>/.install.lock, so parallel test binaries build it only once. The
// binary is built into a temporary directory and renamed into place, so other
// processes never observe a half-written file. ctx bounds the wait for the lock
// and the build.
func Binary(ctx context.Context) (string, error) {
	if p := os.Getenv(BinaryEnv); p != "" {
		if !isExecutableFile(p) {
			return "", fmt.Errorf("registry: $%s=%q is not an executable file", BinaryEnv, p)
		}
		return p, nil
	}
	binDir, err := CacheBinDir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(binDir, "registry")
	if isExecutableFile(bin) {
		return bin, nil
	}
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return "", fmt.Errorf("registry: creating %s: %w", binDir, err)
	}
	unlock, err := lockFile(ctx, filepath.Join(binDir, ".install.lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	// Someone else may have finished the build while we waited for the lock.
	if isExecutableFile(bin) {
		return bin, nil
	}
	if err := install(ctx, binDir); err != nil {
		return "", err
	}
	return bin, nil
}

// CacheBinDir returns <repo root>/.cache/bin, or a per-user cache directory when
// the working directory is not inside a Go module.
func CacheBinDir() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("registry: %w", err)
	}
	for dir := wd; ; {
		if fi, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil && fi.Mode().IsRegular() {
			return filepath.Join(dir, ".cache", "bin"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("registry: no go.mod above %s and no user cache dir: %w", wd, err)
	}
	return filepath.Join(cache, "diskimporter", "bin"), nil
}

func isExecutableFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Size() > 0 && fi.Mode().Perm()&0o111 != 0
}

// lockFile takes an exclusive flock on path, polling so that ctx (and
// lockWait) bound the wait. The returned function releases the lock.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("registry: opening install lock: %w", err)
	}
	deadline := time.Now().Add(lockWait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				_ = f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("registry: locking %s: %w", path, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("registry: timed out after %v waiting for install lock %s", lockWait, path)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("registry: waiting for install lock %s: %w", path, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// install runs "go install Module@Version" into a temporary GOBIN inside
// binDir and renames the result to binDir/registry.
func install(ctx context.Context, binDir string) error {
	return installTool(ctx, binDir, "registry", Module, Version, filepath.Join(binDir, "registry"))
}
