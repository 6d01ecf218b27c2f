#!/usr/bin/env bash
# bench/ckpt_vs_dd.sh — checkpoint write and read rates against the disk's raw sequential write
# rate (dd), alternated in the same run on the same directory (issue 6: write >= 70% of dd's rate,
# read-back no slower than the write).
#
#   bench/ckpt_vs_dd.sh [DIR]           DIR: where to write (default data/bench-ckpt)
#
# Environment: BENCH (build/bin/tessera-bench-checkpoint), MPIEXEC (mpiexec.mpich), NP (ranks, 1),
# MIB (parameters in MiB, 256: a 512 MiB checkpoint with SGD momentum), REPEATS (5).
# The checkpoint's time covers the whole save: collective HDF5 writes, checksums, fsync of the
# file, rename, fsync of the folder and the `latest` marker. dd writes the same bytes with bs=8M
# conv=fdatasync. Rates in MB/s (10^6 bytes/s); medians over REPEATS; every file is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-data/bench-ckpt}
bench=${BENCH:-build/bin/tessera-bench-checkpoint}
mpiexec=${MPIEXEC:-mpiexec.mpich}
np=${NP:-1}
mib=${MIB:-256}
repeats=${REPEATS:-5}
[[ -x $bench ]] || { echo "ckpt_vs_dd: $bench not found (set BENCH)" >&2; exit 2; }
mkdir -p "$dir"
ddfile=$dir/dd.bin
trap 'rm -rf "$dir"' EXIT

writes=() reads=() dds=()
for ((r = 1; r <= repeats; ++r)); do
  line=$("$mpiexec" -n "$np" "$bench" --dir "$dir/ckpt" --mib "$mib" --rounds 1 | tail -n 1)
  bytes=$(sed -E 's/.*wrote ([0-9]+) bytes.*/\1/' <<<"$line")
  w=$(sed -E 's/.*\(([0-9.]+) MB\/s\); read.*/\1/' <<<"$line")
  rd=$(sed -E 's/.*read in [0-9.]+ s \(([0-9.]+) MB\/s\).*/\1/' <<<"$line")
  count=$(((bytes + 8388607) / 8388608))
  t0=$(date +%s.%N)
  dd if=/dev/zero of="$ddfile" bs=8M count="$count" conv=fdatasync status=none
  t1=$(date +%s.%N)
  rm -f "$ddfile"
  d=$(awk -v b=$((count * 8388608)) -v a="$t0" -v z="$t1" 'BEGIN { printf "%.1f", b / (z - a) / 1e6 }')
  printf 'round %d: checkpoint write %8.1f MB/s, read %8.1f MB/s; dd %8.1f MB/s (%d bytes)\n' \
    "$r" "$w" "$rd" "$d" "$bytes"
  writes+=("$w") reads+=("$rd") dds+=("$d")
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
mw=$(median "${writes[@]}") mr=$(median "${reads[@]}") md=$(median "${dds[@]}")
awk -v w="$mw" -v r="$mr" -v d="$md" -v n="$repeats" -v np="$np" 'BEGIN {
  printf "medians of %d (%d rank(s)): write %.1f MB/s, read %.1f MB/s, dd %.1f MB/s\n", n, np, w, r, d
  printf "write / dd = %.2f (target >= 0.70); read / write = %.2f (target >= 1.00)\n", w / d, r / w
}'
