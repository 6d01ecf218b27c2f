#!/usr/bin/env bash
# bench/peers/gpt_compare.sh — the byte-level GPT of inputs/kjv_gpt.toml: Tessera against PyTorch on
# one rank and one thread (tokens per second), and Tessera's tensor parallelism on two ranks
# against one (a wider model).
#
#   ROUNDS=5 bench/peers/gpt_compare.sh
#
# speed    for each round: Tessera (1 rank, run.blas_threads=1, data.prefetch=0) then PyTorch
#          (bench/peers/gpt_torch.py --threads 1), STEPS steps of the deck's model, batch and
#          optimizer; steady state after the first LOG_EVERY steps; tokens/s = samples/s · 128;
#          model FLOPs utilisation of both against the peak Tessera's run measured (mfu_pct).
# tensor   for each round: the deck widened (dim 512, MLP 2048, 8 heads) on 2 ranks as tensor = 2
#          (data 1), then on 1 rank (tensor 1), TP_STEPS steps each; the share of the step the
#          tensor-parallel collectives took (tensor_s in metrics.jsonl, "tensor NN%" in the
#          progress line). SEQUENCE=true adds parallel.sequence_parallel to both.
# PRECISION=bf16 runs both in bfloat16 matrix products: Tessera's run.precision = "bf16",
# PyTorch's forward under torch.autocast("cpu", bfloat16) (fp32 weights in both);
# PRECISION="fp32 bf16" runs the speed pair in each precision, all four alternated in every round.
# Prints every run, then medians and ratios. Environment: TESSERA (build/bin/tessera), PYTHON
# (/usr/bin/python3 with python3-torch and python3-h5py), ROUNDS (5), STEPS (60), TP_STEPS (40),
# LOG_EVERY (20), WHAT ("speed tensor"), OUT (a new folder under /tmp). Needs data/kjv.h5.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=bench/peers/lib.sh
source bench/peers/lib.sh
TESSERA=${TESSERA:-build/bin/tessera}
PYTHON=${PYTHON:-/usr/bin/python3}
ROUNDS=${ROUNDS:-5}
STEPS=${STEPS:-60}
TP_STEPS=${TP_STEPS:-40}
LOG_EVERY=${LOG_EVERY:-20}
WHAT=${WHAT:-"speed tensor"}
SEQUENCE=${SEQUENCE:-false}
PRECISION=${PRECISION:-fp32}
for p in $PRECISION; do
  [[ $p == fp32 || $p == bf16 ]] || { echo "gpt_compare: PRECISION=$PRECISION: fp32, bf16 or both" >&2; exit 2; }
done
MPIEXEC=${MPIEXEC:-mpiexec.mpich}
OUT=${OUT:-$(mktemp -d /tmp/tessera-gpt.XXXXXX)}
[[ -f data/kjv.h5 ]] || { echo "gpt_compare: data/kjv.h5 missing (tessera-data import kjv)" >&2; exit 2; }
"$PYTHON" -c 'import torch, h5py' || { echo "gpt_compare: $PYTHON lacks torch or h5py" >&2; exit 2; }
mkdir -p "$OUT"
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
csv=$OUT/results.csv
echo "round,what,peer,tokens_per_s,tensor_pct,mfu_pct" >"$csv"
# mfu_pct METRICS TOKENS_PER_S: model FLOPs utilisation (%) of TOKENS_PER_S tokens per second of
# this model, with the FLOPs per sample (128 tokens) and the peak (a GEMM in the round's precision,
# measured at the start of that Tessera run) of the "flops" record of Tessera's METRICS: the same
# count and peak for both peers of a round.
mfu_pct() {
  "$PYTHON" - "$1" "$2" <<'EOF'
import json, sys
f = [r for r in map(json.loads, filter(str.strip, open(sys.argv[1]))) if r.get("kind") == "flops"][0]
print(f"{100 * float(sys.argv[2]) / 128 * f['per_sample'] / f['peak']:.1f}")
EOF
}
common=(run.steps="$STEPS" run.log_every="$LOG_EVERY" run.eval_every=0 data.test= run.blas_threads=1
  checkpoint.every_steps=0 checkpoint.at_end=false optimizer.schedule.warmup_steps=10)
wide=("model.layers[0].embedding.dim=512" "model.layers[1].repeat.layers[0].residual.layers[1].attention.heads=8"
  "model.layers[1].repeat.layers[1].residual.layers[1].linear.out=2048"
  "model.layers[1].repeat.layers[1].residual.layers[3].linear.out=512")
for ((round = 1; round <= ROUNDS; ++round)); do
  if [[ $WHAT == *speed* ]]; then
    for p in $PRECISION; do
      suffix=$([[ $p == fp32 ]] && echo "" || echo "-$p")
      torch_precision=()
      [[ $p == bf16 ]] && torch_precision=(--bf16)
      dir=$OUT/tessera$suffix-r$round
      "$MPIEXEC" -n 1 "$TESSERA" run inputs/kjv_gpt.toml "${common[@]}" data.prefetch=0 \
        run.precision="$p" run.output="$dir" >"$dir.log" 2>&1
      rate=$(peers_tessera_rate "$dir/metrics.jsonl" 32 "$LOG_EVERY")
      tok=$("$PYTHON" -c "print(round($rate * 128, 1))")
      mfu=$(mfu_pct "$dir/metrics.jsonl" "$tok")
      echo "round $round  speed   tessera$suffix  $tok tokens/s  mfu $mfu%"
      echo "$round,speed,tessera$suffix,$tok,,$mfu" >>"$csv"
      log=$OUT/torch$suffix-r$round.log
      "$PYTHON" bench/peers/gpt_torch.py --steps "$STEPS" --threads 1 --skip "$LOG_EVERY" \
        --log-every "$LOG_EVERY" --warmup 10 --no-eval "${torch_precision[@]}" >"$log" 2>&1
      tok=$("$PYTHON" -c 'import json,sys; print(round(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["tokens_per_s"], 1))' "$log")
      mfu=$(mfu_pct "$dir/metrics.jsonl" "$tok")
      echo "round $round  speed   pytorch$suffix  $tok tokens/s  mfu $mfu%"
      echo "$round,speed,pytorch$suffix,$tok,,$mfu" >>"$csv"
    done
  fi
  if [[ $WHAT == *tensor* ]]; then
    for n in 2 1; do
      dir=$OUT/tp$n-r$round
      "$MPIEXEC" -n "$n" "$TESSERA" run inputs/kjv_gpt.toml "${common[@]}" run.steps="$TP_STEPS" \
        parallel.tensor="$n" parallel.data=1 parallel.sequence_parallel="$SEQUENCE" "${wide[@]}" \
        run.output="$dir" >"$dir.log" 2>&1
      rate=$(peers_tessera_rate "$dir/metrics.jsonl" 32 "$LOG_EVERY")
      tok=$("$PYTHON" -c "print(round($rate * 128, 1))")
      share=$(peers_tessera_tensor_share "$dir/metrics.jsonl" "$LOG_EVERY")
      echo "round $round  tensor  tensor=$n  $tok tokens/s  (tensor-parallel collectives: $share% of the step)"
      echo "$round,tensor,tensor$n,$tok,$share" >>"$csv"
    done
  fi
done
"$PYTHON" - "$csv" <<'EOF' | tee "$OUT/summary.txt"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
med = {}
mfu = {}
for r in rows:
    med.setdefault((r["what"], r["peer"]), []).append(float(r["tokens_per_s"]))
    if r.get("mfu_pct"):
        mfu.setdefault((r["what"], r["peer"]), []).append(float(r["mfu_pct"]))
for k, v in med.items():
    m = f", mfu median {statistics.median(mfu[k]):.1f}%" if k in mfu else ""
    print(f"{k[0]:<7} {k[1]:<8} median {statistics.median(v):10.1f} tokens/s over {len(v)} rounds{m}")
def ratio(a, b):
    return statistics.median(med[("speed", a)]) / statistics.median(med[("speed", b)])
for suffix, name in (("", "speed"), ("-bf16", "speed bf16")):
    if ("speed", "tessera" + suffix) in med and ("speed", "pytorch" + suffix) in med:
        print("%s: Tessera / PyTorch = %.3f" % (name, ratio("tessera" + suffix, "pytorch" + suffix)))
for peer in ("tessera", "pytorch"):
    if ("speed", peer) in med and ("speed", peer + "-bf16") in med:
        print("%s: bf16 / fp32 = %.3f" % (peer, ratio(peer + "-bf16", peer)))
if ("tensor", "tensor2") in med and ("tensor", "tensor1") in med:
    print("tensor: 2 ranks / 1 rank = %.3f" % (statistics.median(med[("tensor", "tensor2")]) /
                                              statistics.median(med[("tensor", "tensor1")])))
EOF
