package importer_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLibraryDependencies keeps the library usable without Kubernetes:
// neither importer nor layer may depend on client-go or on the CLI.
func TestLibraryDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/diskimporter/diskimporter/importer/...",
		"github.com/diskimporter/diskimporter/layer").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "k8s.io/") || strings.HasPrefix(pkg, "github.com/diskimporter/diskimporter/cmd/") ||
			strings.HasPrefix(pkg, "github.com/diskimporter/diskimporter/e2e") {
			t.Errorf("the library depends on %s", pkg)
		}
	}
}
