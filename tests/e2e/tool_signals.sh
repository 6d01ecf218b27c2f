#!/usr/bin/env bash
# The tools stopped by a signal: tessera-ckpt export and average, tessera-data gen and import, at 2
# ranks through MPICH's mpiexec (SIGTERM to mpiexec, which forwards it, as a scheduler does) and
# at one rank without it (SIGTERM, SIGINT), at random moments while they work. Every run must
# exit 75 with exactly one line, "error: stopped by SIG...: nothing written to OUT", and leave
# neither OUT nor a partial file: never 0 (MPICH's Hydra used to report 0 for a rank killed by
# the signal, with no message and no file), never a .partial left behind.
set -uo pipefail
bin=${TESSERA_BIN:?}
fixture=${CKPT_FIXTURE:?path of the ckpt_fixture program}
mpiexec=${MPIEXEC:-mpiexec.mpich}
runs=${RUNS:-6}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir" || exit 1
failed=0
passed=0

# big.h5: a checkpoint of 256 MiB (verified, then read again by export and average: seconds).
"$fixture" "$dir" --big 256 || { echo "FAIL: ckpt_fixture --big"; exit 1; }
cp big.h5 big2.h5
mkdir -p out
# A text of 96 MiB for import text (reading, splitting and checksumming it takes a while).
head -c $((96 << 20)) /dev/urandom | base64 >text.txt

# stopped LABEL SIGNAL DELAY_MS OUT RANKS COMMAND...: runs COMMAND (through mpiexec when RANKS is
# 2), sends SIGNAL after DELAY_MS to mpiexec (or to the command), and checks the outcome.
stopped() {
  local label=$1 sig=$2 ms=$3 out=$4 ranks=$5 pid code text
  shift 5
  rm -f "$out" out/*.partial out/.*.partial
  if [[ $ranks -gt 1 ]]; then
    timeout -k 10 120 "$mpiexec" -n "$ranks" "$@" >run.log 2>&1 </dev/null &
  else
    timeout -k 10 120 "$@" >run.log 2>&1 </dev/null &
  fi
  pid=$!
  sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
  # The child of `timeout` (mpiexec, or the tool itself).
  kill "-$sig" "$(pgrep -P "$pid")" 2>/dev/null
  wait "$pid"
  code=$?
  text=$(cat run.log)
  local want="error: stopped by SIG$sig: nothing written to $out"
  if [[ $code -eq 75 && "$text" == "$want" && ! -e "$out" ]] &&
    ! compgen -G 'out/*.partial' >/dev/null && ! compgen -G 'out/.*.partial' >/dev/null; then
    passed=$((passed + 1))
    return 0
  fi
  echo "FAIL $label (SIG$sig after $ms ms): exit $code (want 75), want exactly: $want"
  sed 's/^/    got: /' <<<"$text" | tail -n 10
  ls -A out | sed 's/^/    left: /'
  failed=$((failed + 1))
}

RANDOM=7
for ((i = 1; i <= runs; ++i)); do
  stopped "export at 2 ranks, run $i" TERM $((100 + RANDOM % 400)) out/w.npz 2 \
    "$bin/tessera-ckpt" export big.h5 -o out/w.npz
  stopped "average at 2 ranks, run $i" TERM $((100 + RANDOM % 400)) out/avg.h5 2 \
    "$bin/tessera-ckpt" average big.h5 big2.h5 -o out/avg.h5
  stopped "gen at 2 ranks, run $i" TERM $((100 + RANDOM % 400)) out/gs.h5 2 \
    "$bin/tessera-data" gen -o out/gs.h5 --samples 1024 --size 64 --steps 400 -q
done
for sig in TERM INT; do
  stopped "export at 1 rank" "$sig" 200 out/w.h5 1 "$bin/tessera-ckpt" export big.h5 -o out/w.h5
  stopped "average at 1 rank" "$sig" 200 out/avg.h5 1 \
    "$bin/tessera-ckpt" average big.h5 big2.h5 -o out/avg.h5
  stopped "import text at 1 rank" "$sig" 300 out/t.h5 1 \
    "$bin/tessera-data" import text text.txt -o out/t.h5
  if [[ -r /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
    stopped "import fashion-mnist at 1 rank" "$sig" 500 out/fm.h5 1 \
      "$bin/tessera-data" import fashion-mnist -o out/fm.h5
  fi
done

echo "tool signals: $passed checks passed, $failed failed"
[[ $failed -eq 0 ]]
