#!/usr/bin/env bash
# The four claims of issue 18 under the papers' protocol (docs/experiments.md, "The protocol").
# Every run is `lcmat experiment --resume`: start this script again after any interruption and it
# continues where it stopped. Each run has its own folder (one protocol, one corruption, one pair of
# networks per results.csv). Start it in the background:
#   nohup bench/results/claims/run_claims.sh > bench/results/claims/run_claims.log 2>&1 &
# Run one claim only: CLAIMS="3" bench/results/claims/run_claims.sh
set -u
cd "$(dirname "$0")/../../.."

PY=${PY:-python}
OUT=${OUT:-bench/results/claims/runs}
THREADS=${THREADS:-1}
SEEDS=${SEEDS:-0,1,2}                  # 3 at least; 0,1,2,3,4 where the budget allows
EPOCHS=${EPOCHS:-50}                   # the cpu preset's epoch count, the same for every fraction
C10_WIDTH=${C10_WIDTH:-32}             # ConvNet-3 width on the CPU
CLAIMS=${CLAIMS:-"1 2 3 4"}
export LCMAT_DATA_DIR=${LCMAT_DATA_DIR:-/work/shared/data}
mkdir -p "$OUT"

# The methods of LCMat's Table 1 that lcmat has, FDMat, and the full-set ceiling.
TABLE1=uniform,cdiv,herding,kcenter,least_confidence,margin,entropy,forgetting,grand,cal,deepfool,craig,gradmatch,glister,adacore,graphcut,lcmat,fdmat,full
# Claim 3: FDMat, LCMat-S, Uniform, the coverage variants and the best baselines of the clean runs.
ROBUST=uniform,uniform:coverage=True,fdmat,fdmat:coverage=True,lcmat,lcmat:coverage=True,kcenter,forgetting,moderate,full
# Claim 4: coverage's settings (prune_hard, num_strata), chosen on Fashion-MNIST and CIFAR-10 only.
COVERAGE=uniform,uniform:coverage=True,uniform:coverage=True:prune_hard=0:num_strata=50,uniform:coverage=True:prune_hard=0.2:num_strata=50,uniform:coverage=True:prune_hard=0.1:num_strata=10,uniform:coverage=True:prune_hard=0.1:num_strata=100,full

has_cuda() { "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; }

run() {  # run NAME OPTIONS...: one resumable experiment into $OUT/NAME
    local name=$1; shift
    echo "== $(date -u +%FT%TZ) $name"
    "$PY" -m lcmat experiment --resume --quiet --threads "$THREADS" --seeds "$SEEDS" --out "$OUT/$name" "$@" \
        || echo "== $name FAILED (rc $?)"
}

fm=(--dataset fashion-mnist --model lenet --selection-epochs 10 --epochs "$EPOCHS" --lr 0.05 --evaluations 4 --device cpu)
c10=(--dataset cifar10 --model convnet --model-option "width=$C10_WIDTH" --selection-epochs 10 --epochs "$EPOCHS"
     --lr 0.05 --evaluations 4 --device cpu)

for claim in $CLAIMS; do
  case $claim in
  1)  # LCMat Table 1: CIFAR-10 at 0.1, 0.5, 1, 5, 10 %.
      run table1-c10-convnet "${c10[@]}" --methods "$TABLE1" --fractions 0.001,0.005,0.01,0.05,0.1
      if has_cuda; then
          run table1-c10-resnet18 --preset paper --methods "$TABLE1"
      fi ;;
  2)  # LCMat across architectures: select with one network, train another.
      for pair in "lenet mlp" "mlp lenet"; do
          set -- $pair
          run arch-fm-$1-to-$2 "${fm[@]}" --selection-model "$1" --model "$2" \
              --methods uniform,lcmat,fdmat,craig,kcenter,forgetting,full --fractions 0.01,0.05,0.1
      done
      for pair in "16 32" "32 16"; do
          set -- $pair
          run arch-c10-w$1-to-w$2 "${c10[@]}" --selection-model convnet --selection-model-option "width=$1" \
              --model-option "width=$2" --methods uniform,lcmat,fdmat,craig,kcenter,forgetting,full \
              --fractions 0.01,0.05,0.1
      done ;;
  3)  # FDMat's robustness: symmetric label noise 20/40 %, long tail 10/100, at 1, 5, 10 %.
      for data in fm c10; do
          if [ "$data" = fm ]; then opts=("${fm[@]}"); else opts=("${c10[@]}"); fi
          for noise in 0.2 0.4; do
              run robust-$data-noise$noise "${opts[@]}" --label-noise "$noise" --methods "$ROBUST" --fractions 0.01,0.05,0.1
          done
          for ratio in 10 100; do
              fractions=0.01,0.05,0.1
              # CIFAR-10 at ratio 100: the rarest class keeps 50 images, and 1 % of 50 rounds to none.
              if [ "$data" = c10 ] && [ "$ratio" = 100 ]; then fractions=0.02,0.05,0.1; fi
              run robust-$data-imb$ratio "${opts[@]}" --imbalance "$ratio" --methods "$ROBUST" --fractions "$fractions"
          done
      done ;;
  4)  # The coverage finding at 5-20 %, on the two tuning datasets, then the held-out one (MNIST).
      run coverage-fm "${fm[@]}" --methods "$COVERAGE" --fractions 0.05,0.1,0.2
      run coverage-c10 "${c10[@]}" --methods "$COVERAGE" --fractions 0.05,0.1,0.2
      # Held out: no setting is chosen on it; only the settings the two runs above recommend count.
      run coverage-mnist-heldout --dataset mnist --model lenet --selection-epochs 10 --epochs "$EPOCHS" --lr 0.05 \
          --evaluations 4 --device cpu --methods "$COVERAGE" --fractions 0.05,0.1,0.2 ;;
  *)  echo "unknown claim $claim" ;;
  esac
done
echo "== $(date -u +%FT%TZ) done"
