#!/usr/bin/env bash
# The job scripts parse: `bash -n` on every script in jobs/ (the GPU variant
# jobs/slurm/fashion_cnn_gpu.sbatch is checked only this way here: no GPU node), and shellcheck on
# them, on the chain they source (jobs/slurm/chain.bash) and on tools/slurm_local.sh where shellcheck is
# installed. Every #SBATCH line is an option
# sbatch knows the form of (--name=value or --flag), so a typo cannot silently become a comment.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
scripts=("$root"/jobs/slurm/*.sbatch "$root"/jobs/local/*.sh)
for f in "${scripts[@]}"; do
  bash -n "$f"
  bad=$(grep -nE '^#SBATCH' "$f" | grep -vE '^[0-9]+:#SBATCH --[a-z-]+(=[^ ]+)?$' || true)
  [[ -z $bad ]] || { echo "FAIL: $f: malformed #SBATCH line(s):"; echo "$bad"; exit 1; }
  echo "bash -n: ${f#"$root"/}"
done
[[ -f $root/jobs/slurm/fashion_cnn_gpu.sbatch ]] || { echo "FAIL: no GPU job script"; exit 1; }
grep -q '^#SBATCH --gpus-per-task=1$' "$root/jobs/slurm/fashion_cnn_gpu.sbatch"
if command -v shellcheck >/dev/null; then
  # From the root, following the scripts' `source jobs/slurm/chain.bash`.
  (cd "$root" && shellcheck -x "${scripts[@]}" jobs/slurm/chain.bash tools/slurm_local.sh)
  echo "shellcheck: clean"
else
  echo "shellcheck is not installed: bash -n only"
fi
