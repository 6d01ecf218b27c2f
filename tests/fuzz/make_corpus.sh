#!/usr/bin/env bash
# Regenerates the seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/) from the shipped
# decks and from tiny files that Tessera's own tools write: run it after a change of the deck
# syntax or of the checkpoint or dataset format, and commit the result.
#
#   tests/fuzz/make_corpus.sh BUILD_DIR
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin=${1:?usage: tests/fuzz/make_corpus.sh BUILD_DIR}/bin
mpiexec=${MPIEXEC:-mpiexec.mpich}
out=tests/fuzz/corpus
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Inputs that were findings (finding-*: kept as regression tests) stay; the rest is remade.
mkdir -p "$out"/{deck,checkpoint,dataset}
find "$out" -type f ! -name 'finding-*' -delete

# Decks: the shipped ones, every bad deck, and some with overrides after a "%%" line.
cp inputs/*.toml "$out/deck/"
for d in tests/decks/*.toml; do
  cp "$d" "$out/deck/bad_$(basename "$d")"
done
{ cat inputs/fashion_mlp.toml; printf '\n%%%%\noptimizer.lr=0.2\nmodel.layers[1].linear.out=64\nrun.steps=5\n'; } \
  >"$out/deck/override_mlp.toml"
{ cat inputs/kjv_gpt.toml; printf '\n%%%%\nparallel.tensor=2\nmodel.layers[2]={dropout={p=0.1}}\n'; } \
  >"$out/deck/override_gpt.toml"

# Datasets: a 2-D Gray-Scott regression file, a byte-token file, a small classification file (IDX
# files of 6 training and 4 test images imported as Fashion-MNIST is).
"$mpiexec" -n 1 "$bin/tessera-data" gen -q -o "$out/dataset/grayscott.h5" --samples 8 --size 4 \
  --dims 2 --steps 3 --seed 1
for _ in $(seq 80); do echo "In the beginning God created the heaven and the earth."; done >"$tmp/text.txt"
"$bin/tessera-data" import text "$tmp/text.txt" --output "$out/dataset/text.h5" --validation 0 \
  >/dev/null
python3 - "$tmp/idx" <<'PY'
import gzip, os, struct, sys
d = sys.argv[1]
os.makedirs(d)
for name, n in (("train", 6), ("t10k", 4)):
    with gzip.open(f"{d}/{name}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">iiii", 2051, n, 28, 28) + bytes((i * 7) % 256 for i in range(n * 784)))
    with gzip.open(f"{d}/{name}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">ii", 2049, n) + bytes(i % 10 for i in range(n)))
PY
"$bin/tessera-data" import fashion-mnist --source "$tmp/idx" --output "$out/dataset/classes.h5" \
  >/dev/null

# Checkpoints of the fuzz_checkpoint target's model (tests/fuzz/checkpoint_model.toml): after 2 and
# 4 steps (AdamW: two moments per parameter).
{
  printf '[run]\nsteps = 4\nlog_every = 2\noutput = "%s"\n' "$tmp/run"
  cat tests/fuzz/checkpoint_model.toml
  printf '[checkpoint]\nevery_steps = 2\n'
} >"$tmp/deck.toml"
"$mpiexec" -n 1 "$bin/tessera" run "$tmp/deck.toml" data.train="$out/dataset/grayscott.h5:/train" \
  >/dev/null
cp "$tmp"/run/ckpt/ckpt-*.h5 "$out/checkpoint/"
ls -l "$out"/* | awk 'NF > 5 { n++; b += $5 } END { printf "corpus: %d files, %d KiB\n", n, b / 1024 }'
