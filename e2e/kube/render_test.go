package kube

import (
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
)

// TestRender: an overlay with a name suffix and the own-pod-only component
// renders (no API server needed); the policy and its binding stay
// cluster-scoped and the binding names the renamed policy.
func TestRender(t *testing.T) {
	_, policy := renderImport(t, Overlay{Namespace: "imports", NameSuffix: "-x",
		Source: "https://source.example/disk.raw", Destination: "registry.example/disks/x:1"})
	vap := only[admissionregistrationv1.ValidatingAdmissionPolicy](t, policy, "ValidatingAdmissionPolicy")
	binding := only[admissionregistrationv1.ValidatingAdmissionPolicyBinding](t, policy, "ValidatingAdmissionPolicyBinding")
	if vap.Namespace != "" || binding.Namespace != "" {
		t.Errorf("namespaces %q and %q on cluster-scoped objects", vap.Namespace, binding.Namespace)
	}
	if binding.Spec.PolicyName != vap.Name || vap.Name != "diskimporter-own-pod-only-x" {
		t.Errorf("binding names %q, policy is %q", binding.Spec.PolicyName, vap.Name)
	}
	if len(binding.Spec.ValidationActions) != 1 || binding.Spec.ValidationActions[0] != admissionregistrationv1.Deny {
		t.Errorf("validation actions %v, want [Deny]", binding.Spec.ValidationActions)
	}
}
