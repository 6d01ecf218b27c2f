#!/usr/bin/env bash
# tessera-data gen writes byte-identical files at 1, 2 and 4 ranks for the same seed (2-D and 3-D,
# float32 and float16), and a bad command line exits 2 with one message, at 1 and 2 ranks.
set -euo pipefail
bin=${TESSERA_BIN:?}/tessera-data
mpiexec=${MPIEXEC:-mpiexec.mpich}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

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
