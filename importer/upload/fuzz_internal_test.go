package upload

import (
	"fmt"
	"math"
	"testing"
)

// FuzzParseRange checks that parseRange never panics, that a Range it
// accepts says at least 2 bytes are stored (0-0 says nothing), and that
// the count it returns, written back in either form, reads the same.
func FuzzParseRange(f *testing.F) {
	for _, seed := range []string{
		"0-0", "0-1", "0-99", "bytes=0-0", "bytes=0-100", "", "0-", "-5", "5-10", "0-x", "0--1", "0-+1",
		"0- 1", " 0-1", "bytes=", "bytes 0-1", "BYTES=0-1", "0-007", "0-1-2", "bytes=bytes=0-1",
		fmt.Sprintf("0-%d", int64(math.MaxInt64)-1), fmt.Sprintf("0-%d", int64(math.MaxInt64)),
		"0-9223372036854775808", "0-18446744073709551616",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, v string) {
		n, err := parseRange(v)
		if err != nil {
			if n != -1 {
				t.Fatalf("parseRange(%q) = %d with error %v", v, n, err)
			}
			return
		}
		if n < 2 {
			t.Fatalf("parseRange(%q) = %d, want at least 2", v, n)
		}
		for _, canonical := range []string{fmt.Sprintf("0-%d", n-1), fmt.Sprintf("bytes=0-%d", n-1)} {
			if n2, err := parseRange(canonical); n2 != n || err != nil {
				t.Fatalf("parseRange(%q) = %d, but parseRange(%q) = %d, %v", v, n, canonical, n2, err)
			}
		}
	})
}

func TestParseRange(t *testing.T) {
	tests := []struct {
		v    string
		want int64
	}{
		{"0-99", 100}, {"bytes=0-99", 100}, {"0-1", 2}, {"0-0", -1}, {"bytes=0-0", -1}, {"", -1}, {"1-99", -1},
		{"0-", -1}, {"0--1", -1}, {"0-+1", -1}, {fmt.Sprintf("0-%d", int64(math.MaxInt64)), -1},
		{fmt.Sprintf("0-%d", int64(math.MaxInt64)-1), math.MaxInt64},
	}
	for _, tt := range tests {
		if got, err := parseRange(tt.v); got != tt.want || (err == nil) != (tt.want > 0) {
			t.Errorf("parseRange(%q) = %d, %v; want %d", tt.v, got, err, tt.want)
		}
	}
}
