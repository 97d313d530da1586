package decompress

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync"
	"syscall"
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

// xzBenchSize is the size of the disk BenchmarkXZParallel decodes.
var xzBenchSize = flag.Int64("xz-bench-size", 256<<20, "BenchmarkXZParallel: size of the disk image in bytes")

// xzT0File returns a disk-like image of size bytes compressed with
// xz -T0 (preset -6: blocks of 24 MiB, an 8 MiB dictionary), made once and
// kept in the temporary directory, for it takes xz a while. It skips the
// benchmark when there is no xz command.
func xzT0File(b *testing.B, size int64) string {
	b.Helper()
	if _, err := exec.LookPath("xz"); err != nil {
		b.Skip("no xz command")
	}
	name := filepath.Join(os.TempDir(), fmt.Sprintf("diskimporter-bench-%d.img.xz", size))
	if _, err := os.Stat(name); err == nil {
		return name
	}
	f, err := os.CreateTemp(os.TempDir(), "diskimporter-bench-*.xz")
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(f.Name())
	cmd := exec.Command("xz", "-T0", "-6", "-c")
	cmd.Stdin, cmd.Stdout = testdisk.New(size).Reader(), f
	if err := cmd.Run(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	if err := os.Rename(f.Name(), name); err != nil {
		b.Fatal(err)
	}
	return name
}

// BenchmarkXZParallel decodes a disk-like image (256 MiB, -xz-bench-size)
// compressed with xz -T0, in one run: with NewReader at GOMAXPROCS 1 and
// 2, with the serial decoder (the one for blocks without sizes, and the
// only one before), and with xz -dc and xz -T0 -dc (output to /dev/null).
// It reports MiB/s of output and CPU seconds per decoding, and for the Go
// decoders the bytes allocated and the peak of the memory the Go runtime
// holds (peak-MiB, sampled every 5 ms; garbage included, which the
// garbage collector lets grow to the live heap). Rows: NewReader at
// GOMAXPROCS 1 (serial) and 2 (two workers), one worker at GOMAXPROCS 1,
// the serial decoder at GOMAXPROCS 2.
//
//	go test -run '^$' -bench XZParallel -benchtime 1x ./importer/decompress
func BenchmarkXZParallel(b *testing.B) {
	name := xzT0File(b, *xzBenchSize)
	goRun := func(procs int, o func() xzOptions) func(b *testing.B) {
		return func(b *testing.B) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
			b.ReportAllocs()
			peak := samplePeakMemory()
			cpu := processCPU()
			for b.Loop() {
				f, err := os.Open(name)
				if err != nil {
					b.Fatal(err)
				}
				r, err := newReader(detect.XZ, hide{f}, o())
				if err != nil {
					b.Fatal(err)
				}
				if n, err := drain(r); n != *xzBenchSize || err != nil {
					b.Fatalf("%d bytes, %v", n, err)
				}
				r.Close()
				f.Close()
			}
			b.ReportMetric((processCPU()-cpu).Seconds()/float64(b.N), "cpu-s/op")
			b.ReportMetric(float64(peak())/(1<<20), "peak-MiB")
			reportMiBs(b, *xzBenchSize)
		}
	}
	b.Run("go/procs=1", goRun(1, defaultXZOptions))
	b.Run("go/procs=2", goRun(2, defaultXZOptions))
	b.Run("go-1-worker/procs=1", goRun(1, func() xzOptions { return xzOptions{workers: 1, memory: XZParallelMemory} }))
	b.Run("go-serial/procs=2", goRun(2, func() xzOptions { return xzOptions{} }))
	for _, args := range [][]string{{"-dc"}, {"-T0", "-dc"}} {
		b.Run("xz "+strings.Join(args, " "), func(b *testing.B) {
			var cpu time.Duration
			for b.Loop() {
				cmd := exec.Command("xz", append(args, name)...)
				if err := cmd.Run(); err != nil {
					b.Fatal(err)
				}
				cpu += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
			}
			b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
			reportMiBs(b, *xzBenchSize)
		})
	}
}

// processCPU returns the CPU time the process has used.
func processCPU() time.Duration {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		return 0
	}
	return time.Duration(u.Utime.Nano() + u.Stime.Nano())
}

// reportMiBs reports the MiB/s of a benchmark whose every iteration
// produces size bytes.
func reportMiBs(b *testing.B, size int64) {
	b.ReportMetric(float64(size)*float64(b.N)/(1<<20)/b.Elapsed().Seconds(), "MiB/s")
}

// samplePeakMemory samples the memory the Go runtime holds from the
// system (mapped, less what it returned) every 5 ms, until the function
// it returns is called, which returns the peak less what it held at the
// start, after returning all it could.
func samplePeakMemory() func() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	held := func() uint64 {
		metrics.Read(s)
		return s[0].Value.Uint64() - s[1].Value.Uint64()
	}
	debug.FreeOSMemory()
	base := held()
	stop, done := make(chan struct{}), make(chan uint64)
	go func() {
		var peak uint64
		for {
			h := held()
			peak = max(peak, h-min(base, h))
			select {
			case <-stop:
				done <- peak
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return func() uint64 {
		close(stop)
		return <-done
	}
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
