package decompress

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/diskimporter/diskimporter/importer/detect"
	"github.com/diskimporter/diskimporter/importer/testdisk"
)

// benchSize is the size of the disk the benchmarks decode.
const benchSize = 64 << 20

var (
	benchOnce  sync.Once
	benchFiles map[detect.Compression][]byte
)

// benchFixtures compresses a 64 MiB disk with the Go encoders at their
// default settings (xz: 8 MiB dictionary, one block).
func benchFixtures(b *testing.B) map[detect.Compression][]byte {
	benchOnce.Do(func() {
		data := disk(b, benchSize)
		benchFiles = map[detect.Compression][]byte{
			detect.Gzip: compressOnce(b, detect.Gzip, data),
			detect.Zstd: compressOnce(b, detect.Zstd, data),
			detect.XZ:   xzCompressOnce(b, xz.WriterConfig{}, data),
		}
	})
	if benchFiles == nil {
		b.Fatal("no fixtures")
	}
	return benchFiles
}

// drain reads r to its end through a 32 KiB buffer, as io.Copy into a
// tar writer does.
func drain(r io.Reader) (int64, error) {
	buf := make([]byte, 32<<10)
	var n int64
	for {
		k, err := r.Read(buf)
		n += int64(k)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// BenchmarkDecode measures NewReader's decoders on a 64 MiB disk-like
// image, reading the compressed input through a reader with nothing but
// Read, as an HTTP body.
func BenchmarkDecode(b *testing.B) {
	files := benchFixtures(b)
	for _, c := range []detect.Compression{detect.Gzip, detect.Zstd, detect.XZ} {
		in := files[c]
		b.Run(string(c), func(b *testing.B) {
			b.SetBytes(benchSize)
			b.ReportMetric(float64(len(in))/(1<<20), "compressed-MiB")
			for b.Loop() {
				r, err := NewReader(c, hide{bytes.NewReader(in)})
				if err != nil {
					b.Fatal(err)
				}
				if n, err := drain(r); n != benchSize || err != nil {
					b.Fatalf("%d bytes, %v", n, err)
				}
				r.Close()
			}
		})
	}
}

// BenchmarkDecodeOptions measures the choices NewReader makes: zstd's
// concurrency, and buffering the input of the xz and gzip decoders.
func BenchmarkDecodeOptions(b *testing.B) {
	files := benchFixtures(b)
	run := func(name string, c detect.Compression, open func(r io.Reader) (io.Reader, func(), error)) {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(benchSize)
			for b.Loop() {
				r, done, err := open(hide{bytes.NewReader(files[c])})
				if err != nil {
					b.Fatal(err)
				}
				if n, err := drain(r); n != benchSize || err != nil {
					b.Fatalf("%d bytes, %v", n, err)
				}
				done()
			}
		})
	}
	nop := func() {}
	for _, conc := range []int{1, 2, 4} {
		run(fmt.Sprintf("zstd/concurrency=%d", conc), detect.Zstd, func(r io.Reader) (io.Reader, func(), error) {
			d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(conc), zstd.WithDecoderMaxWindow(MaxZstdWindow))
			if err != nil {
				return nil, nil, err
			}
			return d, d.Close, nil
		})
	}
	run("xz/unbuffered", detect.XZ, func(r io.Reader) (io.Reader, func(), error) {
		d, err := xz.NewReader(r)
		return d, nop, err
	})
	for _, size := range []int{4 << 10, 64 << 10} {
		run(fmt.Sprintf("xz/bufio=%dKiB", size>>10), detect.XZ, func(r io.Reader) (io.Reader, func(), error) {
			d, err := xz.NewReader(bufio.NewReaderSize(r, size))
			return d, nop, err
		})
	}
	run("gzip/unbuffered", detect.Gzip, func(r io.Reader) (io.Reader, func(), error) {
		d, err := gzip.NewReader(r)
		return d, nop, err
	})
	run("gzip/bufio=64KiB", detect.Gzip, func(r io.Reader) (io.Reader, func(), error) {
		d, err := gzip.NewReader(bufio.NewReaderSize(r, 64<<10))
		return d, nop, err
	})
}

// Flags for compare-c-tools.sh, which runs the test binary to write a
// sample disk and to decode the files the C tools compress.
var (
	sampleOut  = flag.String("sample-out", "", "TestMakeSample: write a disk-like image to this file")
	sampleSize = flag.Int64("sample-size", 256<<20, "TestMakeSample: size of the image in bytes")
	decodeFile = flag.String("decode-file", "", "TestDecodeFile: decompress this file with NewReader")
)

// TestMakeSample writes a disk-like image to the file -sample-out.
func TestMakeSample(t *testing.T) {
	if *sampleOut == "" {
		t.Skip("no -sample-out")
	}
	f, err := os.Create(*sampleOut)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(f, testdisk.New(*sampleSize).Reader()); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestDecodeFile decompresses the file -decode-file, whatever its
// compression, and prints how many bytes it holds and how long it took.
func TestDecodeFile(t *testing.T) {
	if *decodeFile == "" {
		t.Skip("no -decode-file")
	}
	f, err := os.Open(*decodeFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, detect.HeadSize)
	n, _ := io.ReadFull(f, head)
	c := detect.CompressionOf(head[:n])
	start := time.Now()
	r, err := NewReader(c, io.MultiReader(bytes.NewReader(head[:n]), f))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	size, err := drain(r)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("decoded %s: %d bytes in %v\n", c, size, time.Since(start))
}
