#!/usr/bin/env bash
# compare-c-tools.sh compares the decoders of package decompress with the C
# tools: it writes a disk-like image (256 MiB by default), compresses it
# with gzip, zstd, xz and bzip2, then times `TOOL -dc` and the Go decoder
# (NewReader, through the package's test binary) on the same files, and
# prints a table.
#
#   importer/decompress/compare-c-tools.sh            # 256 MiB, best of 3
#   SIZE_MIB=64 RUNS=1 importer/decompress/compare-c-tools.sh
#
# The tools: apt-get install -y gzip xz-utils zstd bzip2
#
# Throughput is decompressed MB (10^6 bytes) per second of wall time, the
# best of RUNS runs, output to /dev/null; "cpu" columns divide by user+sys
# time instead, which a busy machine disturbs less (and which is higher
# than wall time for the multi-threaded xz -T0). Ratio is C / Go: how many
# times faster the C tool is.
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
gotest -test.run '^TestMakeSample$' -sample-out "$img" -sample-size $((SIZE_MIB << 20)) >/dev/null
size=$(stat -c %s "$img")

echo "compressing a ${SIZE_MIB} MiB disk-like image..." >&2
gzip -6 -c "$img" >"$img.gz"
zstd -q -3 -c "$img" >"$img.zst"
xz -6 -T1 -c "$img" >"$img.xz"
xz -6 -T0 -c "$img" >"$img.mt.xz" # blocks, which xz -T0 -d decodes in parallel
bzip2 -9 -c "$img" >"$img.bz2"

# best CMD...: prints "wall cpu" seconds, the best of RUNS runs of CMD.
best() {
	local bw="" bc="" w c out
	for ((i = 0; i < RUNS; i++)); do
		out=$({ TIMEFORMAT='%R %U %S'; time "$@" >/dev/null; } 2>&1 | tail -1)
		read -r w u s <<<"$out"
		c=$(echo "$u + $s" | bc -l)
		if [[ -z $bw ]] || (($(echo "$w < $bw" | bc -l))); then bw=$w; fi
		if [[ -z $bc ]] || (($(echo "$c < $bc" | bc -l))); then bc=$c; fi
	done
	echo "$bw $bc"
}

# The Go side must decode to the full size, or the timing means nothing.
for f in "$img.gz" "$img.zst" "$img.xz" "$img.mt.xz" "$img.bz2"; do
	got=$(gotest -test.run '^TestDecodeFile$' -decode-file "$f" | awk '/^decoded/ {print $3}')
	if [[ $got != "$size" ]]; then
		echo "Go decoded $f to $got bytes, want $size" >&2
		exit 1
	fi
done

mbs() { echo "scale=1; $size / 1000000 / $1" | bc -l; }

printf '%-22s %10s %10s %10s %8s %10s %10s %8s\n' format compr-MB C-MB/s Go-MB/s C/Go C-cpu Go-cpu C/Go-cpu
row() { # name file C-command...
	local name=$1 file=$2
	shift 2
	local c g
	read -r cw cc <<<"$(best "$@" "$file")"
	read -r gw gc <<<"$(best gotest -test.run '^TestDecodeFile$' -decode-file "$file")"
	printf '%-22s %10.1f %10.1f %10.1f %8.2f %10.1f %10.1f %8.2f\n' "$name" \
		"$(echo "$(stat -c %s "$file") / 1000000" | bc -l)" \
		"$(mbs "$cw")" "$(mbs "$gw")" "$(echo "$gw / $cw" | bc -l)" \
		"$(mbs "$cc")" "$(mbs "$gc")" "$(echo "$gc / $cc" | bc -l)"
}
row "gzip -6" "$img.gz" gzip -dc
row "zstd -3" "$img.zst" zstd -q -dc
row "xz -6" "$img.xz" xz -dc
row "xz -6 -T0 (xz -T0 -d)" "$img.mt.xz" xz -T0 -dc
row "bzip2 -9" "$img.bz2" bzip2 -dc
echo "($(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); $size bytes decompressed)"
