#!/usr/bin/env bash
# tessera-ckpt as a user runs it, at 1, 2 and 3 ranks, on the checkpoints tests/e2e/ckpt_fixture
# writes: exit codes 0 (OK / equal), 1 (verification failed / files differ) and 2 (bad input, with
# exactly one "error: " line from rank 0), and the messages. Where Debian's python3-numpy is
# installed, numpy loads the exported .npz and its arrays' checksums (the formula of
# docs/checkpoint-format.md, computed in numpy) equal those the checkpoint stores.
set -uo pipefail
bin=${TESSERA_BIN:?}/tessera-ckpt
fixture=${CKPT_FIXTURE:?path of the ckpt_fixture program}
mpiexec=${MPIEXEC:-mpiexec.mpich}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir" || exit 1
"$fixture" "$dir" || { echo "FAIL: ckpt_fixture $dir"; exit 1; }

failed=0
passed=0
out=""
code=0
run() {  # args: ranks, tessera-ckpt arguments... → $out (stdout and stderr), $code
  local n=$1
  shift
  out=$(timeout -k 10 60 "$mpiexec" -n "$n" "$bin" "$@" 2>&1 </dev/null)
  code=$?
}
# expect LABEL CODE PATTERN: the last run exited with CODE and a line of its output matches the
# extended regular expression PATTERN (whole line).
expect() {
  local label=$1 want=$2 pattern=$3
  if [[ $code -eq $want ]] && grep -qxE -- "$pattern" <<<"$out"; then
    passed=$((passed + 1))
    return 0
  fi
  echo "FAIL $label: exit $code (want $want); no line matching: $pattern"
  sed 's/^/    got: /' <<<"$out" | tail -n 20
  failed=$((failed + 1))
  return 1
}
# expect_error LABEL MESSAGE: exit 2 and exactly one line, "error: MESSAGE".
expect_error() {
  local label=$1 message=$2
  if [[ $code -eq 2 && "$out" == "error: $message" ]]; then
    passed=$((passed + 1))
    return 0
  fi
  echo "FAIL $label: exit $code (want 2), want exactly one line: error: $message"
  sed 's/^/    got: /' <<<"$out" | tail -n 20
  failed=$((failed + 1))
  return 1
}

head -c 5000 good.h5 >truncated.h5
mkfifo fifo.h5
mkdir -p fifo-run/ckpt && cp run/ckpt/ckpt-00000100.h5 fifo-run/ckpt/ && mkfifo fifo-run/ckpt/latest
echo "not a checkpoint" >text.h5
# attrs.h5: one bit flipped in the root attributes' storage (inside the text "tessera-checkpoint"):
# damaged metadata, not a missing attribute.
python3 -c 'import sys
data = bytearray(open("good.h5", "rb").read())
data[data.find(b"tessera-checkpoint") + 3] ^= 1
open("attrs.h5", "wb").write(data)'
size=$(stat -c %s good.h5)
hex='0x[0-9a-f]{16}'

for n in 1 2 3; do
  # verify: 0, 1, 2.
  run "$n" verify good.h5
  expect "verify good at $n" 0 "good.h5: OK \(9 tensors, 224 B, checksums match\)"
  run "$n" verify damaged.h5 good.h5
  expect "verify damaged at $n" 1 \
    "damaged.h5: /model/linear1/weight: checksum $hex does not match the stored $hex"
  expect "verify damaged summary at $n" 1 "damaged.h5: FAILED \(1 problem\)"
  run "$n" verify v2.h5
  expect "verify v2 at $n" 1 "v2.h5: format_version 2 is not one this Tessera reads \(it reads \
1\); a newer Tessera wrote it\?"
  run "$n" verify missing.h5
  expect_error "verify missing at $n" "missing.h5: no such file"
  run "$n" verify text.h5
  expect_error "verify not HDF5 at $n" "text.h5: not an HDF5 file"
  run "$n" verify truncated.h5
  expect_error "verify truncated at $n" \
    "truncated.h5: truncated: the file has 5000 bytes, its HDF5 superblock says $size"
  damaged_attrs="attrs.h5: the root attributes: damaged: HDF5 cannot read it \(incorrect metadata \
checksum after all read attempts\)"
  run "$n" verify attrs.h5
  expect "verify damaged attributes at $n" 1 "$damaged_attrs"
  run "$n" ls attrs.h5
  expect "ls damaged attributes at $n" 2 "error: $damaged_attrs"

  # diff: 0, 1, 2.
  run "$n" diff good.h5 same.h5
  expect "diff same at $n" 0 "verdict: equal: 9 tensors, bit for bit"
  expect "diff same metadata at $n" 0 '  created: "2026-11-27T14:02:11Z" \| "2026-11-28T09:00:00Z"'
  run "$n" diff good.h5 other.h5
  expect "diff other at $n" 1 "verdict: different: 9 of 9 tensors differ \(9 beyond tolerance\)"
  run "$n" diff good.h5 other.h5 --tolerance 0.5
  expect "diff other within 0.5 at $n" 0 \
    "verdict: equal within relative tolerance 0.5: 9 tensors \(9 not bit for bit\)"
  run "$n" diff good.h5 other.h5 --atol 100
  expect "diff other within absolute 100 at $n" 0 \
    "verdict: equal within absolute tolerance 100: 9 tensors \(9 not bit for bit\)"
  run "$n" diff good.h5 other.h5 --tolerance 1e-9 --atol 100
  expect "diff other within both at $n" 0 \
    "diff A = good.h5, B = other.h5 \(relative tolerance 1e-09 of max \|B\| plus absolute tolerance 100\)"
  run "$n" diff good.h5 other.h5 --atol -1
  expect_error "diff negative atol at $n" "--atol -1: must be a finite number >= 0"
  run "$n" diff good.h5 missing.h5
  expect_error "diff missing at $n" "missing.h5: no such file"
  run "$n" diff good.h5 v2.h5
  expect_error "diff v2 at $n" "v2.h5: format_version 2 is not one this Tessera reads (it reads \
1); a newer Tessera wrote it?"

  # average: the mean verifies and is the same whatever the rank count.
  run "$n" average good.h5 other.h5 -o "avg/avg$n.h5"
  expect "average at $n" 0 "averaged 2 checkpoints into avg/avg$n.h5: 5 model tensors averaged, \
4 optimizer tensors copied from good.h5 \(224 B\)"
  run "$n" verify "avg/avg$n.h5"
  expect "verify average at $n" 0 "avg/avg$n.h5: OK \(9 tensors, 224 B, checksums match\)"
  run "$n" diff avg/avg1.h5 "avg/avg$n.h5"
  expect "average at 1 and $n ranks equal" 0 "verdict: equal: 9 tensors, bit for bit"
  run "$n" average good.h5 v2.h5 -o avg/bad.h5
  expect_error "average v2 at $n" "v2.h5: format_version 2 is not one this Tessera reads (it reads \
1); a newer Tessera wrote it?"

  # ls, deck, export: rank 0 does the work, every rank leaves together.
  run "$n" ls good.h5
  expect "ls file at $n" 0 "  deck: 15 lines \(tessera-ckpt deck good.h5\)"
  run "$n" ls run/ckpt
  expect "ls folder at $n" 0 "run/ckpt: 2 checkpoints, 1 incomplete; latest names ckpt-00000200.h5"
  expect "ls folder latest at $n" 0 " 200  ckpt-00000200.h5 .*<- latest"
  run "$n" ls nowhere
  expect_error "ls missing at $n" "nowhere: no such file or folder"
  run "$n" export good.h5 -o w.pt
  expect_error "export extension at $n" "export: w.pt: the output must end in .h5 (HDF5) or .npz \
(numpy)"
  # The output is checked before anything is read or written: not an input (nor another spelling
  # or a hard link of one), not a folder, not empty; average writes .h5. Nothing is left behind.
  cp good.h5 in.h5 && ln -f in.h5 in-link.h5
  run "$n" export in.h5 -o in.h5
  expect_error "export over its input at $n" "in.h5: is also an input; -o must name another file"
  run "$n" export in.h5 -o ./in.h5
  expect_error "export over its input respelled at $n" \
    "./in.h5: is the input in.h5; -o must name another file"
  run "$n" export in.h5 -o in-link.h5
  expect_error "export over a hard link of its input at $n" \
    "in-link.h5: is the input in.h5; -o must name another file"
  run "$n" average good.h5 in.h5 -o in.h5
  expect_error "average over an input at $n" "in.h5: is also an input; -o must name another file"
  run "$n" average good.h5 other.h5 -o ""
  expect_error "average -o '' at $n" '-o "": an empty name; -o takes a file name'
  run "$n" export good.h5 -o ""
  expect_error "export -o '' at $n" '-o "": an empty name; -o takes a file name'
  run "$n" average good.h5 other.h5 -o .
  expect_error "average -o . at $n" ".: is a folder; -o takes a file name"
  run "$n" average good.h5 other.h5 -o newdir/
  expect_error "average -o newdir/ at $n" "newdir/: names a folder; -o takes a file name"
  run "$n" average good.h5 other.h5 -o avg.npz
  expect_error "average extension at $n" "average: avg.npz: the output must end in .h5 (HDF5)"
  if ! cmp -s good.h5 in.h5 || [[ -e newdir || -e avg.npz ]] || compgen -G '.*.partial' >/dev/null; then
    echo "FAIL refused outputs at $n: an input changed or a file was left behind"
    failed=$((failed + 1))
  fi
  # diff --tolerance: a finite number >= 0.
  run "$n" diff good.h5 other.h5 --tolerance -1
  expect_error "diff --tolerance -1 at $n" "--tolerance -1: must be a finite number >= 0"
  run "$n" diff good.h5 other.h5 --tolerance inf
  expect_error "diff --tolerance inf at $n" "--tolerance inf: must be a finite number >= 0"
  run "$n" export damaged.h5 -o "damaged$n.npz"
  expect "export damaged at $n" 2 "error: damaged.h5: /model/linear1/weight: checksum $hex does \
not match the stored $hex: the checkpoint does not verify, nothing exported \(tessera-ckpt verify \
damaged.h5\)"
  if [[ -e "damaged$n.npz" || -e ".damaged$n.npz.partial" ]]; then
    echo "FAIL export damaged at $n: left a file behind"
    failed=$((failed + 1))
  fi
  # A NaN whose checksum agrees: verify fails it, so export and average take nothing of it (they
  # would otherwise write it out as a fresh, checksummed file).
  run "$n" export nan.h5 -o "nan$n.npz"
  expect "export non-finite at $n" 2 "error: nan.h5: /model/linear1/weight: .*not finite.*: the \
checkpoint does not verify, nothing exported \(tessera-ckpt verify nan.h5\)"
  run "$n" average good.h5 nan.h5 -o "avg/nan$n.h5"
  expect "average non-finite at $n" 2 "error: nan.h5: /model/linear1/weight: .*not finite.*: the \
checkpoint does not verify, nothing written \(tessera-ckpt verify nan.h5\)"
  if [[ -e "nan$n.npz" || -e "avg/nan$n.h5" ]]; then
    echo "FAIL non-finite input at $n: export or average left a file behind"
    failed=$((failed + 1))
  fi
  # A FIFO where a checkpoint or latest should be: refused at once (opening it would wait for a
  # writer forever).
  run "$n" verify fifo.h5
  expect_error "verify FIFO at $n" "fifo.h5: is a FIFO (named pipe), not a file"
  run "$n" ls fifo-run/ckpt
  expect_error "ls FIFO latest at $n" "fifo-run/ckpt/latest: is a FIFO (named pipe), not a file"
  # A tensor the file does not store (chunked, never written: 2^38 float32 read as a TiB of fill
  # values) is refused at once by every command, on every rank.
  huge="/model/linear9/weight: cannot be read (shape (274877906944) needs 1.0 TiB but the file \
stores 0 bytes of it: the file is damaged or incomplete)"
  huge_re=$(sed 's/[().]/\\&/g' <<<"$huge")
  start=$SECONDS
  run "$n" verify huge.h5
  expect "verify huge at $n" 1 "huge.h5: $huge_re"
  expect "verify huge summary at $n" 1 "huge.h5: FAILED \(2 problems\)"
  run "$n" export huge.h5 -o "huge$n.npz"
  expect_error "export huge at $n" "huge.h5: $huge (and 1 more problem): the checkpoint does not \
verify, nothing exported (tessera-ckpt verify huge.h5)"
  run "$n" average good.h5 huge.h5 -o "avg/huge$n.h5"
  expect_error "average huge at $n" "huge.h5: $huge (and 1 more problem): the checkpoint does not \
verify, nothing written (tessera-ckpt verify huge.h5)"
  run "$n" diff good.h5 huge.h5
  expect_error "diff huge at $n" "huge.h5: $huge"
  run "$n" ls huge.h5
  expect "ls huge at $n" 0 "      weight +\(cannot be read: shape \(274877906944\) needs 1\.0 TiB .*\)"
  if ((SECONDS - start > 30)); then
    echo "FAIL huge at $n: $((SECONDS - start)) s for five commands (want seconds)"
    failed=$((failed + 1))
  fi
  if [[ -e "huge$n.npz" || -e "avg/huge$n.h5" ]] || compgen -G '.*.partial' >/dev/null ||
    compgen -G 'avg/.*.partial' >/dev/null; then
    echo "FAIL huge at $n: export or average left a file behind"
    failed=$((failed + 1))
  fi
  # An output that cannot be created: named as the user gave it, with the system's reason.
  run "$n" export good.h5 -o /proc/w.npz
  expect_error "export into /proc at $n" "/proc/w.npz: cannot create the file (No such file or \
directory)"
  run "$n" export good.h5 -o /proc/w.h5
  expect_error "export .h5 into /proc at $n" "/proc/w.h5: cannot create the file (No such file or \
directory)"
  run "$n" average good.h5 other.h5 -o /proc/a.h5
  expect_error "average into /proc at $n" "/proc/a.h5: cannot create the file (No such file or \
directory)"
  # ls of a folder: each checkpoint's step is its step attribute, not its name's.
  run "$n" ls renamed
  expect "ls renamed at $n" 0 " 200  ckpt-00000500\.h5 .*  its step attribute is 200, its name says \
500 \(renamed\?\)"
  run "$n"
  if [[ $code -ne 2 ]]; then
    echo "FAIL no subcommand at $n: exit $code (want 2)"
    failed=$((failed + 1))
  fi
done

# deck: what it prints runs again (here: equals the deck the fixture embedded).
"$bin" deck good.h5 >again.toml
code=$?
if [[ $code -ne 0 ]] || ! diff -u - again.toml <<'EOF'; then
# fixture deck
[run]
name = "fixture"
seed = 7

[model]
input = [3]
layers = [
  { linear = { out = 4 } }, { relu = {} }, { linear = { out = 2 } },
]

[optimizer]
type = "sgd"
lr = 0.1
momentum = 0.900000
EOF
  echo "FAIL deck: exit $code or another text"
  failed=$((failed + 1))
else
  passed=$((passed + 1))
fi

# export: .h5 holds the parameters under their names; .npz loads in numpy.
run 1 export good.h5 -o w.h5
expect "export h5" 0 "exported 5 tensors \(120 B\) of good.h5 \(step 100\) to w.h5"
if h5dump -H w.h5 | grep -q 'DATASET "linear1.weight"'; then
  passed=$((passed + 1))
else
  echo "FAIL export h5: no dataset linear1.weight"
  failed=$((failed + 1))
fi
run 2 export good.h5 -o w.npz
expect "export npz" 0 "exported 5 tensors \(120 B\) of good.h5 \(step 100\) to w.npz"
if /usr/bin/python3 -c 'import numpy' 2>/dev/null; then
  "$bin" ls good.h5 >ls.txt
  if /usr/bin/python3 - w.npz ls.txt <<'EOF'; then
import re, sys
import numpy as np

def checksum(x):  # docs/checkpoint-format.md
    z = (np.arange(x.size, dtype=np.uint64) << np.uint64(32)) | \
        x.astype(np.float32).ravel().view(np.uint32).astype(np.uint64)
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return "0x%016x" % int(z.sum(dtype=np.uint64))

npz = np.load(sys.argv[1])
assert sorted(npz.files) == ["linear1.bias", "linear1.weight", "linear2.bias", "linear2.weight",
                             "norm.running_mean"], npz.files
assert npz["linear1.weight"].shape == (4, 3) and npz["linear1.bias"].shape == (4,)
# The checksums `tessera-ckpt ls` lists for the model's tensors, in tree order.
listed = re.findall(r"^\s+\S+\s+\([0-9, ]+\)\s+float32\s+\d+\s+(0x[0-9a-f]{16})\s+(?:parameter|buffer)$",
                    open(sys.argv[2]).read(), re.M)
names = ["linear1.bias", "linear1.weight", "linear2.bias", "linear2.weight", "norm.running_mean"]
assert len(listed) == 5, listed
for name, stored in zip(names, listed):
    assert npz[name].dtype == np.float32, name
    assert checksum(npz[name]) == stored, (name, checksum(npz[name]), stored)
print("numpy: w.npz loads; the checksums of its 5 arrays equal the checkpoint's")
EOF
    passed=$((passed + 1))
  else
    echo "FAIL export npz: numpy check"
    failed=$((failed + 1))
  fi
else
  echo "note: /usr/bin/python3 has no numpy (Debian's python3-numpy), the numpy check is skipped"
fi

echo "tessera-ckpt CLI: $passed checks passed, $failed failed"
[[ $failed -eq 0 ]]
