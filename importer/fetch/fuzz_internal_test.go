package fetch

import (
	"fmt"
	"math"
	"testing"
)

// FuzzParseContentRange checks that parseContentRange never panics, that
// a range it accepts is one a server could send for a resource of total
// bytes (0 <= start <= end < total), and that the range printed in the
// canonical form parses back to the same one.
func FuzzParseContentRange(f *testing.F) {
	for _, seed := range []string{
		"bytes 0-0/1", "bytes 0-499/1234", "bytes 500-999/1000", "bytes 0-8388607/68719476736",
		fmt.Sprintf("bytes 0-%d/%d", int64(math.MaxInt64)-1, int64(math.MaxInt64)),
		fmt.Sprintf("bytes 0-%d/%d", int64(math.MaxInt64), int64(math.MaxInt64)),
		"bytes 0-9223372036854775808/9223372036854775809",
		"bytes */1000", "bytes 0-499/*", "bytes 5-4/10", "bytes 0-10/10", "bytes 10-10/10",
		"bytes -1-5/10", "bytes +1-+5/+10", "bytes 0--0/1", "bytes 1 -2/3", "bytes 1-2/3/4",
		"Bytes 0-1/2", "bytes=0-1/2", "bytes  0-1/2", "bytes 0-1/2 ", "bytes ", "",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		start, end, total, ok := parseContentRange(s)
		if !ok {
			if start != 0 || end != 0 || total != 0 {
				t.Fatalf("parseContentRange(%q) = %d, %d, %d with ok false", s, start, end, total)
			}
			return
		}
		if start < 0 || end < start || total <= end {
			t.Fatalf("parseContentRange(%q) = %d-%d/%d: not a range of the resource", s, start, end, total)
		}
		canonical := fmt.Sprintf("bytes %d-%d/%d", start, end, total)
		s2, e2, t2, ok2 := parseContentRange(canonical)
		if !ok2 || s2 != start || e2 != end || t2 != total {
			t.Fatalf("parseContentRange(%q) = %d-%d/%d, but parseContentRange(%q) = %d-%d/%d, %v",
				s, start, end, total, canonical, s2, e2, t2, ok2)
		}
	})
}
