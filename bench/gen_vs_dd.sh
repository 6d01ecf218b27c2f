#!/usr/bin/env bash
# bench/gen_vs_dd.sh — tessera-data gen's parallel HDF5 write rate against the disk's raw
# sequential write rate (dd), measured in the same run on the same directory.
#
#   bench/gen_vs_dd.sh [DIR]            DIR: where to write (default data/bench-io)
#
# Relative paths (DIR, TESSERA_DATA) are taken from the repository root.
#
# Environment (defaults in brackets):
#   TESSERA_DATA   the tessera-data program [build/bin/tessera-data]
#   MPIEXEC        [mpiexec.mpich]      NP       ranks for gen [2]
#   SIZE           grid points per dimension, 3-D [128: 8 MiB per float32 sample]
#   SAMPLES        [128: 1 GiB of samples]  STEPS  Gray-Scott steps per sample [2: I/O-dominated]
#   REPEATS        gen/dd pairs, alternated, medians reported [3]
#
# gen prints the seconds it spent writing: the collective H5Dwrite calls, closing the file and a
# final fdatasync. dd writes the same number of bytes with bs=8M conv=fdatasync (its time includes
# the fdatasync too). Rates are in MB/s (10^6 bytes per second); each gen rate counts the bytes of
# the file it wrote. Target: gen's median rate >= 70% of dd's. Every file written is removed (and
# DIR, if this script created it).
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${1:-data/bench-io}
tessera_data=${TESSERA_DATA:-build/bin/tessera-data}
mpiexec=${MPIEXEC:-mpiexec.mpich}
np=${NP:-2}
size=${SIZE:-128}
samples=${SAMPLES:-128}
steps=${STEPS:-2}
repeats=${REPEATS:-3}

[[ -x $tessera_data ]] || { echo "gen_vs_dd: $tessera_data not found (set TESSERA_DATA)" >&2; exit 2; }
created=
if [[ ! -d $dir ]]; then
  mkdir -p "$dir"
  created=1
fi
h5="$dir/gen_vs_dd.h5"
ddfile="$dir/dd.bin"
cleanup() {
  rm -f "$h5" "$h5.partial" "$ddfile"
  if [[ -n $created ]]; then rmdir "$dir" 2>/dev/null || true; fi
}
trap cleanup EXIT

sample_bytes=$((size * size * size * 4))
bytes=$((samples * sample_bytes))
bs=$((8 * 1024 * 1024))
if ((bytes % bs != 0)); then
  echo "gen_vs_dd: $bytes bytes of samples is not a whole number of 8 MiB blocks" >&2
  exit 2
fi
count=$((bytes / bs))

median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

echo "gen_vs_dd: $dir on $(df -P "$dir" | awk 'NR == 2 {print $1}'), $((bytes / 1024 / 1024)) MiB" \
     "per run: gen -n $np 3-D size $size x $samples samples ($steps steps), dd bs=8M count=$count;" \
     "load average $(cut -d' ' -f1 /proc/loadavg)"
gen_rates=()
dd_rates=()
for ((i = 1; i <= repeats; ++i)); do
  sync  # start each measurement with no other dirty pages of ours pending
  out=$(LC_ALL=C "$mpiexec" -n "$np" "$tessera_data" gen --dims 3 --size "$size" \
          --samples "$samples" --steps "$steps" --output "$h5")
  gen_s=$(sed -n 's/^tessera-data gen: \([0-9.]*\) s writing$/\1/p' <<<"$out")
  [[ -n $gen_s ]] || { echo "gen_vs_dd: no write time in gen's output:" >&2; echo "$out" >&2; exit 1; }
  file_bytes=$(stat -c %s "$h5")
  rm -f "$h5"
  gen_rate=$(awk -v b="$file_bytes" -v s="$gen_s" 'BEGIN {printf "%.1f", b / s / 1e6}')

  sync
  dd_out=$(LC_ALL=C dd if=/dev/zero of="$ddfile" bs=8M count="$count" conv=fdatasync 2>&1)
  rm -f "$ddfile"
  # "1073741824 bytes (1.1 GB, 1.0 GiB) copied, 2.34 s, 459 MB/s"
  dd_s=$(sed -n 's/.* copied, \([0-9.e+-]*\) s,.*/\1/p' <<<"$dd_out")
  [[ -n $dd_s ]] || { echo "gen_vs_dd: cannot parse dd's output: $dd_out" >&2; exit 1; }
  dd_rate=$(awk -v b="$bytes" -v s="$dd_s" 'BEGIN {printf "%.1f", b / s / 1e6}')

  printf 'run %d: gen %s bytes in %s s = %s MB/s; dd %s bytes in %s s = %s MB/s\n' "$i" \
    "$file_bytes" "$gen_s" "$gen_rate" "$bytes" "$dd_s" "$dd_rate"
  gen_rates+=("$gen_rate")
  dd_rates+=("$dd_rate")
done

gen_med=$(printf '%s\n' "${gen_rates[@]}" | median)
dd_med=$(printf '%s\n' "${dd_rates[@]}" | median)
ratio=$(awk -v g="$gen_med" -v d="$dd_med" 'BEGIN {printf "%.1f", 100 * g / d}')
verdict=$(awk -v r="$ratio" 'BEGIN {print (r >= 70) ? "met" : "NOT met"}')
echo
echo "| | median MB/s (of $repeats) |"
echo "|---|---:|"
echo "| tessera-data gen (-n $np, parallel HDF5, incl. fdatasync) | $gen_med |"
echo "| dd bs=8M conv=fdatasync | $dd_med |"
echo "| gen / dd | ${ratio}% |"
echo
echo "gen_vs_dd: gen writes at ${ratio}% of dd's rate: target (>= 70%) $verdict" \
     "(load average now $(cut -d' ' -f1 /proc/loadavg))"
