#!/usr/bin/env bash
# Every malformed deck in tests/decks/ is refused the same way at 1 and at 2 ranks: exit code 2 and
# exactly one line "error: <message>" (from rank 0 only), with no rank left hanging (timeout 60).
#
# A deck's leading comment lines say what to run and expect (paths are relative to the repository
# root, where this script runs):
#   # expect: <the exact text after "error: ">
#   # args: key=value ...        overrides appended to the command line (optional)
#   # command: run               `tessera run` instead of `tessera check` (optional)
#   # ranks: 2                   rank counts to try instead of "1 2" (optional)
# In expect and args, $TMP is the folder holding the datasets made below (gs.h5: a Gray-Scott
# regression split /train of 4 samples (1, 16, 16) with 2 targets; fashion.h5: Fashion-MNIST;
# text.h5: a token stream /train; damaged copies of them made by data_fixture, $DATA_FIXTURE:
# gs-nan.h5, gs-inf.h5, empty.h5, fashion-label-train.h5, fashion-label-test.h5,
# fashion-damaged.h5, each described where it is made; the FIFOs fifo.h5, fifo-run/ckpt/latest) and
# $NP the number of ranks, $MEM this machine's memory ("23.5 GiB").
set -uo pipefail
bin=${TESSERA_BIN:?}
mpiexec=${MPIEXEC:-mpiexec.mpich}
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$mpiexec" -n 1 "$bin/tessera-data" gen -q -o "$tmp/gs.h5" --samples 4 --size 16 --dims 2 \
  --steps 5 --seed 1
# text.h5: a byte-token split /train of a short sentence repeated to 128 KiB.
yes "In the beginning God created the heaven and the earth." | head -c 131072 >"$tmp/text.txt"
"$bin/tessera-data" import text "$tmp/text.txt" --output "$tmp/text.h5" --validation 0 >/dev/null
# FIFOs where a checkpoint and a checkpoint folder's latest should be (opening one would wait for
# a writer forever): fifo.h5, fifo-run/ckpt/latest.
mkfifo "$tmp/fifo.h5"
mkdir -p "$tmp/fifo-run/ckpt" && mkfifo "$tmp/fifo-run/ckpt/latest"
have_fashion=1
if ! "$bin/tessera-data" import fashion-mnist --output "$tmp/fashion.h5" >"$tmp/import.log" 2>&1; then
  have_fashion=0
  echo "note: tessera-data import fashion-mnist failed, decks that need it are skipped:"
  sed 's/^/  /' "$tmp/import.log"
fi

# Damaged datasets. Without checksums (a file from before them, read unverified), values that
# must be refused when the data is opened: a NaN sample element, an Inf target, labels outside
# the 10 classes in /train or /test; with its checksums, one changed byte of a sample; and a
# split of no samples.
fixture=${DATA_FIXTURE:?the path of the data_fixture program (ctest sets it)}
damage() {  # args: from, to, data_fixture commands as "set DATASET INDEX VALUE" or "unsum"
  local from=$1 to=$2 change
  shift 2
  cp "$tmp/$from" "$tmp/$to"
  for change in "$@"; do
    # shellcheck disable=SC2086  # each change is a list of arguments
    "$fixture" ${change%% *} "$tmp/$to" $(cut -s -d' ' -f2- <<<"$change") || exit 1
  done
}
damage gs.h5 gs-nan.h5 unsum "set /train/x 529 nan" # sample 2, element 17
damage gs.h5 gs-inf.h5 unsum "set /train/y 3 inf"   # sample 1, target 1
"$fixture" empty "$tmp/empty.h5" || exit 1
if [[ $have_fashion -eq 1 ]]; then
  damage fashion.h5 fashion-label-train.h5 unsum "set /train/y 123 10"
  damage fashion.h5 fashion-label-test.h5 unsum "set /test/y 9999 2147483647"
  damage fashion.h5 fashion-damaged.h5 "set /train/x 31360300 200" # sample 40000, was 0
fi

# This machine's memory as Tessera prints it (sysconf's physical pages are /proc/meminfo's total).
mem=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)

passed=0
failed=0
skipped=0
failures=()

header() {  # args: deck, name → the value of "# name: value" among the deck's leading comments
  awk -v key="# $2: " '!/^#/ { exit } index($0, key) == 1 { print substr($0, length(key) + 1); exit }' "$1"
}

# Checks one finished case; prints nothing and returns 0 when it behaved, else prints why.
verdict() {  # args: label, exit code, output, expected message
  local label=$1 code=$2 out=$3 expect=$4 lines
  lines=$(grep -c '^error: ' <<<"$out")
  if [[ $code -eq 2 && $lines -eq 1 ]] && grep -qxF "error: $expect" <<<"$out"; then
    return 0
  fi
  if [[ $code -eq 124 || $code -eq 137 ]]; then
    echo "    $label: timed out after 60 s (a rank hangs?)"
  elif [[ $code -ne 2 || $lines -ne 1 ]]; then
    echo "    $label: exit $code (want 2), $lines line(s) starting with 'error: ' (want 1)"
  else
    echo "    $label: another message"
  fi
  echo "    want: error: $expect"
  sed 's/^/    got:  /' <<<"$out" | tail -n 12
  return 1
}

run_case() {  # args: n, command, deck, expected message, overrides...
  local n=$1 command=$2 deck=$3 expect=$4
  shift 4
  local out code
  out=$(timeout -k 10 60 "$mpiexec" -n "$n" "$bin/tessera" "$command" "$deck" "$@" 2>&1 </dev/null)
  code=$?
  verdict "at $n ranks" "$code" "$out" "$expect"
}

one_off() {  # args: label, result of the checks (0: all behaved)
  if [[ $2 -eq 0 ]]; then
    printf 'ok   %-42s\n' "($1)"
    passed=$((passed + 1))
  else
    printf 'FAIL %-42s\n' "($1)"
    failures+=("($1)")
    failed=$((failed + 1))
  fi
}

check_deck() {  # args: deck
  local deck=$1 name expect command ranks args n result=ok log=""
  name=$(basename "$deck")
  expect=$(header "$deck" expect)
  command=$(header "$deck" command)
  ranks=$(header "$deck" ranks)
  args=$(header "$deck" args)
  command=${command:-check}
  ranks=${ranks:-1 2}
  if [[ -z "$expect" ]]; then
    echo "FAIL $name: no '# expect:' header"
    failures+=("$name")
    failed=$((failed + 1))
    return
  fi
  # shellcheck disable=SC2016  # a literal $TMP: the placeholder
  if [[ $have_fashion -eq 0 && "$expect $args" == *'$TMP/fashion'* ]]; then
    echo "skip $name (needs Fashion-MNIST)"
    skipped=$((skipped + 1))
    return
  fi
  for n in $ranks; do
    local want=${expect//\$TMP/$tmp}
    want=${want//\$NP/$n}
    want=${want//\$MEM/$mem}
    local -a overrides=()
    local a
    for a in $args; do
      a=${a//\$TMP/$tmp}
      overrides+=("${a//\$NP/$n}")
    done
    if [[ $command == run ]]; then
      overrides+=("run.output=$tmp/runs/${name%.toml}")  # never write into the source tree
    fi
    if ! log+=$(run_case "$n" "$command" "$deck" "$want" "${overrides[@]}"); then
      result=FAIL
    fi
    log+=$'\n'
  done
  if [[ $result == ok ]]; then
    printf 'ok   %-42s %s at %s ranks\n' "$name" "$command" "${ranks// /, }"
    passed=$((passed + 1))
  else
    printf 'FAIL %-42s %s\n' "$name" "$command"
    printf '%s' "$log" | sed '/^$/d'
    failures+=("$name")
    failed=$((failed + 1))
  fi
}

start=$SECONDS
decks=(tests/decks/*.toml)
for deck in "${decks[@]}"; do
  check_deck "$deck"
done

# A deck that is not there at all.
result=0
for n in 1 2; do
  run_case "$n" check tests/decks/no-such-deck.toml \
    "tests/decks/no-such-deck.toml: cannot read the deck: no such file" || result=1
done
one_off "missing deck file, check at 1, 2 ranks" $result

# A folder given as the deck (it used to be read as an empty deck).
result=0
for n in 1 2; do
  run_case "$n" check tests/decks "tests/decks: cannot read the deck: it is a folder, not a file" ||
    result=1
done
one_off "a folder as the deck, check at 1, 2 ranks" $result

# Decks no text editor writes, made here: 100 000 nested lists (toml11's recursive parser used to
# overflow the stack) and a NUL byte.
odd=$(mktemp -d)
python3 -c "print('x = ' + '[' * 100000 + ']' * 100000)" >"$odd/nested.toml"
printf '[run]\nseed = 1\000\n' >"$odd/nul.toml"
result=0
for n in 1 2; do
  run_case "$n" check "$odd/nested.toml" "$odd/nested.toml:1: lists and tables nested more than \
64 deep" || result=1
  run_case "$n" check "$odd/nul.toml" "$odd/nul.toml:2: the deck holds a NUL byte: is it text?" ||
    result=1
  # An override with a byte that is not UTF-8 inside a literal string (toml11 read past its buffer).
  run_case "$n" check inputs/fashion_mlp.toml "command line: 'run.name=' {} \\x93=' {}': the \
argument holds byte 0x93, which is not UTF-8 text (TOML is UTF-8)" "$(printf "run.name=' {} \x93=' {}")" ||
    result=1
done
rm -rf "$odd"
one_off "100 000 nested lists, a NUL byte, a non-UTF-8 override, check at 1, 2 ranks" $result

# Decks that are no text file: empty, a named pipe no one writes to (opening it used to block),
# a device that never ends; and a subcommand that does not exist.
odd=$(mktemp -d)
: >"$odd/empty.toml"
mkfifo "$odd/fifo.toml"
result=0
for n in 1 2; do
  run_case "$n" check "$odd/empty.toml" "$odd/empty.toml: the deck is empty" || result=1
  run_case "$n" check "$odd/fifo.toml" "$odd/fifo.toml: the deck is empty" || result=1
  run_case "$n" check /dev/zero "/dev/zero: cannot read the deck: it is a device, not a file" ||
    result=1
  run_case "$n" frob inputs/fashion_mlp.toml "unknown subcommand 'frob'; the subcommands are run, \
check, generate (--help)" || result=1
done
rm -rf "$odd"
one_off "an empty deck, a FIFO, a device, an unknown subcommand at 1, 2 ranks" $result

# A dataset cut short (a copy that did not finish): its sizes, not HDF5's "unable to open file".
odd=$(mktemp -d)
head -c 3000 "$tmp/gs.h5" >"$odd/gs-cut.h5"
size=$(stat -c %s "$tmp/gs.h5")
printf '%s\n' '[data]' "train = \"$odd/gs-cut.h5:/train\"" 'batch = 4' '[model]' \
  'input = [1, 16, 16]' 'layers = [ { flatten = {} }, { linear = { out = 2 } } ]' 'loss = "mse"' \
  '[optimizer]' 'type = "sgd"' 'lr = 0.1' >"$odd/deck.toml"
result=0
for n in 1 2; do
  run_case "$n" check "$odd/deck.toml" "$odd/deck.toml:2: data.train: $odd/gs-cut.h5: truncated: \
the file has 3000 bytes, its HDF5 superblock says $size" || result=1
done
rm -rf "$odd"
one_off "a truncated dataset, check at 1, 2 ranks" $result

# A split whose y was rewritten without checksums (x keeps its own): accepted with a note that
# names y, and x is still verified (a changed sample is refused).
odd=$(mktemp -d)
damage gs.h5 gs-ysum.h5 "unsum y"
damage gs.h5 gs-ysum-x.h5 "unsum y" "set /train/x 529 0.5" # sample 2, element 17
printf '%s\n' '[data]' 'batch = 4' '[model]' 'input = [1, 16, 16]' \
  'layers = [ { flatten = {} }, { linear = { out = 2 } } ]' 'loss = "mse"' \
  '[optimizer]' 'type = "sgd"' 'lr = 0.1' >"$odd/deck.toml"
result=0
for n in 1 2; do
  out=$(timeout -k 10 60 "$mpiexec" -n "$n" "$bin/tessera" check "$odd/deck.toml" \
    data.train="$tmp/gs-ysum.h5:/train" 2>&1 </dev/null)
  code=$?
  note="note: data.train = \"$tmp/gs-ysum.h5:/train\": its y has no checksums while its x has (was \
y rewritten by another tool?), so y's bytes are not verified: \`tessera-data checksum $tmp/gs-ysum.h5\` \
adds them"
  [[ $code == 0 && $(grep -cxF "$note" <<<"$out") == 1 ]] ||
    { echo "    at $n ranks: exit $code, want 0 and one line: $note"; sed 's/^/    got:  /' <<<"$out" | tail -n 5; result=1; }
  run_case "$n" check "$odd/deck.toml" "command line: data.train: $tmp/gs-ysum-x.h5:/train: x of \
samples [0, 4) do not match their checksum (crc32): the file is damaged or was changed after it was \
written" data.train="$tmp/gs-ysum-x.h5:/train" || result=1
done
rm -rf "$odd"
one_off "y without checksums: a note naming y; x verified, at 1, 2 ranks" $result

# An override given to one rank only: the ranks' decks differ, and they say so together.
out=$(timeout -k 10 60 "$mpiexec" -n 1 "$bin/tessera" check inputs/fashion_mlp.toml : \
  -n 1 "$bin/tessera" check inputs/fashion_mlp.toml optimizer.lr=0.2 2>&1 </dev/null)
code=$?
verdict "at 2 ranks" "$code" "$out" "the ranks disagree on the deck: this rank's resolved deck \
differs from another rank's (were key=value overrides given to some ranks only?)"
one_off "override on rank 1 only, check at 2 ranks" $?

# Overrides as people type them: spaces around '=' are the same override; a key given twice
# keeps the last, with one line saying so (not an error); a value that starts like a TOML table
# and does not parse is refused (bad deck 197), not taken as a string.
odd=$(mktemp -d)
printf '%s\n' '[data]' "train = \"$tmp/gs.h5:/train\"" 'batch = 4' '[model]' \
  'input = [1, 16, 16]' 'layers = [ { flatten = {} }, { linear = { out = 2 } } ]' 'loss = "mse"' \
  '[optimizer]' 'type = "sgd"' 'lr = 0.1' >"$odd/deck.toml"
out=$(timeout -k 10 60 "$bin/tessera" check "$odd/deck.toml" 'run.steps = 3' run.steps=5 2>&1 </dev/null)
code=$?
result=0
[[ $code == 0 ]] || { echo "    spaces and a repeated key: exit $code: $(grep error <<<"$out")"; result=1; }
grep -qx "steps = 5" <<<"$out" || { echo "    the last override did not win"; result=1; }
[[ $(grep -c "^command line: run.steps is given twice ('run.steps = 3', then 'run.steps=5'): the last is used$" <<<"$out") == 1 ]] ||
  { echo "    no one line about the repeated key"; result=1; }
rm -rf "$odd"
one_off "overrides with spaces, a key given twice" $result

# tessera check on a checkpoint.restart that does not fit the deck: the optimizer and every shape
# that differs in one line, as a restart would refuse them; the checkpoint of the same deck is OK.
odd=$(mktemp -d)
printf '%s\n' '[run]' 'steps = 2' '[data]' "train = \"$tmp/gs.h5:/train\"" 'batch = 4' '[model]' \
  'input = [1, 16, 16]' \
  'layers = [ { flatten = {} }, { linear = { out = 4 } }, { relu = {} }, { linear = { out = 2 } } ]' \
  'loss = "mse"' '[optimizer]' 'type = "sgd"' 'lr = 0.1' '[checkpoint]' 'every_steps = 2' >"$odd/deck.toml"
result=0
timeout -k 10 60 "$bin/tessera" run "$odd/deck.toml" run.output="$odd/run" >"$odd/run.log" 2>&1 </dev/null ||
  { echo "    the run that makes the checkpoint: exit $?"; result=1; }
ckpt=$odd/run/ckpt/ckpt-00000002.h5
for n in 1 2; do
  run_case "$n" check "$odd/deck.toml" "command line: checkpoint $ckpt does not fit this deck: it \
holds the state of optimizer \"sgd\", the deck asks for \"adamw\"; its linear1.weight is (4, 256), \
the model's is (5, 256); its linear1.bias is (4,), the model's is (5,); its linear3.weight is (2, 4), \
the model's is (2, 5)" checkpoint.restart="$ckpt" optimizer.type='"adamw"' 'model.layers[1].linear.out=5' ||
    result=1
done
out=$(timeout -k 10 60 "$bin/tessera" check "$odd/deck.toml" checkpoint.restart="$ckpt" 2>&1 </dev/null) ||
  { echo "    the checkpoint of the same deck: $(grep error <<<"$out")"; result=1; }
rm -rf "$odd"
one_off "check: a checkpoint.restart of another optimizer and shapes, at 1, 2 ranks" $result

echo "bad decks: $passed passed, $failed failed, $skipped skipped ($((SECONDS - start)) s)"
if [[ ${#decks[@]} -lt 30 ]]; then
  echo "FAIL: only ${#decks[@]} decks in tests/decks (expected at least 30)"
  exit 1
fi
if [[ $failed -ne 0 ]]; then
  echo "failed: ${failures[*]}"
  exit 1
fi
