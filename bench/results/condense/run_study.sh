#!/bin/sh
# The CPU-preset condensation study: Random, DM, LCMat-C, DSA, DC, and LCMat-C's ablations, on
# Fashion-MNIST then CIFAR-10, 1 then 10 images per class, seeds 0-2. Every run writes its own
# folder and is resumable: rerun this script to continue where it stopped (finished runs are
# skipped, an interrupted one continues from its checkpoint).
#   sh bench/results/condense/run_study.sh            # from the repository root
#   DATASETS=cifar10 sh bench/results/condense/run_study.sh   # one dataset
# Then: python bench/results/condense/summarize.py > bench/results/condense/SUMMARY.md
#
# A folder is a row of SUMMARY.md (its name is the row's label):
#   random dm lcmat-c dsa dc   the methods at the cpu preset
#   lcmat-c-rho0               LCMat-C with rho = 0: last-layer gradient matching in the same loop
#   lcmat-c-f1                 LCMat-C without multi-formation (factor 1: one training image per stored one)
#   lcmat-c-init               LCMat-C's initialisation, not learnt (0 outer iterations): what the
#                              learning adds is lcmat-c minus this row
set -e
OUT=bench/results/condense
export LCMAT_DATA_DIR="${LCMAT_DATA_DIR:-/work/shared/data}"
PY="${PYTHON:-python}"

run() {  # run FOLDER METHOD [extra lcmat condense options]
  folder=$1; method=$2; shift 2
  $PY -m lcmat.cli condense --method "$method" --dataset "$dataset" --ipc "$ipc" --seed "$seed" \
    --preset cpu --out "$OUT/$dataset/ipc$ipc/$folder/seed$seed" --resume --no-progress \
    --threads "${THREADS:-1}" --checkpoint-every 5 "$@"
}

for dataset in ${DATASETS:-fashion-mnist cifar10}; do
  for ipc in 1 10; do
    for seed in 0 1 2; do
      for method in random dm lcmat-c dsa dc; do
        run "$method" "$method"
      done
      run lcmat-c-rho0 lcmat-c --rho 0
      run lcmat-c-f1 lcmat-c --factor 1
      run lcmat-c-init lcmat-c --iterations 0
    done
  done
done
