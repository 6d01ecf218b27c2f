#!/usr/bin/env bash
# tessera-data import text deals the text's 64 KiB blocks to /train and /validation by the rule
# "block i is validation iff floor((i+1)·f) > floor(i·f)" — computed here independently with awk
# and dd — byte for byte, writes the same file at 1 and 2 ranks, and h5dump and tessera-data ls
# read back what it wrote; bad input (a missing file, --validation 0.9, `bible` not on PATH) exits 2
# with exactly one "error: " line at 1 and 2 ranks; and, where Debian's bible-kjv is installed,
# import kjv holds every byte of `bible Gen1:1-Rev22:21` (else that part prints "[  SKIPPED ]").
set -euo pipefail
bin=${TESSERA_BIN:?}/tessera-data
mpiexec=${MPIEXEC:-mpiexec.mpich}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# expect_split TEXT FRACTION PREFIX: PREFIX.train and PREFIX.validation, the blocks of TEXT that the
# rule gives each split, concatenated in order.
expect_split() {
  local text=$1 fraction=$2 prefix=$3 bytes
  bytes=$(stat -c %s "$text")
  : >"$prefix.train"
  : >"$prefix.validation"
  awk -v n="$bytes" -v f="$fraction" 'BEGIN {
    for (i = 0; i * 65536 < n; i++) print i, (int((i + 1) * f) > int(i * f)) ? "validation" : "train"
  }' | while read -r block split; do
    dd if="$text" bs=65536 skip="$block" count=1 status=none >>"$prefix.$split"
  done
}

# tokens_of FILE SPLIT OUT: the split's tokens as raw bytes (h5dump's binary output).
tokens_of() {
  h5dump -d "/$2/tokens" -b LE -o "$3" "$1" >/dev/null
}

# expect_error N MESSAGE COMMAND...: exit 2 and exactly the line "error: MESSAGE" at N ranks.
source "$(dirname "$0")/expect_error.bash"

# Two files, 658895 bytes together: 10 whole blocks and one of 3535 bytes.
seq 1 60000 >"$dir/a.txt"
seq 60001 110000 >"$dir/b.txt"
cat "$dir/a.txt" "$dir/b.txt" >"$dir/ab.txt"
for fraction in 0.5 0.3 0.1; do
  expect_split "$dir/ab.txt" "$fraction" "$dir/want"
  train=$(stat -c %s "$dir/want.train")
  validation=$(stat -c %s "$dir/want.validation")
  for n in 1 2; do
    out=$("$mpiexec" -n $n "$bin" import text "$dir/a.txt" "$dir/b.txt" -o "$dir/t$n.h5" \
      --validation "$fraction")
    want="tessera-data: wrote $dir/t$n.h5: train $train, validation $validation tokens (vocab 256, bytes)"
    [[ $out == "$want" ]] || fail "--validation $fraction at $n ranks printed '$out', want '$want'"
    test ! -e "$dir/t$n.h5.partial" || fail "a partial file is left"
  done
  cmp -s "$dir/t1.h5" "$dir/t2.h5" || fail "--validation $fraction: 1 and 2 ranks wrote different files"
  for split in train validation; do
    tokens_of "$dir/t1.h5" "$split" "$dir/got.$split"
    cmp -s "$dir/got.$split" "$dir/want.$split" ||
      fail "--validation $fraction: /$split/tokens is not the blocks the rule gives it"
  done
  echo "--validation $fraction: train $train, validation $validation tokens, as the block rule says"
done

# What h5dump and ls read back (the last file: --validation 0.1, block 9 held out).
header=$(h5dump -H -d /validation/tokens "$dir/t1.h5")
grep -q "H5T_STD_U8LE" <<<"$header" || fail "tokens are not uint8: $header"
grep -q "SIMPLE { ( 65536 ) / ( 65536 ) }" <<<"$header" || fail "validation holds not 1 block: $header"
h5dump -a /train/task "$dir/t1.h5" | grep -q '"language_modeling"' || fail "@task"
h5dump -a /train/vocab "$dir/t1.h5" | grep -q '(0): 256' || fail "@vocab"
h5dump -a /format_version "$dir/t1.h5" | grep -q '(0): 1' || fail "@format_version"
listing=$("$bin" ls "$dir/t1.h5")
for line in "/train/tokens (593359) uint8" "/validation/tokens (65536) uint8" \
  '@task = "language_modeling"' '@tokenizer = "bytes"' "@vocab = 256" \
  "tokens: 593359 of vocab 256 (bytes), 11 distinct ids in [10, 57]"; do
  grep -qF -- "$line" <<<"$listing" || fail "ls does not list '$line':"$'\n'"$listing"
done
echo "h5dump and ls read back the splits"

# --validation 0: /train alone.
out=$("$bin" import text "$dir/a.txt" -o "$dir/train_only.h5" --validation 0)
[[ $out == "tessera-data: wrote $dir/train_only.h5: train $(stat -c %s "$dir/a.txt") tokens, no validation split (vocab 256, bytes)" ]] ||
  fail "--validation 0 printed '$out'"
if h5dump -H -g /validation "$dir/train_only.h5" >/dev/null 2>&1; then
  fail "--validation 0 wrote a /validation group"
fi

for n in 1 2; do
  expect_error $n "tessera-data import text: $dir/missing.txt: no such file" \
    "$bin" import text "$dir/a.txt" "$dir/missing.txt" -o "$dir/bad.h5"
  expect_error $n "tessera-data import text: --validation 0.9 must be in [0, 0.5]" \
    "$bin" import text "$dir/a.txt" -o "$dir/bad.h5" --validation 0.9
  expect_error $n "tessera-data import text: --validation 0.05 leaves the validation split empty: its first block is block 19 (from byte 1245184), but the text has 658895 bytes; give more text or a larger --validation" \
    "$bin" import text "$dir/ab.txt" -o "$dir/bad.h5"
  expect_error $n "tessera-data import kjv: the \`bible\` program is not installed (apt-get install bible-kjv; tools/setup.sh installs it)" \
    env PATH=/nonexistent "$bin" import kjv -o "$dir/bad.h5"
  test ! -e "$dir/bad.h5" || fail "a refused import left $dir/bad.h5"
  # The output is checked before anything is written: not an input (nor another spelling or a
  # hard link of one), not a folder, not empty.
  cp "$dir/a.txt" "$dir/self.txt"
  ln -f "$dir/self.txt" "$dir/self-link.txt"
  mkdir -p "$dir/folder"
  expect_error $n "$dir/self.txt: is also an input; -o must name another file" \
    "$bin" import text "$dir/self.txt" -o "$dir/self.txt"
  expect_error $n "$dir/./self.txt: is the input $dir/self.txt; -o must name another file" \
    "$bin" import text "$dir/b.txt" "$dir/self.txt" -o "$dir/./self.txt"
  expect_error $n "$dir/self-link.txt: is the input $dir/self.txt; -o must name another file" \
    "$bin" import text "$dir/self.txt" -o "$dir/self-link.txt"
  cmp -s "$dir/a.txt" "$dir/self.txt" || fail "import text over its input changed the input"
  for command in "import text $dir/a.txt" "import fashion-mnist"; do
    # shellcheck disable=SC2086  # $command is words
    expect_error $n '-o "": an empty name; -o takes a file name' "$bin" $command -o ""
    # shellcheck disable=SC2086
    expect_error $n "$dir/folder: is a folder; -o takes a file name" "$bin" $command -o "$dir/folder"
    # shellcheck disable=SC2086
    expect_error $n "$dir/newdir/: names a folder; -o takes a file name" \
      "$bin" $command -o "$dir/newdir/"
  done
  # An output that cannot be created: named as given (not as its .partial), with the reason.
  expect_error $n "/proc/t.h5: cannot create the file (No such file or directory)" \
    "$bin" import text "$dir/a.txt" -o /proc/t.h5 --validation 0
  if [[ -r /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
    expect_error $n "/proc/fm.h5: cannot create the file (No such file or directory)" \
      "$bin" import fashion-mnist -o /proc/fm.h5
  fi
  test ! -e "$dir/newdir" || fail "a refused import made $dir/newdir"
  [[ -z $(ls -A "$dir/folder") ]] || fail "a refused import wrote into $dir/folder"
  ! compgen -G "$dir/*.partial" >/dev/null || fail "a refused import left a .partial file"
done
echo "bad input: exit 2 with one message at 1 and 2 ranks"

if ! command -v bible >/dev/null; then
  echo "[  SKIPPED ] import kjv: Debian's bible-kjv is not installed (tools/setup.sh installs it)"
  exit 0
fi
# bible breaks its lines at COLUMNS − 1; tessera-data runs it with COLUMNS=80.
COLUMNS=80 bible Gen1:1-Rev22:21 </dev/null >"$dir/kjv.txt"
bytes=$(stat -c %s "$dir/kjv.txt")
out=$("$mpiexec" -n 2 "$bin" import kjv -o "$dir/kjv.h5")
[[ $out =~ ^tessera-data:\ wrote\ $dir/kjv.h5:\ train\ ([0-9]+),\ validation\ ([0-9]+)\ tokens\ \(vocab\ 256,\ bytes\)$ ]] ||
  fail "import kjv printed '$out'"
((BASH_REMATCH[1] + BASH_REMATCH[2] == bytes)) ||
  fail "import kjv: train ${BASH_REMATCH[1]} + validation ${BASH_REMATCH[2]} tokens, but bible prints $bytes bytes"
expect_split "$dir/kjv.txt" 0.05 "$dir/kjv.want"
for split in train validation; do
  tokens_of "$dir/kjv.h5" "$split" "$dir/kjv.got.$split"
  cmp -s "$dir/kjv.got.$split" "$dir/kjv.want.$split" ||
    fail "import kjv: /$split/tokens is not the blocks of bible's output the rule gives it"
done
h5dump -a /licence "$dir/kjv.h5" | grep -q '"public domain"' || fail "kjv @licence"
h5dump -a /source "$dir/kjv.h5" | grep -q 'bible-kjv' || fail "kjv @source does not name bible-kjv"
echo "import kjv: the $bytes bytes of \`bible Gen1:1-Rev22:21\` (train ${BASH_REMATCH[1]}, validation ${BASH_REMATCH[2]})"
