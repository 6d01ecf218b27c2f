#!/usr/bin/env bash
# jobs/local/quickstart.sh — the quick-start on a fresh Debian 12 machine, in one command:
# install the packages and build (tools/setup.sh), import Fashion-MNIST, train the MLP on 2 ranks.
#
#   jobs/local/quickstart.sh                          # as root, or as a user with sudo
#   jobs/local/quickstart.sh run.epochs=3 optimizer.lr=0.02   # key=value overrides of the deck
#   NP=1 jobs/local/quickstart.sh                     # ranks (default 2)
#
# Runs from the repository root whatever the current folder. Safe to re-run: setup.sh installs only
# missing packages and builds incrementally, and the dataset is imported only if
# data/fashion-mnist.h5 is missing. Ends with the run's final test-accuracy line, e.g.
#   final: 4690 steps in 4.3 s; test loss 0.2997, test accuracy 89.71%
# Output: runs/fashion-mlp/ (metrics.jsonl, deck.toml, ckpt/); log: runs/fashion-mlp.quickstart.log.
# Every run trains afresh. To continue a run stopped by Ctrl-C from its checkpoint instead:
# jobs/local/quickstart.sh checkpoint.restart=auto
# Exit code: tessera's (0 done, 2 bad input, 75 stopped by a signal), or setup's on failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

NP=${NP:-2}
DECK=inputs/fashion_mlp.toml
DATA=data/fashion-mnist.h5

# 1. Packages (MPICH, parallel HDF5, Kokkos, OpenBLAS, ...) and the build in build/.
tools/setup.sh

# 2. The dataset, from Debian's dataset-fashion-mnist IDX files (setup.sh installs the package).
if [[ ! -f $DATA ]]; then
  echo "quickstart: importing Fashion-MNIST into $DATA"
  build/bin/tessera-data import fashion-mnist --output "$DATA"
else
  echo "quickstart: $DATA present"
fi

# 3. Train. MPICH is named explicitly: other packages can switch the generic mpiexec to OpenMPI.
# One BLAS/OpenMP thread per rank (the deck's run.blas_threads is 1 too): the ranks share the cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
mkdir -p runs
log=runs/fashion-mlp.quickstart.log
echo "quickstart: mpiexec.mpich -n $NP build/bin/tessera run $DECK $*  (log: $log)"
set +e
mpiexec.mpich -n "$NP" build/bin/tessera run "$DECK" "$@" 2>&1 | tee "$log"
code=${PIPESTATUS[0]}
set -e

echo
if final=$(grep -E '^final: ' "$log" | tail -n 1) && [[ -n $final ]]; then
  echo "quickstart: $final"
else
  echo "quickstart: the run ended without a final test accuracy (exit code $code); see $log" >&2
fi
exit "$code"
