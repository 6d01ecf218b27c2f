#!/usr/bin/env bash
# tools/gpu_check.sh — run THERE (the lent GPU machine), from the repository root, after
# tools/gpu_prepare.sh filled .carry/ here: the GPU-only build (-DTESSERA_GPU_ONLY=ON) and its
# tests, `ctest -L gpu`, on the real device.
#
#   tools/gpu_check.sh              build-gpu/, all cores; logs also in $OUT when it is set
#   BUILD_DIR=build-x JOBS=4 tools/gpu_check.sh
#
# It uses only the CUDA toolkit, CMake, ninja and what .carry/ holds: GoogleTest (built and
# installed into the build folder), fmt's headers and MPICH (unpacked into the build folder and
# tried first with a 2-rank program; where it runs, the NCCL communicator and its test gpu_nccl are
# built too, otherwise they are skipped and the log says why). NCCL and cuDNN come from the CUDA
# toolkit or, where it lacks them, from PyTorch's nvidia-* wheels. Prints nvidia-smi -L and the
# versions first. Exit status: ctest's (non-zero also when configure or build fails).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$PWD
carry=$root/.carry
build=${BUILD_DIR:-build-gpu}
[[ $build == /* ]] || build=$root/$build
jobs=${JOBS:-$(nproc)}
logs=${OUT:-$build/logs}
mkdir -p "$build" "$logs"
exec > >(tee "$logs/gpu_check.log") 2>&1

step() { echo; echo "=== gpu_check: $*"; }
fail() {
  echo "gpu_check: FAILED: $*"
  exit 1
}

step "machine"
glibc=$(ldd --version 2>/dev/null | head -n 1 | awk '{print $NF}')
echo "host $(hostname), $(nproc) cores, $(uname -sr), glibc $glibc"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader || true
else
  echo "nvidia-smi: not found (no NVIDIA driver here: the device tests will skip)"
fi
nvcc=$(command -v nvcc || true)
[[ -z $nvcc && -x /usr/local/cuda/bin/nvcc ]] && nvcc=/usr/local/cuda/bin/nvcc
[[ -n $nvcc ]] || fail "no nvcc (put the CUDA toolkit's bin/ on PATH)"
"$nvcc" --version | tail -n 2
cmake --version | head -n 1
echo "ninja $(ninja --version)"
c++ --version | head -n 1
python=$(command -v python3 || true)
if [[ -n $python ]]; then
  "$python" - <<'EOF' 2>/dev/null || echo "PyTorch: not importable"
import torch
try:
    v = torch.cuda.nccl.version()
    nccl = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
except Exception:  # a CPU build of PyTorch
    nccl = "-"
print(f"PyTorch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, NCCL {nccl}, devices {torch.cuda.device_count()}")
EOF
fi
[[ -d $carry ]] || fail "no $carry: run tools/gpu_prepare.sh on the build machine and carry .carry/"
sed -n '1,2p' "$carry/README.txt" 2>/dev/null

cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DTESSERA_GPU_ONLY=ON -DCMAKE_CUDA_COMPILER="$nvcc")
runtime_path=()  # library folders the tests need at run time (wheels, carried MPICH)

step "GoogleTest from .carry/googletest"
gtest_prefix=$build/_deps/googletest
build_googletest() {
  cmake -S "$carry/googletest" -B "$build/_deps/googletest-build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_GMOCK=OFF -DINSTALL_GTEST=ON -DCMAKE_INSTALL_PREFIX="$gtest_prefix" \
    -DCMAKE_INSTALL_LIBDIR=lib &&
    cmake --build "$build/_deps/googletest-build" -j "$jobs" &&
    cmake --install "$build/_deps/googletest-build"
}
if [[ ! -f $gtest_prefix/lib/cmake/GTest/GTestConfig.cmake ]]; then
  if ! build_googletest >"$logs/googletest.log" 2>&1; then
    tail -n 30 "$logs/googletest.log"
    fail "GoogleTest did not build"
  fi
fi
echo "installed in $gtest_prefix"
cmake_args+=(-DGTest_DIR="$gtest_prefix/lib/cmake/GTest")
cmake_args+=(-DTESSERA_FMT_INCLUDE_DIR="$carry/fmt/include")

step "NCCL and cuDNN"
cuda_root=$(dirname "$(dirname "$(readlink -f "$nvcc")")")
# A library of PyTorch's nvidia-<name> wheel: "<include dir>;<library>", or nothing.
wheel_lib() {
  [[ -n $python ]] || return 0
  "$python" - "$1" "$2" <<'EOF' 2>/dev/null
import glob, importlib, os, sys
module = importlib.import_module("nvidia." + sys.argv[1])
base = list(module.__path__)[0]
libs = sorted(glob.glob(os.path.join(base, "lib", sys.argv[2] + ".so*")))
if libs and os.path.isdir(os.path.join(base, "include")):
    print(os.path.join(base, "include") + ";" + libs[0])
EOF
}
for pair in "nccl nccl.h libnccl NCCL" "cudnn cudnn.h libcudnn CUDNN"; do
  read -r wheel header lib var <<<"$pair"
  if [[ -e $cuda_root/include/$header || -e /usr/include/$header ]]; then
    echo "$header: with the CUDA toolkit or the system ($cuda_root)"
    continue
  fi
  found=$(wheel_lib "$wheel" "$lib")
  if [[ -n $found ]]; then
    echo "$header: from PyTorch's wheel: ${found//;/ and }"
    cmake_args+=(-D"${var}_INCLUDE_DIR=${found%%;*}" -D"${var}_LIBRARY=${found#*;}")
    runtime_path+=("$(dirname "${found#*;}")")
  else
    echo "$header: not found next to $cuda_root nor in a wheel (CMake decides: set ${var}_ROOT)"
  fi
done

step "MPICH from .carry/mpich.tar.gz"
mpich=$build/_deps/mpich
mpi_ok=""
if [[ -f $carry/mpich.tar.gz ]]; then
  rm -rf "$mpich" && mkdir -p "$build/_deps" && tar -C "$build/_deps" -xzf "$carry/mpich.tar.gz"
  # mpiexec: hydra with the carried libraries, forking the ranks here (no ssh, no Slurm).
  cat >"$mpich/bin/mpiexec" <<EOF
#!/bin/sh
# MPICH carried from the build machine (tools/gpu_prepare.sh), run by tools/gpu_check.sh.
export LD_LIBRARY_PATH="$mpich/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export HYDRA_LAUNCHER=fork HYDRA_RMK=user
exec "$mpich/bin/mpiexec.hydra" "\$@"
EOF
  chmod +x "$mpich/bin/mpiexec"
  probe=$build/_deps/mpi_probe
  cat >"$probe.cpp" <<'EOF'
#include <mpi.h>
#include <cstdio>
int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 0, sum = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) std::printf("mpi probe: %d ranks, sum of ranks %d\n", size, sum);
  MPI_Finalize();
  return sum == size * (size - 1) / 2 ? 0 : 1;
}
EOF
  if c++ -DMPICH_SKIP_MPICXX -I"$mpich/include" "$probe.cpp" -o "$probe" -L"$mpich/lib" -lmpich \
    -Wl,-rpath,"$mpich/lib" >"$logs/mpi_probe.log" 2>&1 &&
    timeout 60 "$mpich/bin/mpiexec" -n 2 "$probe" >>"$logs/mpi_probe.log" 2>&1 &&
    grep -q "2 ranks, sum of ranks 1" "$logs/mpi_probe.log"; then
    mpi_ok=1
    grep "mpi probe" "$logs/mpi_probe.log"
  else
    echo "the carried MPICH does not work here; the NCCL test is skipped:"
    sed 's/^/  /' "$logs/mpi_probe.log" | tail -n 15
  fi
else
  echo "no $carry/mpich.tar.gz: the NCCL test is skipped"
fi
if [[ -n $mpi_ok ]]; then
  # FindMPI told everything: no wrapper, no pkg-config, no guessing (nor a system MPI found).
  cmake_args+=(-DMPI_SKIP_COMPILER_WRAPPER=ON -DMPI_SKIP_GUESSING=ON -DMPI_ASSUME_NO_BUILTIN_MPI=ON
    -DCMAKE_DISABLE_FIND_PACKAGE_PkgConfig=ON
    -DMPI_CXX_HEADER_DIR="$mpich/include" -DMPI_CXX_ADDITIONAL_INCLUDE_DIRS="$mpich/include"
    -DMPI_CXX_LIB_NAMES=mpich -DMPI_mpich_LIBRARY="$mpich/lib/libmpich.so.12"
    -DMPIEXEC_EXECUTABLE="$mpich/bin/mpiexec")
  runtime_path+=("$mpich/lib")
else
  cmake_args+=(-DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON)
fi

step "configure $build"
printf '  %s\n' "${cmake_args[@]}"
rm -f "$build/CMakeCache.txt"  # nothing found on an earlier run sticks (the objects stay)
cmake -S "$root" -B "$build" "${cmake_args[@]}" >"$logs/configure.log" 2>&1 ||
  { cat "$logs/configure.log"; fail "configure"; }
grep -E "^-- (CUDA|GPU-only|NCCL)" "$logs/configure.log"

step "build ($jobs jobs)"
cmake --build "$build" -j "$jobs" >"$logs/build.log" 2>&1 ||
  { tail -n 60 "$logs/build.log"; fail "build"; }
grep -ciE "warning" "$logs/build.log" | sed 's/^/compiler warnings: /'

step "ctest -L gpu"
if ((${#runtime_path[@]})); then
  ld_path=$(IFS=:; echo "${runtime_path[*]}")
  export LD_LIBRARY_PATH="$ld_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}  # NCCL says why when it fails
(cd "$build" && ctest -L gpu --output-on-failure --timeout 300) 2>&1 | tee "$logs/ctest.log"
status=${PIPESTATUS[0]}
cp "$build/Testing/Temporary/LastTest.log" "$logs/LastTest.log" 2>/dev/null || true

step "summary"
grep -E "tests passed|\*\*\*(Skipped|Failed)|Not Run|Timeout" "$logs/ctest.log" || true
# The skip reasons, once each ("no CUDA device: ...", "2 ranks on this node but only 1 ...").
grep -h -A1 ": Skipped$" "$build/Testing/Temporary/LastTest.log" 2>/dev/null |
  grep -vE ": Skipped$|^--$" | sort | uniq -c | sed 's/^/  skip reason: /' || true
echo "gpu_check: ctest exit status $status; logs in $logs"
exit "$status"
