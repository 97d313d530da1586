// Package hashstate saves and restores the state of a crypto/sha256 hash
// part way through a stream, for a read that goes on later (in another
// process) without hashing the bytes before again. A state is about 100
// bytes and ends with the count of bytes hashed, which Restore checks: a
// state of another position is refused rather than found out as a digest
// mismatch after the whole read.
package hashstate

import (
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
)

// ErrState: a saved state is not one of a sha256 hash after the bytes it
// is said to follow.
var ErrState = errors.New("the saved sha256 state does not fit")

// Save returns the state of h, a crypto/sha256 hash.
func Save(h hash.Hash) []byte {
	b, _ := h.(encoding.BinaryMarshaler).MarshalBinary() // sha256's never fails
	return b
}

// Restore returns a crypto/sha256 hash in state, which must be the state
// after n bytes; a nil state with n == 0 is a new hash.
func Restore(state []byte, n int64) (hash.Hash, error) {
	h := sha256.New()
	if state == nil && n == 0 {
		return h, nil
	}
	if len(state) < 8 || binary.BigEndian.Uint64(state[len(state)-8:]) != uint64(n) {
		return nil, fmt.Errorf("%w: it is not the state after %d bytes", ErrState, n)
	}
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrState, err)
	}
	return h, nil
}
