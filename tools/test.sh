#!/usr/bin/env bash
# tools/test.sh — the test command: set-up (packages, configure, build) plus the whole test suite.
#
#   tools/test.sh                 host build in build/, all tests; then the CUDA configuration is
#                                 compiled and linked in build-cuda/ where nvcc exists (its GPU
#                                 tests run, and skip when no GPU is present)
#   TESSERA_SANITIZE=address,undefined tools/test.sh
#                                 the same suite under ASan/UBSan, in build-asan/
#   TESSERA_SKIP_CUDA=1 tools/test.sh   host only
#   tools/test.sh --slurm         also the job scripts under a local one-node Slurm (ctest label
#                                 `slurm`): installs slurm-wlm and munge (tools/setup.sh --slurm) and
#                                 requires those tests to run (TESSERA_SLURM_TESTS=1 does the same;
#                                 .ci/run uses it). Without it they run where Slurm is installed and
#                                 skip with a message where it is not; TESSERA_SLURM_TESTS=0 skips
#                                 them.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
for arg in "$@"; do
  case $arg in
    --slurm) export TESSERA_SLURM_TESTS=1 ;;
    *)
      echo "usage: tools/test.sh [--slurm]" >&2
      exit 1
      ;;
  esac
done

if [[ -n ${TESSERA_SANITIZE:-} ]]; then
  export BUILD_DIR=${BUILD_DIR:-build-asan} BUILD_TYPE=Debug
  export CMAKE_ARGS="${CMAKE_ARGS:-} -DTESSERA_SANITIZE=$TESSERA_SANITIZE -DTESSERA_BUILD_BENCH=OFF"
  # MPICH keeps some allocations until exit; the suite checks our leaks, not the library's.
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
fi
build_dir=${BUILD_DIR:-build}

tools/setup.sh
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
if [[ ${TESSERA_SLURM_TESTS:-} == 1 ]]; then
  echo "test: the Slurm tests (label slurm) are required: they start a local Slurm (tools/slurm_local.sh)"
elif [[ ${TESSERA_SLURM_TESTS:-} != 0 ]] && ! tools/slurm_local.sh available 2>/dev/null; then
  echo "test: Slurm is not installed: the Slurm tests (label slurm) will skip" \
    "(tools/test.sh --slurm installs slurm-wlm and munge and runs them)"
fi
echo "test: running the suite in $build_dir"
(cd "$build_dir" && ctest --output-on-failure -j "${JOBS:-2}" --timeout 600) | tee "$logs/host.log"

if [[ -z ${TESSERA_SKIP_CUDA:-} && -z ${TESSERA_SANITIZE:-} ]]; then
  nvcc=$(command -v nvcc || true)
  [[ -z $nvcc && -x /usr/local/cuda/bin/nvcc ]] && nvcc=/usr/local/cuda/bin/nvcc
  if [[ -n $nvcc ]]; then
    echo "test: compiling the CUDA configuration in build-cuda ($nvcc)"
    BUILD_DIR=build-cuda BUILD_TARGETS="tessera_cuda gpu_check gpu_gemm gpu_conv gpu_nccl" \
      CMAKE_ARGS="-DTESSERA_ENABLE_CUDA=ON -DTESSERA_BUILD_BENCH=OFF -DCMAKE_CUDA_COMPILER=$nvcc" \
      tools/setup.sh
    (cd build-cuda && ctest --output-on-failure -L gpu) | tee "$logs/gpu.log"
  else
    echo "test: no CUDA toolkit (nvcc) on this machine: the CUDA configuration is not built"
  fi
fi
# One closing line over every ctest run: "N passed, N failed, N skipped".
total=0 failed=0 skipped=0
for log in "$logs"/*.log; do
  line=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests failed out of [0-9]+' "$log" | tail -n 1)
  total=$((total + $(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$line")))
  failed=$((failed + $(sed -E 's/.*passed, ([0-9]+) tests failed.*/\1/' <<<"$line")))
  skipped=$((skipped + $(grep -cE '^\s*[0-9]+/[0-9]+ Test +#[0-9]+: .*\*\*\*Skipped' "$log" || true)))
done
echo "test: done in $((SECONDS - start)) s"
echo "tests: $((total - failed - skipped)) passed, $failed failed, $skipped skipped"
