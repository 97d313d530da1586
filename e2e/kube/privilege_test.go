package kube

import (
	"context"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

const (
	// policyDenied is in every refusal of the own-pod-only policy.
	policyDenied = "the diskimporter service account may only"
	// rbacDenied is in every refusal of RBAC.
	rbacDenied = "is forbidden: User \"system:serviceaccount:"
)

// TestLeastPrivilege: the importer's token, bound to its pod, may change
// the diskimporter.io/ annotations of that pod and nothing else: not
// another annotation, a label or a spec field of its pod (RBAC alone
// allows those), not another pod, not a Secret or the Job.
func TestLeastPrivilege(t *testing.T) {
	need(t)
	const ns = "imports-privilege"
	restrictedNamespace(t, ns)
	base, policy := renderImport(t, Overlay{Namespace: ns, NameSuffix: "-p",
		Source: "https://source.example/disk.raw", Destination: "registry.example/disks/x:1"})
	apply(t, append(base, policy...), true)
	apply(t, base, false)
	job := only[batchv1.Job](t, base, "Job")
	sa := job.Spec.Template.Spec.ServiceAccountName
	podA, podB := podOf(t, job, "diskimporter-p-aaaaa"), podOf(t, job, "diskimporter-p-bbbbb")
	tokenA := as(t, podToken(t, ns, sa, podA))

	// RBAC alone lets the token change its pod's spec: the hole the
	// policy closes.
	if err := patchPod(tokenA, podA, `{"spec":{"activeDeadlineSeconds":60}}`, true); err != nil {
		t.Fatalf("without the policy a spec patch was refused (%v): this test would show nothing", err)
	}
	applyPolicy(t, policy, tokenA, podA)

	unbound := as(t, podToken(t, ns, sa, nil))
	for _, c := range []struct {
		name string
		do   func() error
		want string // "" allowed, else in the refusal
	}{
		{"its pod's diskimporter.io/ annotations", func() error {
			return patchPod(tokenA, podA, `{"metadata":{"annotations":{"diskimporter.io/phase":"importing"}}}`, false)
		}, ""},
		{"another annotation of its pod", func() error {
			return patchPod(tokenA, podA, `{"metadata":{"annotations":{"example.com/owner":"me"}}}`, false)
		}, policyDenied + " change annotations under diskimporter.io/"},
		{"a label of its pod", func() error {
			return patchPod(tokenA, podA, `{"metadata":{"labels":{"app.kubernetes.io/name":"other"}}}`, false)
		}, policyDenied + " change metadata.annotations"},
		{"its pod's activeDeadlineSeconds", func() error {
			return patchPod(tokenA, podA, `{"spec":{"activeDeadlineSeconds":60}}`, false)
		}, policyDenied + " change metadata.annotations"},
		{"its pod's image", func() error {
			_, err := tokenA.CoreV1().Pods(ns).Patch(t.Context(), podA.Name, types.JSONPatchType,
				[]byte(`[{"op":"replace","path":"/spec/containers/0/image","value":"evil.example/importer:1"}]`), metav1.PatchOptions{})
			return err
		}, policyDenied + " change metadata.annotations"},
		{"another pod's diskimporter.io/ annotations", func() error {
			return patchPod(tokenA, podB, `{"metadata":{"annotations":{"diskimporter.io/phase":"done"}}}`, false)
		}, policyDenied + " patch the pod its token was issued for"},
		{"a pod with a token bound to no pod", func() error {
			return patchPod(unbound, podA, `{"metadata":{"annotations":{"diskimporter.io/phase":"done"}}}`, false)
		}, policyDenied + " patch the pod its token was issued for"},
		{"its pod's status", func() error {
			_, err := tokenA.CoreV1().Pods(ns).Patch(t.Context(), podA.Name, types.MergePatchType,
				[]byte(`{"status":{"message":"x"}}`), metav1.PatchOptions{}, "status")
			return err
		}, rbacDenied},
		{"reading its pod", func() error {
			_, err := tokenA.CoreV1().Pods(ns).Get(t.Context(), podA.Name, metav1.GetOptions{})
			return err
		}, rbacDenied},
		{"deleting its pod", func() error {
			return tokenA.CoreV1().Pods(ns).Delete(t.Context(), podA.Name, metav1.DeleteOptions{})
		}, rbacDenied},
		{"evicting its pod", func() error {
			return tokenA.CoreV1().Pods(ns).EvictV1(t.Context(), &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: podA.Name, Namespace: ns}})
		}, rbacDenied},
		{"creating a pod", func() error {
			_, err := tokenA.CoreV1().Pods(ns).Create(t.Context(), &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "x"}, Spec: podA.Spec}, metav1.CreateOptions{})
			return err
		}, rbacDenied},
		{"reading the registry Secret", func() error {
			_, err := tokenA.CoreV1().Secrets(ns).Get(t.Context(), job.Spec.Template.Spec.Containers[0].EnvFrom[0].SecretRef.Name, metav1.GetOptions{})
			return err
		}, rbacDenied},
		{"patching the Job", func() error {
			_, err := tokenA.BatchV1().Jobs(ns).Patch(t.Context(), job.Name, types.MergePatchType,
				[]byte(`{"metadata":{"annotations":{"diskimporter.io/checkpoint":"x"}}}`), metav1.PatchOptions{})
			return err
		}, rbacDenied},
	} {
		err := c.do()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want a refusal with %q", c.name, err, c.want)
		}
	}
}

// renderImport renders the manifests with the overlay o, and returns them
// apart from the own-pod-only component's policy and binding.
func renderImport(t *testing.T, o Overlay) (base, policy []*unstructured.Unstructured) {
	t.Helper()
	o.Components = []string{"own-pod-only"}
	objs, err := Render("../../manifests", t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range objs {
		if strings.HasPrefix(obj.GetKind(), "ValidatingAdmissionPolicy") {
			policy = append(policy, obj)
		} else {
			base = append(base, obj)
		}
	}
	if len(policy) != 2 {
		t.Fatalf("the component holds %d objects, want a policy and its binding", len(policy))
	}
	return base, policy
}

// applyPolicy applies the policy objects, removes them when t ends (they
// are cluster-wide), and waits until the API server enforces them: until
// cs may no longer change pod's spec (a dry run, stored nowhere).
func applyPolicy(t *testing.T, policy []*unstructured.Unstructured, cs kubernetes.Interface, pod *corev1.Pod) {
	t.Helper()
	apply(t, policy, false)
	t.Cleanup(func() {
		ar := admin(t).AdmissionregistrationV1()
		for _, o := range policy {
			var err error
			if o.GetKind() == "ValidatingAdmissionPolicy" {
				err = ar.ValidatingAdmissionPolicies().Delete(context.Background(), o.GetName(), metav1.DeleteOptions{})
			} else {
				err = ar.ValidatingAdmissionPolicyBindings().Delete(context.Background(), o.GetName(), metav1.DeleteOptions{})
			}
			if err != nil {
				t.Errorf("deleting %s: %v", o.GetName(), err)
			}
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		err := patchPod(cs, pod, `{"spec":{"activeDeadlineSeconds":30}}`, true)
		if err != nil && strings.Contains(err.Error(), policyDenied) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the policy is not enforced after 30 s: a spec patch answered %v", err)
		case <-tick.C:
		}
	}
}

// patchPod sends a JSON merge patch of pod as cs.
func patchPod(cs kubernetes.Interface, pod *corev1.Pod, patch string, dryRun bool) error {
	opts := metav1.PatchOptions{}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	_, err := cs.CoreV1().Pods(pod.Namespace).Patch(context.Background(), pod.Name, types.MergePatchType, []byte(patch), opts)
	return err
}
