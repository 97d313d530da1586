package upload_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/diskimporter/diskimporter/importer/reason"
	"github.com/diskimporter/diskimporter/importer/upload"
)

func TestConsistent(t *testing.T) {
	tests := []struct {
		name                      string
		reported, confirmed, sent int64
		ok                        bool
	}{
		{"all sent stored", 100, 0, 100, true},
		{"part of what was in flight", 60, 40, 100, true},
		{"nothing new", 40, 40, 100, true},
		{"behind the confirmed offset", 39, 40, 100, false},
		{"past what was sent", 101, 40, 100, false},
		{"Quay's status one past", 101, 0, 100, false},
		{"ECR: stuck at an old offset after a confirmed PATCH", 40, 100, 100, false},
		{"negative", -1, 0, 100, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := upload.Consistent(tt.reported, tt.confirmed, tt.sent)
			if (err == nil) != tt.ok {
				t.Fatalf("Consistent(%d, %d, %d) = %v, want ok %v", tt.reported, tt.confirmed, tt.sent, err, tt.ok)
			}
			if err == nil {
				return
			}
			if !errors.Is(err, upload.ErrOffsetInconsistent) || !errors.Is(err, reason.ErrRegistry) {
				t.Errorf("error %q does not wrap ErrOffsetInconsistent and reason.ErrRegistry", err)
			}
			for _, n := range []int64{tt.reported, tt.confirmed, tt.sent} {
				if !strings.Contains(err.Error(), strconv.FormatInt(n, 10)) {
					t.Errorf("error %q does not name %d", err, n)
				}
			}
		})
	}
}

func TestCheckpointable(t *testing.T) {
	const host = "registry.example:5000"
	tests := []struct {
		name, location string
		ok             bool
		why            string // a part of the error
	}{
		{"distribution", "https://registry.example:5000/v2/r/blobs/uploads/u?_state=abc%3D", true, ""},
		{"no query", "https://registry.example:5000/v2/r/blobs/uploads/u", true, ""},
		{"host in another case", "https://Registry.Example:5000/v2/r/blobs/uploads/u", true, ""},
		{"another host", "https://storage.example/upload/u?_state=abc", false, "storage.example"},
		{"another port", "https://registry.example:443/v2/r/blobs/uploads/u", false, "registry.example:443"},
		{"presigned", "https://registry.example:5000/u?_state=a&X-Amz-Signature=sig&X-Amz-Credential=c", false, "X-Amz-Credential, X-Amz-Signature"},
		{"token", "https://registry.example:5000/u?token=t", false, "token"},
		{"user info", "https://user:pw@registry.example:5000/u", false, "user info"},
		{"relative", "/v2/r/blobs/uploads/u", false, "absolute"},
		{"bad query", "https://registry.example:5000/u?_state=%zz", false, "query"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := upload.Checkpointable(tt.location, host)
			if (err == nil) != tt.ok {
				t.Fatalf("Checkpointable(%q) = %v, want ok %v", tt.location, err, tt.ok)
			}
			if err != nil && !strings.Contains(err.Error(), tt.why) {
				t.Errorf("error %q does not say %q", err, tt.why)
			}
			for _, v := range []string{"sig", "pw", "=t", "abc"} {
				if err != nil && strings.Contains(err.Error(), v) {
					t.Errorf("error %q shows the value %q", err, v)
				}
			}
		})
	}
}
