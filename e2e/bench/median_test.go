package main

import (
	"errors"
	"testing"
)

func TestMedian(t *testing.T) {
	ok := func(mibps float64) result { return result{m: &measurement{mibps: mibps}} }
	failed := result{err: errors.New("failed")}
	for _, tt := range []struct {
		name string
		rs   []result
		want result
	}{
		{"one", []result{ok(5)}, ok(5)},
		{"three", []result{ok(9), ok(3), ok(5)}, ok(5)},
		{"two: the lower", []result{ok(9), ok(3)}, ok(3)},
		{"failures left out", []result{failed, ok(9), ok(3), failed, ok(4)}, ok(4)},
		{"every round failed", []result{failed, failed}, failed},
	} {
		got := median(tt.rs)
		if (got.err == nil) != (tt.want.err == nil) || (got.m != nil && got.m.mibps != tt.want.m.mibps) {
			t.Errorf("%s: median = %+v, want %+v", tt.name, got, tt.want)
		}
	}
}
