#!/usr/bin/env bash
# compare-c-tools.sh compares the decoders of package decompress with the C
# tools: it writes a disk-like image (256 MiB by default), compresses it
# with gzip, zstd, xz and bzip2, then times `TOOL -dc` and the Go decoder
# (NewReader, through the package's test binary) on the same files, and
# prints a table.
#
#   importer/decompress/compare-c-tools.sh            # 256 MiB, best of 3
#   SIZE_MIB=64 RUNS=1 importer/decompress/compare-c-tools.sh
#   SAMPLE=/path/to/disk.img importer/decompress/compare-c-tools.sh
#
# The generated image is a third random bytes, a third zeros and a third
# repeated text, which all decode unusually fast; SAMPLE names a real image
# (or any file) to measure instead.
#
# The tools: apt-get install -y gzip xz-utils zstd bzip2
#
# Throughput is decompressed MB (10^6 bytes) per second of wall time, the
# best of RUNS runs, output to /dev/null; "cpu" columns divide by user+sys
# time instead, which a busy machine disturbs less (and which is higher
# than wall time for the multi-threaded xz -T0, and for the Go decoder of
# its blocks). Ratio is C / Go: how many times faster the C tool is. The
# row "1 CPU" compares xz -d on the xz -T0 file with the Go decoder at
# GOMAXPROCS=1.
set -euo pipefail

SIZE_MIB=${SIZE_MIB:-256}
RUNS=${RUNS:-3}
here=$(cd "$(dirname "$0")" && pwd)

for t in gzip xz zstd bzip2 go; do
	if ! command -v "$t" >/dev/null; then
		echo "missing $t; apt-get install -y gzip xz-utils zstd bzip2" >&2
		exit 1
	fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$here" && go test -c -o "$work/decompress.test" .)
gotest() { "$work/decompress.test" -test.count=1 "$@"; }

img=$work/disk.img
if [[ -n ${SAMPLE:-} ]]; then
	cp "$SAMPLE" "$img"
else
	gotest -test.run '^TestMakeSample$' -sample-out "$img" -sample-size $((SIZE_MIB << 20)) >/dev/null
fi
size=$(stat -c %s "$img")

echo "compressing ${SAMPLE:-a ${SIZE_MIB} MiB disk-like image} ($size bytes)..."
gzip -6 -c "$img" >"$img.gz"
zstd -q -3 -c "$img" >"$img.zst"
xz -6 -T1 -c "$img" >"$img.xz"
xz -6 -T0 -c "$img" >"$img.mt.xz" # blocks, which xz -T0 -d decodes in parallel
bzip2 -9 -c "$img" >"$img.bz2"

# best CMD...: prints "wall cpu" seconds, the best of RUNS runs of CMD.
best() {
	local i out
	for ((i = 0; i < RUNS; i++)); do
		out=$({ TIMEFORMAT='%R %U %S'; time "$@" >/dev/null; } 2>&1 | tail -1)
		echo "$out"
	done | awk 'NR == 1 || $1 < w { w = $1 } NR == 1 || $2 + $3 < c { c = $2 + $3 } END { print w, c }'
}

# The Go side must decode to the full size, or the timing means nothing.
for f in "$img.gz" "$img.zst" "$img.xz" "$img.mt.xz" "$img.bz2"; do
	got=$(gotest -test.run '^TestDecodeFile$' -decode-file "$f" | awk '/^decoded/ {print $3}')
	if [[ $got != "$size" ]]; then
		echo "Go decoded $f to $got bytes, want $size" >&2
		exit 1
	fi
done

printf '%-22s %9s %8s %8s %6s %8s %8s %8s\n' format compr-MB C-MB/s Go-MB/s C/Go C-cpu Go-cpu C/Go-cpu
row() { # name file C-command...
	local name=$1 file=$2 cw cc gw gc
	shift 2
	read -r cw cc <<<"$(best "$@" "$file")"
	read -r gw gc <<<"$(best gotest -test.run '^TestDecodeFile$' -decode-file "$file")"
	awk -v name="$name" -v csize="$(stat -c %s "$file")" -v size="$size" \
		-v cw="$cw" -v cc="$cc" -v gw="$gw" -v gc="$gc" 'BEGIN {
		mb = size / 1e6
		printf "%-22s %9.1f %8.1f %8.1f %6.2f %8.1f %8.1f %8.2f\n", name, csize / 1e6,
			mb / cw, mb / gw, gw / cw, mb / cc, mb / gc, gc / cc
	}'
}
row "gzip -6" "$img.gz" gzip -dc
row "zstd -3" "$img.zst" zstd -q -dc
row "xz -6" "$img.xz" xz -dc
row "xz -6 -T0 (xz -T0 -d)" "$img.mt.xz" xz -T0 -dc
GOMAXPROCS=1 row "xz -6 -T0, 1 CPU (xz -d)" "$img.mt.xz" xz -dc
row "bzip2 -9" "$img.bz2" bzip2 -dc
echo "($(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); $size bytes decompressed)"
