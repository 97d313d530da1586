package kube

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// TestWarmNodes: the warm-nodes component applies as its README overlay
// uses it; its daemon's pod is admitted in its privileged namespace and
// would be refused in a restricted one (the containerd socket is a
// hostPath); the one-shot Job pinned to a node is admitted too.
func TestWarmNodes(t *testing.T) {
	need(t)
	dir := t.TempDir()
	k := fmt.Sprintf("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\ncomponents: [%q]\n",
		relTo(t, dir, "../../manifests/components/warm-nodes"))
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	objs, err := Kustomize(dir)
	if err != nil {
		t.Fatal(err)
	}
	ns := only[corev1.Namespace](t, objs, "Namespace")
	apply(t, objs[:1], false) // the namespace first: a dry run of the rest needs it
	if objs[0].GetKind() != "Namespace" {
		t.Fatalf("first object %s, want the Namespace", objs[0].GetKind())
	}
	apply(t, objs, true)
	apply(t, objs, false)
	ds := only[appsv1.DaemonSet](t, objs, "DaemonSet")
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "warm-node-a", Namespace: ns.Name, Labels: ds.Spec.Template.Labels},
		Spec: ds.Spec.Template.Spec}
	if _, err := admin(t).CoreV1().Pods(ns.Name).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Errorf("the daemon's pod in %s: %v", ns.Name, err)
	}
	restrictedNamespace(t, "warm-restricted")
	pod.Namespace = "warm-restricted"
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: pod.Spec.ServiceAccountName}}
	if _, err := admin(t).CoreV1().ServiceAccounts(pod.Namespace).Create(t.Context(), sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin(t).CoreV1().Pods(pod.Namespace).Create(t.Context(), pod, metav1.CreateOptions{}); err == nil ||
		!strings.Contains(err.Error(), "hostPath") {
		t.Errorf("the daemon's pod in a restricted namespace: %v, want refused for its hostPath", err)
	}

	b, err := os.ReadFile("../../manifests/components/warm-nodes/warm-job.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var job batchv1.Job
	if err := yaml.UnmarshalStrict(b, &job); err != nil {
		t.Fatal(err)
	}
	job.Spec.Template.Spec.NodeName = "node-a"
	if _, err := admin(t).BatchV1().Jobs(job.Namespace).Create(t.Context(), &job, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
		t.Errorf("the one-shot warm Job: %v", err)
	}
}

// relTo is path relative to dir, as kustomize wants it.
func relTo(t *testing.T, dir, path string) string {
	t.Helper()
	abs, err := filepath.Abs(path)
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(dir, abs)
	if err != nil {
		t.Fatal(err)
	}
	return rel
}
