#!/usr/bin/env bash
# The source rules of tools/check_sources.sh hold for the repository, and the check finds a
# violation of each rule when one is planted in a copy of the sources.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
"$root/tools/check_sources.sh" "$root" || exit 1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$root/src" "$root/tools" "$tmp/"
echo 'void f(MPI_Comm c, double* x) { MPI_Allreduce(MPI_IN_PLACE, x, 1, MPI_DOUBLE, MPI_SUM, c); }' \
  >>"$tmp/src/nn/linear.cpp"
echo 'void g() { std::printf("hello\n"); }' >>"$tmp/src/parallel/data_parallel.cpp"
printf '%s\n' 'int h(hid_t d) {' '  return H5Pget_layout(d);  // TESSERA_H5_LOCK in a comment is no lock' '}' \
  >>"$tmp/src/io/dataset.cpp"
printf '%s\n' 'int k(hid_t d) {' '  {' '    TESSERA_H5_LOCK;' '  }' '  return H5Dclose(d);' '}' \
  'hid_t m() {' '  return H5T_NATIVE_FLOAT;' '}' >>"$tmp/src/io/hdf5.cpp"
out=$("$root/tools/check_sources.sh" "$tmp")
code=$?
[[ $code -eq 1 ]] || { echo "FAIL: planted violations: exit $code, want 1"; exit 1; }
grep -q '^  src/nn/linear.cpp:[0-9]*:void f(MPI_Comm' <<<"$out" || { echo "FAIL: MPI call not found"; echo "$out"; exit 1; }
grep -q '^  src/parallel/data_parallel.cpp:[0-9]*:void g()' <<<"$out" || { echo "FAIL: printf not found"; echo "$out"; exit 1; }
grep -q '^  src/io/dataset.cpp:[0-9]*:  return H5Pget_layout' <<<"$out" ||
  { echo "FAIL: HDF5 call outside its lock not found"; echo "$out"; exit 1; }
grep -q '^  src/io/hdf5.cpp:[0-9]*:  return H5Dclose(d);' <<<"$out" ||
  { echo "FAIL: HDF5 call after its lock's block not found"; echo "$out"; exit 1; }
grep -q '^  src/io/hdf5.cpp:[0-9]*:  return H5T_NATIVE_FLOAT;' <<<"$out" ||
  { echo "FAIL: a predefined HDF5 type outside the lock not found"; echo "$out"; exit 1; }
[[ $(grep -c '^  src/io/' <<<"$out") -eq 3 ]] || { echo "FAIL: more HDF5 findings than planted"; echo "$out"; exit 1; }
echo "check_sources: finds planted violations"
