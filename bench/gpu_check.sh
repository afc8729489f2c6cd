#!/usr/bin/env bash
# Every GPU check of lcmat in one run, for a session that is lent a GPU (the device tool):
#
#   make gpu-wheels                     # here, once: POT as a Python 3.12 wheel in .whl/ (ignored)
#   device run, carry [".whl"], timeout_s 600, command:  bash bench/gpu_check.sh
#
# Builds the extension with its CUDA sources, runs the CUDA and Triton tests, then the GPU
# benchmarks, most important first, each under a timeout cut to what is left of DEADLINE seconds
# (default 540, inside the tool's 10-minute limit). Logs go to $OUT (what the tool brings back,
# at most 8 files) or to results/gpu. Copy the figures into BENCHMARKS.md sections 1-3.
set -u -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
DEADLINE=${DEADLINE:-540}
START=$SECONDS
PY=${PY:-python3}

# step NAME LIMIT COMMAND...: runs COMMAND with its output in $OUT/NAME, for at most LIMIT
# seconds and never past the deadline; a failed or cut step is reported and the next one runs.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - (SECONDS - START)))
  ((left < limit)) && limit=$left
  if ((limit < 20)); then
    echo "== $name: skipped, $left s left" | tee -a "$OUT/summary.txt"
    return
  fi
  echo "== $name (limit $limit s): $*" | tee -a "$OUT/summary.txt"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name" 2>&1
  echo "   exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
  tail -n 3 "$OUT/$name"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  nproc
} >"$OUT/summary.txt" 2>&1

if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# The extension, CPU and CUDA, built in place (nvcc for this GPU only, to save time).
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
step build.log 240 $PY setup.py build_ext --inplace
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
step tests.log 150 $PY -m pytest -q -x -p no:cacheprovider tests/test_csrc.py tests/test_ot_api.py \
  tests/test_triton_last_layer.py tests/test_triton_lcmat_distance.py tests/test_triton_facility_location.py \
  tests/test_triton_sinkhorn.py tests/test_triton_fdmat.py tests/test_triton_linear_grad_norms.py
step lcmat_steps.md 90 $PY bench/run_lcmat_steps.py --device cuda --whole --reps 3
step imagenet.log 120 $PY bench/run_imagenet_shape.py --device cuda --backend cuda --methods lcmat,fdmat
step triton_kernels.md 90 $PY bench/run_triton.py --only kernels --reps 5
step triton_sinkhorn.md 60 $PY bench/run_triton.py --only sinkhorn --problems 1000 --pot-problems 20 --iters 50
echo "total $((SECONDS - START)) s" | tee -a "$OUT/summary.txt"
