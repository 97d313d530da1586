// Package manifests holds the Kubernetes manifests (a kustomize base) that
// run diskimporter as a one-shot Job, and tests that decode them strictly
// with client-go's scheme and check their security settings. It exports
// nothing.
package manifests
