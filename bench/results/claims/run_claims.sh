#!/usr/bin/env bash
# The four claims of issue 18 under the papers' protocol (docs/experiments.md, "The claims of issue 18"),
# in stages, most wanted first. Every run is `lcmat experiment --resume` into its own folder under
# $OUT: start a stage again after any interruption and it continues where it stopped. Several lines may
# run at once, with the same stages or others (each run uses THREADS threads at nice NICE): a line holds
# flock(1)'s lock on the folder it runs ($OUT/.locks/NAME.lock, which names its process id) and skips a
# folder another line holds, so two lines share a stage's folders and never write one folder at once. The
# kernel drops the lock when its holder ends, killed or not: nothing is left to take over. A line that
# comes to a folder after another finished it resumes it and finds nothing left to run.
#   STAGES="1b 3 2" nohup bench/results/claims/run_claims.sh > bench/results/claims/run-a.log 2>&1 &
#   STAGES="4 2 3 1b" nohup bench/results/claims/run_claims.sh > bench/results/claims/run-b.log 2>&1 &
# Then `python bench/claims_report.py` writes bench/results/claims/REPORT.md from whatever has finished.
#
# Stages, CPU time of one process on one otherwise idle core (BENCHMARKS.md 4.4: measured CPU time
# per image and per test evaluation, selection from section 1; +-50 %; about 3x longer in wall time
# while the shared 2-core machine runs other jobs), 3 seeds:
#   1a  claim 1, full CIFAR-10, 0.1 / 0.5 / 1 %, every method but the ceiling      ~2.5 h
#         (test evaluations ~1 h, selection ~36 min, training ~32 min, 3 selection models ~20 min)
#   1b  claim 1, full CIFAR-10, 5 / 10 %                                            ~6.5-7 h
#         (training ~5 h, selection ~1 h, evaluations ~40 min; the selection models of 1a are reused)
#   1c  claim 1, the ceiling (whole CIFAR-10) on CEILING_SEEDS (default 0)         ~40 min per seed
#   1g  claim 1, ResNet-18 with --preset paper, only where CUDA is available
#   2   claim 2, across architectures, pools of 1,000 images per class            ~4 h
#         (fm lenet->mlp ~5 min, fm mlp->lenet ~11 min, c10 w32->w16 ~30 min, c10 w16->w32 ~70 min;
#         then the same-network references: fm lenet->lenet, mlp->mlp, c10 w16->w16, w32->w32)
#   3   claim 3, label noise and long tails, pools of 1,000 images per class      ~6.5 h
#         (c10 noisy runs ~1.6 h each, c10 long-tailed ~1 h each, fm runs 8-15 min each)
#   4   claim 4, coverage at 5-20 %, pools of 1,000 images per class (FM ~15 min,
#       C10 ~1.6 h, then the held-out MNIST ~15 min)                               ~2.1 h
#   4e  claim 4 at the issue's own setting: FM, 200 epochs, Uniform and coverage  ~40 min
# Runs on pools include their own ceiling (the whole pool: as cheap as a 10-20 % coreset of the full set).
set -u
cd "$(dirname "$0")/../../.."

PY=${PY:-python}
OUT=${OUT:-bench/results/claims/runs}
THREADS=${THREADS:-1}
NICE=${NICE:-10}
SEEDS=${SEEDS:-0,1,2}                  # 3 at least; 0,1,2,3,4 where the budget allows
CEILING_SEEDS=${CEILING_SEEDS:-0}      # the full-CIFAR-10 ceiling of claim 1 (~40 min CPU per seed)
EPOCHS=${EPOCHS:-50}                   # the cpu preset's epoch count, the same for every fraction
C10_WIDTH=${C10_WIDTH:-32}             # ConvNet-3 width on the CPU
POOL=${POOL:-1000}                     # images per class of claims 2-4 (drawn with pool seed POOL_SEED)
POOL_SEED=${POOL_SEED:-0}
STAGES=${STAGES:-"1a 1b 1c 1g 2 3 4"}
export LCMAT_DATA_DIR=${LCMAT_DATA_DIR:-/work/shared/data}
mkdir -p "$OUT"

# The methods of LCMat's Table 1 that lcmat has, and FDMat.
TABLE1=uniform,cdiv,herding,kcenter,least_confidence,margin,entropy,forgetting,grand,cal,deepfool,craig,gradmatch,glister,adacore,graphcut,lcmat,fdmat
# Claim 2: the selectors of the architecture transfer, and the ceiling.
ARCH=uniform,lcmat,fdmat,craig,kcenter,forgetting,full
# Claim 3: FDMat, LCMat-S, Uniform, the coverage variants, Herding (the best baseline of claim 1's clean
# runs), and k-Center, Forgetting and Moderate-DS (whose picks differ most under noise: farthest points,
# hardest samples, samples at the median distance from their class centre).
ROBUST=uniform,uniform:coverage=True,fdmat,fdmat:coverage=True,lcmat,lcmat:coverage=True,herding,kcenter,forgetting,moderate,full
# Claim 4: coverage's settings (prune_hard, num_strata), chosen on Fashion-MNIST and CIFAR-10 only.
COVERAGE=uniform,uniform:coverage=True,uniform:coverage=True:prune_hard=0:num_strata=50,uniform:coverage=True:prune_hard=0.2:num_strata=50,uniform:coverage=True:prune_hard=0.1:num_strata=10,uniform:coverage=True:prune_hard=0.1:num_strata=100,full

has_cuda() { "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; }

lock() {  # lock NAME: take NAME's lock on file descriptor 9 unless another line holds it
    mkdir -p "$OUT/.locks"
    exec 9>>"$OUT/.locks/$1.lock"   # appending: a line that fails to lock leaves the holder's id alone
    if ! flock -n 9; then exec 9>&-; return 1; fi
    echo $$ > "$OUT/.locks/$1.lock"
}
unlock() { exec 9>&-; }  # closing the last descriptor releases the lock

run() {  # run NAME [--seeds S] OPTIONS...: one resumable experiment into $OUT/NAME
    local name=$1; shift
    local seeds=$SEEDS
    if [ "${1:-}" = --seeds ]; then seeds=$2; shift 2; fi
    if ! lock "$name"; then
        echo "== $(date -u +%FT%TZ) $name: skipped, another line (process $(cat "$OUT/.locks/$name.lock")) runs it"
        return
    fi
    echo "== $(date -u +%FT%TZ) $name"
    nice -n "$NICE" "$PY" -m lcmat experiment --resume --quiet --threads "$THREADS" --seeds "$seeds" \
        --out "$OUT/$name" "$@" || echo "== $name FAILED (rc $?)"
    unlock "$name"
}

fm=(--dataset fashion-mnist --model lenet --selection-epochs 10 --epochs "$EPOCHS" --lr 0.05 --evaluations 4 --device cpu)
mnist=(--dataset mnist --model lenet --selection-epochs 10 --epochs "$EPOCHS" --lr 0.05 --evaluations 4 --device cpu)
c10net=(--dataset cifar10 --model convnet --selection-epochs 10 --epochs "$EPOCHS" --lr 0.05 --evaluations 4 --device cpu)
c10=("${c10net[@]}" --model-option "width=$C10_WIDTH")
pool=(--pool "$POOL" --pool-seed "$POOL_SEED")

for stage in $STAGES; do
  case $stage in
  1a) # LCMat Table 1, the small fractions (where the paper reports LCMat-S's gains).
      run table1-c10-convnet "${c10[@]}" --methods "$TABLE1" --fractions 0.001,0.005,0.01 ;;
  1b) run table1-c10-convnet-large "${c10[@]}" --methods "$TABLE1" --fractions 0.05,0.1 ;;
  1c) # The ceiling: the whole CIFAR-10 under the same protocol (fraction 1, no selection model).
      run table1-c10-convnet-ceiling --seeds "$CEILING_SEEDS" "${c10[@]}" --methods full ;;
  1g) if has_cuda; then
          run table1-c10-resnet18 --seeds 0,1,2,3,4 --preset paper --methods "$TABLE1,full"
      else
          echo "== stage 1g skipped: no CUDA device"
      fi ;;
  2)  # LCMat across architectures: select with one network, train another; then each trained network
      # selected with itself on the same pool, the reference the transfer is measured against.
      for pair in "lenet mlp" "mlp lenet" "lenet lenet" "mlp mlp"; do
          set -- $pair
          run arch-fm-pool$POOL-$1-to-$2 "${fm[@]}" "${pool[@]}" --selection-model "$1" --model "$2" \
              --methods "$ARCH" --fractions 0.01,0.05,0.1
      done
      for pair in "32 16" "16 32" "16 16" "32 32"; do
          set -- $pair
          run arch-c10-pool$POOL-w$1-to-w$2 "${c10net[@]}" "${pool[@]}" --selection-model convnet \
              --selection-model-option "width=$1" --model-option "width=$2" --methods "$ARCH" \
              --fractions 0.01,0.05,0.1
      done ;;
  3)  # FDMat's robustness: symmetric label noise 20/40 %, long tail 10/100, at 1, 5, 10 %; the pool is
      # drawn first, then corrupted.
      for data in fm c10; do
          if [ "$data" = fm ]; then opts=("${fm[@]}"); else opts=("${c10[@]}"); fi
          for noise in 0.2 0.4; do
              run robust-$data-pool$POOL-noise$noise "${opts[@]}" "${pool[@]}" --label-noise "$noise" \
                  --methods "$ROBUST" --fractions 0.01,0.05,0.1
          done
          for ratio in 10 100; do
              # Class c keeps POOL * ratio^(-c/9) images: 100 at ratio 10 (1 % gives it one), 10 at
              # ratio 100, where round(f * 10) >= 1 needs f > 5 %: 6, 10, 20 % there.
              fractions=0.01,0.05,0.1
              if [ "$ratio" = 100 ]; then fractions=0.06,0.1,0.2; fi
              run robust-$data-pool$POOL-imb$ratio "${opts[@]}" "${pool[@]}" --imbalance "$ratio" \
                  --methods "$ROBUST" --fractions "$fractions"
          done
      done ;;
  4)  # The coverage finding at 5-20 %, on the two tuning datasets, then the held-out one (MNIST).
      run coverage-fm-pool$POOL "${fm[@]}" "${pool[@]}" --methods "$COVERAGE" --fractions 0.05,0.1,0.2
      run coverage-c10-pool$POOL "${c10[@]}" "${pool[@]}" --methods "$COVERAGE" --fractions 0.05,0.1,0.2
      # Held out: no setting is chosen on it; only the settings the two runs above recommend count.
      run coverage-mnist-pool$POOL-heldout "${mnist[@]}" "${pool[@]}" --methods "$COVERAGE" \
          --fractions 0.05,0.1,0.2 ;;
  4e) # The issue's own observation (Fashion-MNIST, pool 1000, about 200 epochs: coverage +2.3 at 5 %)
      # at its epoch count: does the finding depend on the longer training?
      fm200=(--dataset fashion-mnist --model lenet --selection-epochs 10 --epochs 200 --lr 0.05 --evaluations 4 --device cpu)
      run coverage-fm-pool$POOL-e200 "${fm200[@]}" "${pool[@]}" --methods uniform,uniform:coverage=True,full \
          --fractions 0.05,0.1,0.2 ;;
  *)  echo "unknown stage $stage (stages: 1a 1b 1c 1g 2 3 4 4e)" ;;
  esac
done
echo "== $(date -u +%FT%TZ) done"
