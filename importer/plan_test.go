package importer

import (
	"errors"
	"testing"

	"github.com/diskimporter/diskimporter/importer/detect"
)

func TestPlanRead(t *testing.T) {
	t.Parallel()
	const max = 1 << 30
	for _, tc := range []struct {
		name string
		in   planInput
		want readPlan
		err  error
	}{
		{"raw of known size", planInput{compression: detect.None, format: detect.Raw, size: 10, sizeFrom: SizeFromLength}, readPlan{sizeFrom: SizeFromLength}, nil},
		{"size unknown: spool", planInput{compression: detect.Gzip, format: detect.Raw}, readPlan{spool: true}, nil},
		{"empty", planInput{compression: detect.None, format: detect.Raw, size: 0, sizeFrom: SizeFromLength}, readPlan{}, ErrUnsupportedFormat},
		{"empty xz", planInput{compression: detect.XZ, size: 0, sizeFrom: SizeFromXZIndex}, readPlan{}, ErrUnsupportedFormat},
		{"too large", planInput{compression: detect.None, format: detect.Raw, size: max + 1, sizeFrom: SizeFromLength}, readPlan{}, ErrTooLarge},
		{"convert at random", planInput{compression: detect.None, format: detect.QCOW2, size: 10, sizeFrom: SizeFromLength, convertRaw: true, randomAccess: true},
			readPlan{sizeFrom: SizeFromLength, convert: ConvertRandomAccess}, nil},
		{"convert, checksum needs the whole download", planInput{compression: detect.None, format: detect.QCOW2, size: 10, sizeFrom: SizeFromLength, convertRaw: true, randomAccess: true, inOrder: true},
			readPlan{sizeFrom: SizeFromLength, convert: ConvertSpool, spool: true}, nil},
		{"convert a compressed qcow2", planInput{compression: detect.Zstd, format: detect.QCOW2, size: 10, sizeFrom: SizeFromZstdHeader, convertRaw: true, randomAccess: true},
			readPlan{sizeFrom: SizeFromZstdHeader, convert: ConvertSpool, spool: true}, nil},
		{"convert asked of a raw disk", planInput{compression: detect.None, format: detect.Raw, size: 10, sizeFrom: SizeFromLength, convertRaw: true}, readPlan{sizeFrom: SizeFromLength}, nil},
	} {
		tc.in.maxSize = max
		got, err := planRead(tc.in)
		if !errors.Is(err, tc.err) || tc.err == nil && err != nil {
			t.Errorf("%s: error %v, want %v", tc.name, err, tc.err)
		}
		if err == nil && got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
