package manifests

import (
	"path"
	"testing"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
)

// TestCheckpointVolume: DISKIMPORTER_CHECKPOINT names a file on the
// manifests' own claim, mounted writable, so that the Job's next pod goes
// on with the upload; and the Job retries at all.
func TestCheckpointVolume(t *testing.T) {
	objs := loadObjects(t)
	job := only[*batchv1.Job](t, objs)
	pvc := only[*corev1.PersistentVolumeClaim](t, objs)
	if job.Spec.BackoffLimit == nil || *job.Spec.BackoffLimit < 1 {
		t.Errorf("backoffLimit %v: a killed pod is never followed by one that goes on", job.Spec.BackoffLimit)
	}
	c := job.Spec.Template.Spec.Containers[0]
	file := ""
	for _, e := range c.Env {
		if e.Name == "DISKIMPORTER_CHECKPOINT" {
			file = e.Value
		}
	}
	if file == "" {
		t.Fatal("no DISKIMPORTER_CHECKPOINT")
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range job.Spec.Template.Spec.Volumes {
		volumes[v.Name] = v
	}
	for _, m := range c.VolumeMounts {
		if m.MountPath != path.Dir(file) {
			continue
		}
		v := volumes[m.Name]
		if v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != pvc.Name || m.ReadOnly || v.PersistentVolumeClaim.ReadOnly {
			t.Errorf("%s is on volume %s (%+v), want the claim %s, writable", file, m.Name, v.VolumeSource, pvc.Name)
		}
		return
	}
	t.Errorf("%s is not in a mounted directory", file)
}
