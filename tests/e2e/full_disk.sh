#!/usr/bin/env bash
# A full disk (issue 18): a small tmpfs under checkpoint.dir or run.output. At 1 and 2 ranks:
#   - a checkpoint that cannot fit is refused before anything is written ("no space left on
#     device"), exit 74 on every rank together;
#   - a disk that fills in the middle of a checkpoint's writes (TESSERA_TEST_NO_SPACE_CHECK skips
#     the check first) ends the same way, never in a hang or a crash at exit;
#   - in both, no partial file is left, `latest` and the last good checkpoint are untouched and
#     the run restarts from it;
#   - metrics that cannot be written stop the run with the same exit code (they used to be lost
#     silently, exit 0).
# Needs root to mount the tmpfs: prints "[  SKIPPED ]" otherwise.
set -uo pipefail
bin=${TESSERA_BIN:?}
mpiexec=${MPIEXEC:-mpiexec.mpich}
tmp=$(mktemp -d)
disk=$tmp/disk
mkdir -p "$disk"
if ! mount -t tmpfs -o size=3m tmpfs "$disk" 2>/dev/null; then
  echo "[  SKIPPED ] cannot mount a tmpfs here (not root?)"
  rm -rf "$tmp"
  exit 0
fi
trap 'umount "$disk"; rm -rf "$tmp"' EXIT
failed=0
fail() {
  echo "FAIL: $*"
  failed=1
}
empty_disk() {
  find "$disk" -mindepth 1 -delete
}

"$mpiexec" -n 1 "$bin/tessera-data" gen -q -o "$tmp/gs.h5" --samples 64 --size 16 --dims 2 \
  --steps 5 --seed 1 || exit 1
# A checkpoint of this model takes 1.5 MiB: the 3 MiB disk holds one, and not a second beside it.
printf '%s\n' '[run]' 'seed = 5' 'steps = 300' 'log_every = 1000' 'watchdog_s = 20' \
  '[data]' "train = \"$tmp/gs.h5:/train\"" 'batch = 8' \
  '[model]' 'input = [1, 16, 16]' \
  'layers = [ { flatten = {} }, { linear = { out = 512 } }, { relu = {} }, { linear = { out = 2 } } ]' \
  'loss = "mse"' '[optimizer]' 'type = "adamw"' 'lr = 0.0001' \
  '[checkpoint]' "dir = \"$disk/ckpt\"" 'every_steps = 100' 'keep = 3' 'restart = "auto"' \
  >"$tmp/deck.toml"

expect_full() {  # expect_full NP LABEL PATTERN [ENV...]: a run that must end with exit 74
  local np=$1 label=$2 pattern=$3
  shift 3
  empty_disk
  rm -rf "$tmp/run"
  env "$@" timeout -k 5 120 "$mpiexec" -n "$np" "$bin/tessera" run "$tmp/deck.toml" \
    run.output="$tmp/run" >"$tmp/out.log" 2>&1
  local rc=$?
  local errors
  errors=$(grep -c "^error:" "$tmp/out.log")
  echo "$np rank(s), $label: exit $rc; $(grep "^error:" "$tmp/out.log" | head -n 1 | cut -c1-200)"
  ((rc == 74)) || fail "$label at $np ranks: exit $rc, expected 74 ($(tail -n 3 "$tmp/out.log"))"
  ((errors == 1)) || fail "$label at $np ranks: $errors error lines, expected 1"
  grep -qi "$pattern" "$tmp/out.log" || fail "$label at $np ranks: no '$pattern' in the message"
  if ls -a "$disk/ckpt" 2>/dev/null | grep -q partial; then
    fail "$label at $np ranks: a partial file is left: $(ls -a "$disk/ckpt")"
  fi
  local good
  good=$(head -n 1 "$disk/ckpt/latest" 2>/dev/null)
  [[ $good == ckpt-00000100.h5 ]] || fail "$label at $np ranks: latest names '$good'"
  "$mpiexec" -n 1 "$bin/tessera-ckpt" verify "$disk/ckpt/$good" >/dev/null 2>&1 ||
    fail "$label at $np ranks: $good does not verify"
}

for np in 1 2; do
  # The first checkpoint (step 100) fits; the second cannot fit beside it.
  expect_full "$np" "checkpoint that cannot fit" "no space left on device"
  # The same with the check skipped: the disk fills during the writes of the second.
  expect_full "$np" "disk full mid-write" "no space left on device" TESSERA_TEST_NO_SPACE_CHECK=1
  # Restart from the last good checkpoint, the checkpoints now elsewhere: it resumes at step 100.
  out=$(timeout -k 5 120 "$mpiexec" -n "$np" "$bin/tessera" run "$tmp/deck.toml" \
    run.output="$tmp/run" checkpoint.restart="\"$disk/ckpt/ckpt-00000100.h5\"" \
    checkpoint.dir="\"$tmp/ck2\"" 2>&1) ||
    fail "restart from the last good checkpoint at $np ranks: $(tail -n 3 <<<"$out")"
  grep -q "restart: from $disk/ckpt/ckpt-00000100.h5 at step 100" <<<"$out" ||
    fail "the restart at $np ranks did not resume at step 100"
  rm -rf "$tmp/ck2"
  # Metrics on the full disk: run.output there, the checkpoints elsewhere.
  empty_disk
  head -c 2900000 /dev/zero >"$disk/filler"
  timeout -k 5 120 "$mpiexec" -n "$np" "$bin/tessera" run "$tmp/deck.toml" run.output="$disk/run" \
    run.log_every=1 run.steps=20000 checkpoint.dir="\"$tmp/ck3\"" >"$tmp/out.log" 2>&1
  rc=$?
  echo "$np rank(s), metrics on a full disk: exit $rc; $(grep "^error:" "$tmp/out.log" | cut -c1-160)"
  ((rc == 74)) || fail "metrics on a full disk at $np ranks: exit $rc, expected 74"
  grep -q "^error: cannot write $disk/run/metrics.jsonl (No space left on device)" "$tmp/out.log" ||
    fail "metrics on a full disk at $np ranks: message $(grep "^error:" "$tmp/out.log")"
  rm -rf "$tmp/ck3"
done
((failed)) && echo "FAILED" || echo "every full-disk case: exit 74, one message, nothing half-written"
exit $failed
