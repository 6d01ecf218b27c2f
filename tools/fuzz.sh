#!/usr/bin/env bash
# tools/fuzz.sh — runs the libFuzzer targets (tests/fuzz/) under ASan/UBSan, built with clang in
# build-fuzz/, each from its committed corpus (tests/fuzz/corpus/<target>/) into a scratch corpus.
#
#   tools/fuzz.sh [RUNS] [TARGET...]     RUNS executions of each target (default 1000000);
#                                        targets: deck checkpoint dataset (default all)
#
# A finding stops the target and leaves its input as build-fuzz/findings/<target>/crash-*
# (libFuzzer's reproducer: build-fuzz/tests/fuzz/fuzz_<target> FILE). The CI's short run is
# ctest's fuzz_* tests (the corpus and deterministic mutations, no libFuzzer needed).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1000000}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(deck checkpoint dataset)
build=${FUZZ_BUILD_DIR:-build-fuzz}
if [[ ! -f $build/build.ninja ]]; then
  CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DTESSERA_FUZZ=ON -DTESSERA_SANITIZE=address,undefined -DTESSERA_BUILD_BENCH=OFF >/dev/null
fi
cmake --build "$build" --target "${targets[@]/#/fuzz_}"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
for t in "${targets[@]}"; do
  work=$build/fuzz-corpus/$t
  findings=$build/findings/$t
  mkdir -p "$work" "$findings"
  echo "fuzz: $t, $runs runs"
  start=$SECONDS
  # -close_fd_mask=1: the targets' own stdout (tessera-data ls) is not the fuzzer's report.
  "$build/tests/fuzz/fuzz_$t" -runs="$runs" -close_fd_mask=1 -timeout=10 -rss_limit_mb=4096 \
    -malloc_limit_mb=2048 -artifact_prefix="$findings/" -print_final_stats=1 \
    "$work" "tests/fuzz/corpus/$t" 2>&1 | grep --line-buffered -E "^(#[0-9]+.*(DONE|pulse)|stat::|==|SUMMARY|fuzz:|ERROR)" || true
  echo "fuzz: $t done in $((SECONDS - start)) s; findings: $(ls "$findings" | wc -l)"
done
