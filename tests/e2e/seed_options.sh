#!/usr/bin/env bash
# A seed (tessera-data gen --seed, tessera generate --seed) is an integer in [0, 2^64 - 1]: -1,
# 2^64 and text are refused with exit code 2 and a readable range (CLI11 alone took -1 as 2^64 - 1,
# clamped 2^64 to the largest value, and printed the range of a double, 309 digits long).
set -uo pipefail
bin=${TESSERA_BIN:?}
mpiexec=${MPIEXEC:-mpiexec.mpich}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
failed=0
max=18446744073709551615
for n in 1 2; do
  for seed in -1 18446744073709551616 1e3 ""; do
    for program in "tessera-data gen -q -o $dir/gs.h5" \
      "tessera generate $dir/missing.h5 --prompt a"; do
      # shellcheck disable=SC2086
      out=$(timeout 60 "$mpiexec" -n "$n" $bin/$program --seed "$seed" 2>&1)
      code=$?
      want="--seed: ${seed:-\"\"} is not an integer in [0, $max]"
      if [[ $code -ne 2 || "$out" != "$want"$'\n'"Run with --help for more information." ]]; then
        echo "FAIL at $n ranks: ${program%% *} --seed '$seed': exit $code, want 2 and: $want"
        sed 's/^/    got: /' <<<"$out"
        failed=$((failed + 1))
      fi
    done
  done
done
# The largest seed is taken.
timeout 60 "$bin/tessera-data" gen -q -o "$dir/gs.h5" --samples 1 --size 8 --steps 1 --seed "$max" ||
  { echo "FAIL: gen --seed $max"; failed=$((failed + 1)); }
[[ -e $dir/gs.h5 ]] || { echo "FAIL: gen --seed $max wrote nothing"; failed=$((failed + 1)); }
echo "seed options: $failed failed"
[[ $failed -eq 0 ]]
