package reason

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// TestOf: every sentinel names its own reason through any wrapping, a
// cancellation wins over what it interrupted, and what is not classified
// is Failed.
func TestOf(t *testing.T) {
	t.Parallel()
	seen := map[Reason]bool{}
	for _, r := range table {
		got := Of(fmt.Errorf("stage: %w", fmt.Errorf("detail: %w", r.err)))
		if got != r.reason {
			t.Errorf("Of(%v) = %s, want %s", r.err, got, r.reason)
		}
		if seen[r.reason] {
			t.Errorf("reason %s appears twice", r.reason)
		}
		seen[r.reason] = true
	}
	for _, tc := range []struct {
		err  error
		want Reason
	}{
		{nil, ""},
		{errors.New("boom"), Failed},
		{fmt.Errorf("%w: %w", ErrSourceUnavailable, context.Canceled), Cancelled},
		{fmt.Errorf("%w: %w", ErrRegistry, context.DeadlineExceeded), Timeout},
		{&transport.Error{StatusCode: http.StatusBadGateway}, RegistryError},
		{fmt.Errorf("%w: %w", ErrCorruptSource, ErrSourceTruncated), SourceTruncated},
	} {
		if got := Of(tc.err); got != tc.want {
			t.Errorf("Of(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
