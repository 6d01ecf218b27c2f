#!/usr/bin/env bash
# tools/setup.sh — install what Tessera needs on Debian 12, then configure and build into build/.
#
#   tools/setup.sh                 install missing packages, configure, build (Release)
#   BUILD_DIR=build-asan CMAKE_ARGS="-DTESSERA_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=Debug" \
#     tools/setup.sh               another configuration in another folder
#   SETUP_SKIP_BUILD=1 tools/setup.sh   packages only
#   tools/setup.sh --slurm         also Slurm and munge (slurm-wlm, munge), for the tests of the job
#                                  scripts under a local one-node Slurm (tools/slurm_local.sh);
#                                  TESSERA_SLURM_TESTS=1 does the same. Not installed otherwise:
#                                  those tests then skip.
#
# Safe to re-run: packages already installed are not touched, and the build is incremental.
set -euo pipefail
cd "$(dirname "$0")/.."

slurm=0
[[ ${TESSERA_SLURM_TESTS:-} == 1 ]] && slurm=1
for arg in "$@"; do
  case $arg in
    --slurm) slurm=1 ;;
    *)
      echo "usage: tools/setup.sh [--slurm]" >&2
      exit 1
      ;;
  esac
done

# Debian package names (DESIGN.md, "Dependencies"). MPICH is named explicitly.
packages=(
  build-essential cmake ninja-build pkg-config
  mpich libmpich-dev
  libhdf5-mpich-dev hdf5-tools
  libtrilinos-kokkos-dev
  libopenblas-dev
  libdnnl-dev             # oneDNN: the host convolutions (optional for CMake, installed here)
  libtoml11-dev libcli11-dev libfmt-dev
  libgtest-dev googletest libbenchmark-dev
  zlib1g-dev
  dataset-fashion-mnist   # the real dataset the tests import and the decks train on
  bible-kjv               # the King James Bible as text (`bible`): tessera-data import kjv
)
# Opt-in: the Slurm daemons and client commands and munge, which tools/slurm_local.sh runs as
# the current user from a temporary folder (nothing is configured system-wide; where systemd runs,
# Debian starts munge's own service on installation, and slurmd/slurmctld's fail for want of
# /etc/slurm/slurm.conf, which is harmless).
if ((slurm)); then
  packages+=(slurm-wlm munge)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "setup: installing ${#missing[@]} Debian packages: ${missing[*]}"
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install packages" >&2; exit 1; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: all ${#packages[@]} Debian packages present"
fi

# Other packages (python3-h5py-mpi, mpi4py) can pull OpenMPI in and flip the generic mpicc/mpiexec
# alternatives to it; pin them to MPICH so that every tool agrees on one MPI.
if [[ -x /usr/bin/mpicc.mpich ]] && update-alternatives --query mpi >/dev/null 2>&1; then
  if [[ $(readlink -f /etc/alternatives/mpi) != /usr/bin/mpicc.mpich ]]; then
    ${sudo:-} update-alternatives --set mpi /usr/bin/mpicc.mpich >/dev/null
    ${sudo:-} update-alternatives --set mpirun /usr/bin/mpirun.mpich >/dev/null 2>&1 || true
    echo "setup: MPI alternatives pinned to MPICH"
  fi
fi

[[ -n ${SETUP_SKIP_BUILD:-} ]] && exit 0

build_dir=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
mkdir -p "$build_dir"
log="$build_dir/configure.log"
# shellcheck disable=SC2086  # CMAKE_ARGS is a list of arguments
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} ${CMAKE_ARGS:-} \
  >"$log" 2>&1 || { cat "$log"; exit 1; }
echo "setup: configured $build_dir ($(grep -m1 '^-- Tessera' "$log" | cut -c4-))"
cmake --build "$build_dir" -j "$jobs" ${BUILD_TARGETS:+--target $BUILD_TARGETS}
echo "setup: built $build_dir"
