package manifests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

// strictDecoder decodes YAML or JSON into client-go's types and fails on an
// unknown or duplicated field.
var strictDecoder = serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

const kustomizationFile = "kustomization.yaml"

// The uid and gid the image runs as (Dockerfile USER 107:107), KubeVirt's
// qemu user.
const qemuID = 107

// object is one decoded YAML document.
type object struct {
	file string
	doc  int
	obj  runtime.Object
}

func (o object) String() string {
	return o.file + " document " + strconv.Itoa(o.doc+1)
}

// yamlFiles returns the names of manifests/*.yaml.
func yamlFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no *.yaml in manifests/")
	}
	return files
}

// documents splits a YAML stream on its --- separators and drops the
// documents holding only comments or blank lines.
func documents(data []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		j, err := utilyaml.ToJSON(doc)
		if err != nil {
			return nil, err
		}
		if s := strings.TrimSpace(string(j)); s == "null" || s == "" {
			continue
		}
		docs = append(docs, doc)
	}
}

// loadObjects decodes, strictly, every document of every manifest but the
// kustomization.
func loadObjects(t *testing.T) []object {
	t.Helper()
	var objs []object
	for _, file := range yamlFiles(t) {
		if file == kustomizationFile {
			continue
		}
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		docs, err := documents(data)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if len(docs) == 0 {
			t.Errorf("%s: no document", file)
		}
		for i, doc := range docs {
			obj, gvk, err := strictDecoder.Decode(doc, nil, nil)
			if err != nil {
				t.Errorf("%s document %d: %v", file, i+1, err)
				continue
			}
			o := object{file: file, doc: i, obj: obj}
			m, err := meta.Accessor(obj)
			if err != nil {
				t.Errorf("%s: %s has no metadata: %v", o, gvk, err)
				continue
			}
			if m.GetName() == "" {
				t.Errorf("%s: %s has no name", o, gvk.Kind)
			}
			if m.GetNamespace() != "" {
				t.Errorf("%s: %s %s sets namespace %q; a kustomize base leaves it to the overlay or kubectl -n", o, gvk.Kind, m.GetName(), m.GetNamespace())
			}
			objs = append(objs, o)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return objs
}

// all returns the objects of type T.
func all[T runtime.Object](objs []object) []T {
	var out []T
	for _, o := range objs {
		if v, ok := o.obj.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// only returns the one object of type T.
func only[T runtime.Object](t *testing.T, objs []object) T {
	t.Helper()
	found := all[T](objs)
	if len(found) != 1 {
		var zero T
		t.Fatalf("%d objects of type %T in the manifests, want 1", len(found), zero)
	}
	return found[0]
}

func TestStrictDecoderRejectsUnknownFields(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field":   "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\nautomountToken: false\n",
		"misplaced field": "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: x\nspec:\n  restartPolicy: Never\n",
		"duplicate field": "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\n  name: y\n",
	} {
		if _, _, err := strictDecoder.Decode([]byte(doc), nil, nil); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}

func TestManifestsDecodeStrictly(t *testing.T) {
	objs := loadObjects(t)
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.obj.GetObjectKind().GroupVersionKind().Kind]++
	}
	for _, kind := range []string{"ServiceAccount", "Role", "RoleBinding", "Secret", "ConfigMap", "PersistentVolumeClaim", "Job"} {
		if kinds[kind] != 1 {
			t.Errorf("%d %s objects, want 1", kinds[kind], kind)
		}
	}
	for _, kind := range []string{"ClusterRole", "ClusterRoleBinding", "Service", "Ingress"} {
		if kinds[kind] != 0 {
			t.Errorf("%d %s objects, want none", kinds[kind], kind)
		}
	}
}

// kustomization is the part of a kustomize Kustomization these manifests
// use; any other field fails the test, so that a new one is looked at here.
type kustomization struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace"`
	Labels     []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors"`
		IncludeTemplates bool              `json:"includeTemplates"`
	} `json:"labels"`
	Resources []string `json:"resources"`
	Images    []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
		Digest  string `json:"digest"`
	} `json:"images"`
}

func loadKustomization(t *testing.T) kustomization {
	t.Helper()
	data, err := os.ReadFile(kustomizationFile)
	if err != nil {
		t.Fatal(err)
	}
	j, err := utilyaml.ToJSON(data)
	if err != nil {
		t.Fatalf("%s: %v", kustomizationFile, err)
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	var k kustomization
	if err := dec.Decode(&k); err != nil {
		t.Fatalf("%s: %v", kustomizationFile, err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("%s: apiVersion %q kind %q, want kustomize.config.k8s.io/v1beta1 Kustomization", kustomizationFile, k.APIVersion, k.Kind)
	}
	return k
}

func TestKustomization(t *testing.T) {
	k := loadKustomization(t)
	listed := map[string]bool{}
	for _, r := range k.Resources {
		if listed[r] {
			t.Errorf("resource %s listed twice", r)
		}
		listed[r] = true
		if path.IsAbs(r) || strings.Contains(r, "..") || strings.Contains(r, "://") {
			t.Errorf("resource %q is not a file of this directory", r)
			continue
		}
		if fi, err := os.Stat(filepath.FromSlash(r)); err != nil {
			t.Errorf("resource %s: %v", r, err)
		} else if !fi.Mode().IsRegular() {
			t.Errorf("resource %s is not a file", r)
		}
	}
	for _, f := range yamlFiles(t) {
		if f != kustomizationFile && !listed[f] {
			t.Errorf("%s is not listed in the resources of %s", f, kustomizationFile)
		}
	}
	if k.Namespace != "" {
		t.Errorf("the base sets namespace %q; leave it to overlays", k.Namespace)
	}
	for _, l := range k.Labels {
		if l.IncludeSelectors {
			t.Error("labels with includeSelectors: a Job's selector is generated and immutable")
		}
	}

	// The images override must name the Job's image, or it does nothing.
	job := only[*batchv1.Job](t, loadObjects(t))
	image := job.Spec.Template.Spec.Containers[0].Image
	name, _, _ := strings.Cut(image, ":")
	var found bool
	for _, img := range k.Images {
		found = found || img.Name == name
	}
	if !found {
		t.Errorf("no images entry for the Job's image %q", image)
	}
}

func TestJobSettings(t *testing.T) {
	objs := loadObjects(t)
	job := only[*batchv1.Job](t, objs)

	if job.Spec.BackoffLimit == nil || *job.Spec.BackoffLimit < 0 || *job.Spec.BackoffLimit > 6 {
		t.Errorf("backoffLimit %v, want set, 0 to 6", job.Spec.BackoffLimit)
	}
	if job.Spec.ActiveDeadlineSeconds == nil || *job.Spec.ActiveDeadlineSeconds <= 0 {
		t.Errorf("activeDeadlineSeconds %v, want set and positive", job.Spec.ActiveDeadlineSeconds)
	}
	if job.Spec.TTLSecondsAfterFinished == nil || *job.Spec.TTLSecondsAfterFinished <= 0 {
		t.Errorf("ttlSecondsAfterFinished %v, want set and positive", job.Spec.TTLSecondsAfterFinished)
	}
	if job.Spec.Selector != nil || job.Spec.ManualSelector != nil {
		t.Error("the Job sets its own selector")
	}

	pod := job.Spec.Template.Spec
	if pod.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("restartPolicy %q, want Never", pod.RestartPolicy)
	}
	sa := only[*corev1.ServiceAccount](t, objs)
	if pod.ServiceAccountName != sa.Name {
		t.Errorf("serviceAccountName %q, want %q", pod.ServiceAccountName, sa.Name)
	}
	if pod.AutomountServiceAccountToken == nil || !*pod.AutomountServiceAccountToken {
		t.Error("automountServiceAccountToken is not true on the pod; the progress patch needs the token")
	}
	if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Error("the ServiceAccount automounts its token for every pod; only the Job's pod asks for it")
	}
	if pod.HostNetwork || pod.HostPID || pod.HostIPC {
		t.Error("the pod shares a host namespace")
	}

	psc := pod.SecurityContext
	if psc == nil {
		t.Fatal("no pod securityContext")
	}
	if psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Error("pod runAsNonRoot is not true")
	}
	for name, id := range map[string]*int64{"runAsUser": psc.RunAsUser, "runAsGroup": psc.RunAsGroup, "fsGroup": psc.FSGroup} {
		if id == nil || *id != qemuID {
			t.Errorf("pod %s %v, want %d", name, id, qemuID)
		}
	}
	if psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod seccompProfile %v, want RuntimeDefault", psc.SeccompProfile)
	}

	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
		if v.HostPath != nil {
			t.Errorf("volume %s is a hostPath", v.Name)
		}
		if v.EmptyDir != nil && v.EmptyDir.SizeLimit == nil {
			t.Errorf("emptyDir %s has no sizeLimit", v.Name)
		}
	}

	if len(pod.InitContainers) != 0 || len(pod.EphemeralContainers) != 0 {
		t.Error("init or ephemeral containers; the checks below cover containers only")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	checkContainerSecurity(t, c)

	if len(c.Command) != 0 || !slices.Equal(c.Args, []string{"import"}) {
		t.Errorf("command %q args %q, want the image's entrypoint with args [import]", c.Command, c.Args)
	}
	if c.TerminationMessagePath != "/dev/termination-log" || c.TerminationMessagePolicy != corev1.TerminationMessageFallbackToLogsOnError {
		t.Errorf("termination message %q %q, want /dev/termination-log FallbackToLogsOnError", c.TerminationMessagePath, c.TerminationMessagePolicy)
	}

	// Resources: requests and limits for CPU and memory, requests within limits.
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, okReq := c.Resources.Requests[r]
		lim, okLim := c.Resources.Limits[r]
		if !okReq || !okLim {
			t.Errorf("%s: request set %v, limit set %v; want both", r, okReq, okLim)
			continue
		}
		if req.Cmp(lim) > 0 {
			t.Errorf("%s request %s over its limit %s", r, req.String(), lim.String())
		}
	}

	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		if _, dup := env[e.Name]; dup {
			t.Errorf("env %s set twice", e.Name)
		}
		env[e.Name] = e
	}
	value := func(name string) string {
		e, ok := env[name]
		if !ok {
			t.Errorf("env %s not set", name)
		}
		return e.Value
	}

	// The overlay patches the source and destination by index.
	if len(c.Env) < 2 || c.Env[0].Name != "DISKIMPORTER_SOURCE" || c.Env[1].Name != "DISKIMPORTER_DESTINATION" {
		t.Error("env does not start with DISKIMPORTER_SOURCE, DISKIMPORTER_DESTINATION, which kustomization.yaml patches by index")
	}
	for _, name := range []string{"DISKIMPORTER_SOURCE", "DISKIMPORTER_DESTINATION"} {
		if value(name) == "" {
			t.Errorf("%s has no placeholder value", name)
		}
	}
	if v := value("DISKIMPORTER_LOG_FORMAT"); v != "json" {
		t.Errorf("DISKIMPORTER_LOG_FORMAT %q, want json", v)
	}

	// Downward API: the pod to annotate.
	for name, field := range map[string]string{"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"} {
		e, ok := env[name]
		if !ok || e.Value != "" || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != field {
			t.Errorf("env %s %+v, want valueFrom fieldRef %s", name, e, field)
		}
	}

	// No credential in plain env or args: only through the Secret.
	for _, name := range []string{"DISKIMPORTER_USERNAME", "DISKIMPORTER_PASSWORD"} {
		if _, ok := env[name]; ok {
			t.Errorf("%s set in the Job; it belongs in the Secret", name)
		}
	}
	for _, a := range c.Args {
		if strings.Contains(a, "password") {
			t.Errorf("argument %q", a)
		}
	}
	secret := only[*corev1.Secret](t, objs)
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].SecretRef == nil || c.EnvFrom[0].SecretRef.Name != secret.Name || c.EnvFrom[0].Prefix != "" {
		t.Errorf("envFrom %+v, want the secretRef %s without prefix", c.EnvFrom, secret.Name)
	}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range secret.StringData {
			yield(k)
		}
		for k := range secret.Data {
			yield(k)
		}
	})
	if !slices.Equal(keys, []string{"DISKIMPORTER_PASSWORD", "DISKIMPORTER_USERNAME"}) {
		t.Errorf("secret keys %q, want DISKIMPORTER_PASSWORD and DISKIMPORTER_USERNAME", keys)
	}
	if secret.Annotations["diskimporter.io/example"] != "true" {
		t.Error("the example Secret is not annotated diskimporter.io/example: \"true\"")
	}

	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
		if _, ok := volumes[m.Name]; !ok {
			t.Errorf("mount %s of unknown volume %s", m.MountPath, m.Name)
		}
	}

	// The registry CA: a read-only ConfigMap mount holding the file
	// DISKIMPORTER_CA_FILE names.
	caFile := value("DISKIMPORTER_CA_FILE")
	caMount, ok := mounts[path.Dir(caFile)]
	switch {
	case !ok:
		t.Errorf("DISKIMPORTER_CA_FILE %q is not in a mounted directory", caFile)
	case !caMount.ReadOnly:
		t.Errorf("the registry CA mount %s is not read-only", caMount.MountPath)
	case volumes[caMount.Name].ConfigMap == nil:
		t.Errorf("the registry CA volume %s is not a ConfigMap", caMount.Name)
	default:
		cm := only[*corev1.ConfigMap](t, objs)
		src := volumes[caMount.Name].ConfigMap
		if src.Name != cm.Name {
			t.Errorf("registry CA volume uses ConfigMap %q, want %q", src.Name, cm.Name)
		}
		key := path.Base(caFile)
		for _, item := range src.Items {
			if item.Path == key {
				key = item.Key
			}
		}
		if !strings.HasPrefix(cm.Data[key], "-----BEGIN CERTIFICATE-----") {
			t.Errorf("ConfigMap %s key %s does not hold a PEM certificate (placeholder)", cm.Name, key)
		}
	}

	// Writable places under the read-only root: size-limited emptyDirs.
	scratch := value("DISKIMPORTER_SCRATCH_DIR")
	for _, dir := range []string{scratch, "/tmp"} {
		m, ok := mounts[dir]
		if !ok {
			t.Errorf("%s is not mounted", dir)
			continue
		}
		if v := volumes[m.Name]; v.EmptyDir == nil || v.EmptyDir.SizeLimit == nil || v.EmptyDir.SizeLimit.Sign() <= 0 {
			t.Errorf("%s is not a size-limited emptyDir", dir)
		}
		if m.ReadOnly {
			t.Errorf("%s is mounted read-only", dir)
		}
	}

	// pprof: a named port, bound to loopback, exposed by no Service.
	var pprofPort int32
	for _, p := range c.Ports {
		if p.HostPort != 0 {
			t.Errorf("port %s has hostPort %d", p.Name, p.HostPort)
		}
		if p.Name == "pprof" {
			pprofPort = p.ContainerPort
		}
	}
	if pprofPort == 0 {
		t.Error("no container port named pprof")
	}
	host, port, err := net.SplitHostPort(value("DISKIMPORTER_PPROF_ADDRESS"))
	if err != nil {
		t.Errorf("DISKIMPORTER_PPROF_ADDRESS: %v", err)
	} else {
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			t.Errorf("pprof listens on %q, want a loopback address (reached with kubectl port-forward)", host)
		}
		if port != strconv.Itoa(int(pprofPort)) {
			t.Errorf("pprof listens on port %s, the pprof containerPort is %d", port, pprofPort)
		}
	}
	for _, svc := range all[*corev1.Service](objs) {
		for _, p := range svc.Spec.Ports {
			if p.TargetPort.String() == "pprof" || p.TargetPort.IntValue() == int(pprofPort) || p.Port == pprofPort {
				t.Errorf("Service %s exposes the pprof port", svc.Name)
			}
		}
	}

	// Metrics: a named port the scraper finds the pod by, listened on by
	// every interface (the scraper connects from outside the pod).
	var metricsPort int32
	names := map[string]bool{}
	for _, p := range c.Ports {
		if names[p.Name] {
			t.Errorf("two container ports named %s", p.Name)
		}
		names[p.Name] = true
		if p.Name == "metrics" {
			metricsPort = p.ContainerPort
			if p.Protocol != corev1.ProtocolTCP {
				t.Errorf("metrics port protocol %s, want TCP", p.Protocol)
			}
		}
	}
	if metricsPort == 0 {
		t.Error("no container port named metrics")
	}
	if metricsPort == pprofPort {
		t.Errorf("metrics and pprof share port %d", metricsPort)
	}
	host, port, err = net.SplitHostPort(value("DISKIMPORTER_METRICS_ADDRESS"))
	if err != nil {
		t.Errorf("DISKIMPORTER_METRICS_ADDRESS: %v", err)
	} else {
		if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
			t.Errorf("metrics listen on %q, want every interface (empty host, 0.0.0.0 or ::) for a scraper outside the pod", host)
		}
		if port != strconv.Itoa(int(metricsPort)) {
			t.Errorf("metrics listen on port %s, the metrics containerPort is %d", port, metricsPort)
		}
	}
}

// checkContainerSecurity checks c's securityContext and that it does not
// undo the pod's.
func checkContainerSecurity(t *testing.T, c corev1.Container) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil {
		t.Fatalf("container %s has no securityContext", c.Name)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("container %s: allowPrivilegeEscalation is not false", c.Name)
	}
	if sc.Privileged == nil || *sc.Privileged {
		t.Errorf("container %s: privileged is not false", c.Name)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("container %s: readOnlyRootFilesystem is not true", c.Name)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("container %s: capabilities %+v, want drop [ALL] and no add", c.Name, sc.Capabilities)
	}
	if sc.RunAsNonRoot != nil && !*sc.RunAsNonRoot {
		t.Errorf("container %s: runAsNonRoot false", c.Name)
	}
	for name, id := range map[string]*int64{"runAsUser": sc.RunAsUser, "runAsGroup": sc.RunAsGroup} {
		if id != nil && *id != qemuID {
			t.Errorf("container %s: %s %d, want the pod's %d", c.Name, name, *id, qemuID)
		}
	}
	if sc.SeccompProfile != nil && sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("container %s: seccompProfile %v", c.Name, sc.SeccompProfile.Type)
	}
	if sc.ProcMount != nil && *sc.ProcMount != corev1.DefaultProcMount {
		t.Errorf("container %s: procMount %v", c.Name, *sc.ProcMount)
	}
}

func TestRoleLeastPrivilege(t *testing.T) {
	objs := loadObjects(t)
	role := only[*rbacv1.Role](t, objs)
	allowedVerbs := []string{"patch", "get"}
	if len(role.Rules) == 0 {
		t.Fatal("the Role grants nothing; the progress patch needs patch on pods")
	}
	var canPatch bool
	for i, r := range role.Rules {
		if !slices.Equal(r.APIGroups, []string{""}) || !slices.Equal(r.Resources, []string{"pods"}) {
			t.Errorf("rule %d: apiGroups %q resources %q, want [\"\"] [pods] only (no subresource)", i, r.APIGroups, r.Resources)
		}
		if len(r.NonResourceURLs) != 0 {
			t.Errorf("rule %d: nonResourceURLs %q", i, r.NonResourceURLs)
		}
		for _, v := range r.Verbs {
			if !slices.Contains(allowedVerbs, v) {
				t.Errorf("rule %d: verb %q, want only %q", i, v, allowedVerbs)
			}
			canPatch = canPatch || v == "patch"
		}
	}
	if !canPatch {
		t.Error("the Role does not grant patch on pods")
	}

	sa := only[*corev1.ServiceAccount](t, objs)
	rb := only[*rbacv1.RoleBinding](t, objs)
	if rb.RoleRef.APIGroup != rbacv1.GroupName || rb.RoleRef.Kind != "Role" || rb.RoleRef.Name != role.Name {
		t.Errorf("roleRef %+v, want Role %s", rb.RoleRef, role.Name)
	}
	if len(rb.Subjects) != 1 || rb.Subjects[0].Kind != rbacv1.ServiceAccountKind || rb.Subjects[0].Name != sa.Name || rb.Subjects[0].Namespace != "" {
		t.Errorf("subjects %+v, want only ServiceAccount %s of the binding's namespace", rb.Subjects, sa.Name)
	}
}
