#!/usr/bin/env bash
# tools/gpu_prepare.sh — run HERE (the Debian build machine), before a GPU machine is lent: fills
# the git-ignored folder .carry/ with what tools/gpu_check.sh needs there and the GPU machine lacks
# (it has nvcc, CMake, ninja and PyTorch, but none of the Debian packages):
#
#   .carry/googletest/     GoogleTest's sources (Debian's googletest, /usr/src/googletest)
#   .carry/fmt/include/    fmt's headers (libfmt-dev), used header-only by the NCCL communicator
#   .carry/mpich.tar.gz    MPICH's runtime for the NCCL test: include/ (mpi.h ...), lib/ (libmpich
#                          and the shared libraries that it, mpiexec.hydra and hydra_pmi_proxy need,
#                          as ldd lists them, but glibc's own), bin/ (mpiexec.hydra,
#                          hydra_pmi_proxy). Compressed: libmpich alone is 40 MiB.
#   .carry/README.txt      what is there, versions, sizes, the glibc it needs
#
# Then carry .carry/ to the GPU machine with the working tree and run tools/gpu_check.sh there.
# Safe to re-run: .carry/ is rebuilt from scratch. Needs the Debian packages of tools/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
carry=.carry
limit_mib=60

die() {
  echo "gpu_prepare: $*" >&2
  exit 1
}

multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
gtest_src=/usr/src/googletest
fmt_inc=/usr/include/fmt
mpi_inc=/usr/include/$multiarch/mpich
libmpich=/usr/lib/$multiarch/libmpich.so.12
hydra=/usr/bin/mpiexec.hydra
proxy=/usr/bin/hydra_pmi_proxy
[[ -f $gtest_src/CMakeLists.txt ]] || die "no GoogleTest sources in $gtest_src (Debian: googletest)"
[[ -f $fmt_inc/format.h ]] || die "no fmt headers in $fmt_inc (Debian: libfmt-dev)"
[[ -f $mpi_inc/mpi.h ]] || die "no MPICH headers in $mpi_inc (Debian: libmpich-dev)"
[[ -e $libmpich ]] || die "no $libmpich (Debian: libmpich12)"
[[ -x $hydra && -x $proxy ]] || die "no $hydra or $proxy (Debian: mpich)"

version_of() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "?"; }

rm -rf "$carry"
mkdir -p "$carry/fmt/include"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# GoogleTest: the sources; gpu_check.sh builds and installs them in the build folder.
cp -a "$gtest_src" "$carry/googletest"

# fmt: headers only (FMT_HEADER_ONLY), with the licence.
cp -a "$fmt_inc" "$carry/fmt/include/"
cp /usr/share/doc/libfmt-dev/copyright "$carry/fmt/copyright" 2>/dev/null || true

# MPICH: headers, libraries, launcher.
mpich=$stage/mpich
mkdir -p "$mpich/include" "$mpich/lib" "$mpich/bin"
cp "$mpi_inc"/*.h "$mpich/include/"
cp -L "$libmpich" "$mpich/lib/libmpich.so.12"
ln -s libmpich.so.12 "$mpich/lib/libmpich.so"
cp "$hydra" "$proxy" "$mpich/bin/"
cp /usr/share/doc/libmpich12/copyright "$mpich/copyright" 2>/dev/null || true
# Every shared library they load, except glibc's (any Linux with a new enough glibc has those).
glibc='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libresolv|libutil|libanl|libnsl)\.so'
declare -A copied=()
while read -r soname path; do
  [[ $soname =~ $glibc || -n ${copied[$soname]:-} || $soname == libmpich.so.12 ]] && continue
  cp -L "$path" "$mpich/lib/$soname"
  copied[$soname]=$path
done < <(ldd "$libmpich" "$hydra" "$proxy" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }')
# The newest glibc symbol version any of them needs.
glibc_needed=$(for f in "$mpich"/lib/*.so* "$mpich"/bin/*; do
  [[ -L $f ]] || objdump -T "$f" 2>/dev/null | grep -o 'GLIBC_[0-9.]*'
done | sort -Vu | tail -n 1)
tar -C "$stage" -czf "$carry/mpich.tar.gz" mpich

names() { find "$1" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort | tr '\n' ' '; }
libs=$(names "$mpich/lib")
cat >"$carry/README.txt" <<EOF
Carried to the GPU machine for tools/gpu_check.sh (made by tools/gpu_prepare.sh on $(hostname),
$(date -u +%Y-%m-%dT%H:%MZ)). Not part of the repository (.gitignore).

googletest/         GoogleTest $(version_of googletest) sources (Debian googletest, $gtest_src)
fmt/include/fmt/    fmt $(version_of libfmt-dev) headers (Debian libfmt-dev), used header-only
mpich.tar.gz        MPICH $(version_of libmpich12) (Debian mpich, libmpich-dev), unpacked by
                    gpu_check.sh into its build folder:
                      include/  $(names "$mpich/include")
                      lib/      $libs
                      bin/      mpiexec.hydra hydra_pmi_proxy
                    Needs glibc >= ${glibc_needed#GLIBC_} on the GPU machine (objdump -T); where it
                    does not run, gpu_check.sh builds and runs the GPU tests without the NCCL test.
EOF

total_kib=$(du -sk "$carry" | cut -f1)
echo "gpu_prepare: filled $carry ($((total_kib / 1024)) MiB):"
du -sh "$carry"/* | sed 's/^/  /'
echo "  MPICH runtime: $(du -sh "$mpich" | cut -f1) unpacked; libraries: $libs"
echo "  needs $glibc_needed or newer on the GPU machine"
if ((total_kib > limit_mib * 1024)); then
  die "$carry is $((total_kib / 1024)) MiB, over the $limit_mib MiB budget"
fi
