package kube

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// Overlay is what a controller's overlay of manifests/ sets for one import.
type Overlay struct {
	// Namespace and NameSuffix as in a kustomization.
	Namespace, NameSuffix string
	// Source and Destination replace the Job's placeholders.
	Source, Destination string
	// Components are paths of components under manifests/components.
	Components []string
}

// Render writes o as a kustomization in dir beside nothing else, builds it
// against the manifests directory, and returns the objects.
func Render(manifests, dir string, o Overlay) ([]*unstructured.Unstructured, error) {
	abs, err := filepath.Abs(manifests)
	if err != nil {
		return nil, err
	}
	// kustomize takes no absolute path as a resource.
	rel, err := filepath.Rel(dir, abs)
	if err != nil {
		return nil, err
	}
	var k strings.Builder
	fmt.Fprintf(&k, "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: %s\nnameSuffix: %s\nresources: [%q]\n",
		o.Namespace, o.NameSuffix, rel)
	if len(o.Components) > 0 {
		k.WriteString("components:\n")
		for _, c := range o.Components {
			fmt.Fprintf(&k, "  - %q\n", filepath.Join(rel, "components", c))
		}
	}
	fmt.Fprintf(&k, `patches:
  - target: {kind: Job, name: diskimporter}
    patch: |-
      - {op: replace, path: /spec/template/spec/containers/0/env/0/value, value: %q}
      - {op: replace, path: /spec/template/spec/containers/0/env/1/value, value: %q}
`, o.Source, o.Destination)
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k.String()), 0o644); err != nil {
		return nil, err
	}
	return Kustomize(dir)
}

// Kustomize builds the kustomization in dir with kustomize's API (the library
// kubectl's -k uses) and returns the objects.
func Kustomize(dir string) ([]*unstructured.Unstructured, error) {
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	var objs []*unstructured.Unstructured
	for _, r := range m.Resources() {
		fields, err := r.Map()
		if err != nil {
			return nil, err
		}
		objs = append(objs, &unstructured.Unstructured{Object: fields})
	}
	return objs, nil
}
