package hashstate

import (
	"crypto/sha256"
	"errors"
	"testing"
)

// TestRestore: a state goes on as the hash it was saved from; a state of
// another position, or no state at all, is refused.
func TestRestore(t *testing.T) {
	t.Parallel()
	h := sha256.New()
	h.Write([]byte("hello, "))
	state := Save(h)
	r, err := Restore(state, 7)
	if err != nil {
		t.Fatal(err)
	}
	h.Write([]byte("world"))
	r.Write([]byte("world"))
	if string(h.Sum(nil)) != string(r.Sum(nil)) {
		t.Error("the restored hash differs")
	}
	for name, tc := range map[string]struct {
		state []byte
		n     int64
	}{"another position": {state, 8}, "no state": {nil, 7}, "short": {state[:5], 7}, "garbage": {append([]byte("xx"), state[2:]...), 7}} {
		if _, err := Restore(tc.state, tc.n); !errors.Is(err, ErrState) {
			t.Errorf("%s: %v, want ErrState", name, err)
		}
	}
	if r, err := Restore(nil, 0); err != nil || r == nil {
		t.Errorf("a new hash: %v", err)
	}
}
