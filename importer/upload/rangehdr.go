package upload

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// maxQuoted bounds how much of a malformed header an error quotes.
const maxQuoted = 64

// parseRange reads the Range header of an answer about an upload, "0-END"
// (the spec, distribution) or "bytes=0-END" (Quay), and returns how many
// bytes it says the registry holds: END+1. "0-0" says nothing: distribution
// sends it both for an empty upload and for one byte. Quay's status answer
// puts the count, not the last byte, after the dash: this reads one byte
// more than Quay holds, which Consistent or the next PATCH's 416 catches.
func parseRange(v string) (int64, error) {
	if v == "" {
		return -1, errors.New("no Range header")
	}
	end, ok := strings.CutPrefix(strings.TrimPrefix(v, "bytes="), "0-")
	if !ok {
		return -1, fmt.Errorf("the Range header %q does not start at byte 0", quoted(v))
	}
	n, err := strconv.ParseUint(end, 10, 63)
	switch {
	case err != nil || n == math.MaxInt64:
		return -1, fmt.Errorf("malformed Range header %q", quoted(v))
	case n == 0:
		return -1, errors.New("the Range 0-0 does not tell an empty upload from one byte")
	}
	return int64(n) + 1, nil
}

// quoted cuts a header value for an error message.
func quoted(v string) string {
	if len(v) > maxQuoted {
		return v[:maxQuoted] + "..."
	}
	return v
}
