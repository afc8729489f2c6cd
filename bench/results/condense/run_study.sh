#!/bin/sh
# The CPU-preset condensation study: Random, DM, LCMat-C, DSA, DC on Fashion-MNIST (then
# CIFAR-10), 1 then 10 images per class, seeds 0-2. Every run writes its own folder and is
# resumable: rerun this script to continue where it stopped (finished runs are skipped).
#   sh bench/results/condense/run_study.sh            # from the repository root
# Then: python bench/results/condense/summarize.py > bench/results/condense/SUMMARY.md
set -e
OUT=bench/results/condense
export LCMAT_DATA_DIR="${LCMAT_DATA_DIR:-/work/shared/data}"
PY="${PYTHON:-python}"
for dataset in ${DATASETS:-fashion-mnist cifar10}; do
  for ipc in 1 10; do
    for seed in 0 1 2; do
      for method in random dm lcmat-c dsa dc; do
        dir="$OUT/$dataset/ipc$ipc/$method/seed$seed"
        $PY -m lcmat.cli condense --method "$method" --dataset "$dataset" --ipc "$ipc" --seed "$seed" \
          --preset cpu --out "$dir" --resume --no-progress --threads "${THREADS:-1}" --checkpoint-every 5
      done
    done
  done
done
