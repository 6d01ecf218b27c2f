#!/usr/bin/env bash
# tessera-data gen writes byte-identical files at 1, 2 and 4 ranks for the same seed (2-D and 3-D,
# float32 and float16), and a bad command line (a bad split name, a sample over 4 GiB, an output
# that names a folder, a dataset larger than the free space) exits 2 with one message, leaving no
# file, at 1 and 2 ranks.
set -euo pipefail
bin=${TESSERA_BIN:?}/tessera-data
mpiexec=${MPIEXEC:-mpiexec.mpich}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# expect_error N MESSAGE COMMAND...: exit 2 and exactly the line "error: MESSAGE" at N ranks.
source "$(dirname "$0")/expect_error.bash"

check_identical() {  # args: label, gen arguments...
  local label=$1
  shift
  for n in 1 2 4; do
    "$mpiexec" -n $n "$bin" gen -q -o "$dir/$label.$n.h5" "$@"
  done
  cmp "$dir/$label.1.h5" "$dir/$label.2.h5"
  cmp "$dir/$label.1.h5" "$dir/$label.4.h5"
  echo "identical at 1, 2, 4 ranks: $label ($(stat -c %s "$dir/$label.1.h5") bytes)"
}
check_identical 2d --samples 4 --size 30 --dims 2 --steps 20 --seed 3
check_identical 3d --samples 2 --size 12 --dims 3 --steps 10 --seed 4 --dtype float16
# A run that dies out (v below 1e-3 everywhere) is drawn again: on an 8x8 grid over 60 steps
# some do (2 of these 3 samples' first draws). The file is still identical at 1, 2 and 4 ranks,
# counts its redraws, and every sample keeps a pattern.
check_identical redraw --samples 3 --size 8 --dims 2 --steps 60 --seed 1
redrawn=$(h5dump -a /train/redrawn "$dir/redraw.1.h5" | sed -n 's/^ *(0): //p')
if [[ ! $redrawn -gt 0 ]]; then
  echo "FAIL: no run drawn again (@redrawn '$redrawn')" >&2
  exit 1
fi
# (The first DATA block is the dataset's; the attributes' follow. awk reads to the end: an early
# exit would kill h5dump with SIGPIPE, which pipefail reports.)
h5dump -d /train/x -y -w 0 -m %.9g "$dir/redraw.1.h5" |
  awk '/DATA \{/ && !seen { on = 1; seen = 1; next } on && /\}/ { on = 0 } on' | tr -d ', ' | awk -v n=64 -v samples=3 '
    { s = int((NR - 1) / n); if (NR % n == 1 || $1 > m[s]) m[s] = $1 }
    END {
      if (NR != samples * n) { print "FAIL: read " NR " values, expected " samples * n; exit 1 }
      for (s = 0; s < samples; ++s) if (m[s] < 1e-3) { print "FAIL: sample " s " died out (max " m[s] ")"; exit 1 }
    }' >&2
echo "redraw: $redrawn runs that died out drawn again; every sample keeps a pattern"
# The files are not all the same regardless of seed: another seed differs.
"$mpiexec" -n 2 "$bin" gen -q -o "$dir/other.h5" --samples 4 --size 30 --dims 2 --steps 20 --seed 5
if cmp -s "$dir/2d.1.h5" "$dir/other.h5"; then
  echo "FAIL: seeds 3 and 5 gave the same file" >&2
  exit 1
fi
# No partial file is left, and the output holds what ls reads back.
test ! -e "$dir/2d.1.h5.partial"
listing=$("$bin" ls "$dir/2d.1.h5")
grep -q "/train/x (4, 1, 30, 30) float32" <<<"$listing"

for n in 1 2; do
  set +e
  out=$("$mpiexec" -n $n "$bin" gen -q -o "$dir/bad.h5" --dims 4 2>&1)
  code=$?
  set -e
  if [[ $code -ne 2 || "$out" != "error: tessera-data gen: --dims 4 must be 2 or 3" ]]; then
    echo "FAIL at $n ranks: exit $code, output: $out" >&2
    exit 1
  fi
  # A split that is no plain name, a sample over HDF5's 4 GiB chunk limit, an output that names
  # a folder, a dataset larger than the disk's free space: refused before anything is written.
  mkdir -p "$dir/folder"
  split_rule='must be a plain group name like "train" (not empty, not ".", no '"'/'"')'
  expect_error $n "tessera-data gen: --split \"\": $split_rule" "$bin" gen -q -o "$dir/bad.h5" --split ""
  expect_error $n "tessera-data gen: --split \"/\": $split_rule" "$bin" gen -q -o "$dir/bad.h5" --split /
  expect_error $n "tessera-data gen: --size 100000 --dims 3: one sample is 3.55 PiB of float32, but HDF5 stores a sample as one chunk, which must be under 4 GiB; give a smaller --size" \
    "$bin" gen -q -o "$dir/bad.h5" -s 100000 -d 3
  expect_error $n "tessera-data gen: --size 60000 --dims 2: one sample is 13.41 GiB of float32, but HDF5 stores a sample as one chunk, which must be under 4 GiB; give a smaller --size" \
    "$bin" gen -q -o "$dir/bad.h5" -s 60000 -d 2
  # Only the options out of their range are named.
  expect_error $n "tessera-data gen: --size 2 must be >= 4" \
    "$bin" gen -q -o "$dir/bad.h5" --size 2 --samples 2
  expect_error $n "tessera-data gen: --samples 0 must be >= 1, --steps -1 must be >= 0" \
    "$bin" gen -q -o "$dir/bad.h5" --samples 0 --steps -1
  expect_error $n '-o "": an empty name; -o takes a file name' "$bin" gen -q -o ""
  expect_error $n "$dir/folder: is a folder; -o takes a file name" "$bin" gen -q -o "$dir/folder"
  expect_error $n "$dir/newdir/: names a folder; -o takes a file name" "$bin" gen -q -o "$dir/newdir/"
  set +e
  out=$("$mpiexec" -n $n "$bin" gen -q -o "$dir/big.h5" -n 2000000000 -s 64 -d 3 2>&1)
  code=$?
  set -e
  want="error: tessera-data gen: no space left on device for $dir/big.h5: $dir has [0-9.]+ [KMGTP]?i?B free, the dataset needs 1.88 PiB; nothing was written"
  if [[ $code -ne 2 || ! "$out" =~ ^$want$ ]]; then
    echo "FAIL at $n ranks: gen of 1.88 PiB: exit $code, output: $out" >&2
    exit 1
  fi
  if [[ -e "$dir/bad.h5" || -e "$dir/big.h5" || -e "$dir/newdir" ]] ||
    compgen -G "$dir/*.partial" >/dev/null || [[ -n $(ls -A "$dir/folder") ]]; then
    echo "FAIL at $n ranks: a refused gen left a file behind: $(ls -A "$dir")" >&2
    exit 1
  fi
  set +e
  out=$("$mpiexec" -n $n "$bin" ls "$dir/missing.h5" 2>&1)
  code=$?
  set -e
  if [[ $code -ne 2 || "$out" != "error: $dir/missing.h5: no such file" ]]; then
    echo "FAIL at $n ranks: exit $code, output: $out" >&2
    exit 1
  fi
done
echo "bad command lines: exit 2 with one message at 1 and 2 ranks"
