#!/usr/bin/env bash
# Every GPU check of lcmat in one run, for a session that is lent a GPU (the device tool):
#
#   make gpu-wheels                     # here, once: what the GPU image lacks (POT), Python 3.12 wheels in .whl/
#   bash bench/gpu_check.sh --dry-run   # here: every step that needs no GPU (see below)
#   device run, carry [".whl"], timeout_s 600, command:  bash bench/gpu_check.sh
#
# The machine receives a copy of the work tree with nothing installed: PYTHONPATH is the root
# (lcmat/__init__.py maps lcmat.triton_kernels to the top-level triton_kernels/). Steps, in order
# of importance, each under a time limit cut to what is left of DEADLINE seconds (default 540,
# inside the tool's 10-minute limit, measured from a cold start: empty Triton cache, no build):
#
#   build.log          the extension, CPU and CUDA, built in place (nvcc for sm_90 only)    200 s
#   summary.txt        imports, build discovery, collection of every GPU test module and    60 s
#                      of what each test step selects
#   tests_cuda.log     the compiled backend's tests (CPU and CUDA), distributed on CUDA     150 s
#   tests_triton.log   the Triton tests, compiled for the GPU                               150 s
#   bench_*.md/.log    the GPU benchmarks, while time is left                          90/100/60/45 s
#
# CUDA and Triton tests are separate steps with no -x, so that a failure in one hides nothing of
# the other. The Triton tests run with LCMAT_TRITON_FIXED_CONFIG=1 (one config per kernel: no
# autotuning, one compilation per specialisation) and HYPOTHESIS_PROFILE=gpu (few derandomised
# examples: a fixed, small set of shapes), and with pytest-xdist workers where it is installed;
# the benchmarks autotune as in use. Everything lands in $OUT (what the tool brings back: at most
# 8 files, and this writes 8) or in results/gpu. Copy the figures into BENCHMARKS.md sections 1-3.
# tests/test_submodular.py, parametrised by backend, runs its cpu, cuda and triton cases in the
# Triton step.
#
# --dry-run (or DRY_RUN=1) runs here, without a GPU, every step that needs none: imports from the
# bare tree, build discovery (the extension built here loads; nothing is compiled), collection of
# every GPU test module, and the argument parsing of every benchmark command below (their imports
# too; nothing is timed). tests/test_gpu_layout.py runs it in a copy of the tree laid out as the
# GPU machine receives it.
set -u -o pipefail
export PYTHONUNBUFFERED=1
DRY_RUN=${DRY_RUN:-0}
for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
DEADLINE=${DEADLINE:-540}
START=$SECONDS
PY=${PY:-python3}
SUMMARY=$OUT/summary.txt
FAILED=0

# step NAME LIMIT COMMAND...: runs COMMAND with its output in $OUT/NAME, for at most LIMIT
# seconds and never past the deadline; a failed or cut step is reported and the next one runs.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - (SECONDS - START)))
  ((left < limit)) && limit=$left
  if ((limit < 20)); then
    echo "== $name: skipped, $left s left" | tee -a "$SUMMARY"
    FAILED=1
    return
  fi
  echo "== $name (limit $limit s): $*" | tee -a "$SUMMARY"
  local t0=$SECONDS status
  timeout "$limit" "$@" >"$OUT/$name" 2>&1
  status=$?
  echo "   exit $status after $((SECONDS - t0)) s" | tee -a "$SUMMARY"
  ((status != 0)) && FAILED=1
  tail -n 3 "$OUT/$name"
}

# check NAME COMMAND...: a quick step (at most 120 s, never past the deadline) whose output goes
# into the summary itself.
check() {
  local name=$1 limit=$((DEADLINE - (SECONDS - START)))
  shift
  ((limit > 120)) && limit=120
  echo "== $name: $*" >>"$SUMMARY"
  if ((limit > 0)) && timeout "$limit" "$@" >>"$SUMMARY" 2>&1; then
    echo "   ok" | tee -a "$SUMMARY"
  else
    echo "   FAILED ($name)" | tee -a "$SUMMARY"
    FAILED=1
  fi
}

# One test file per kernel family holds every backend's tests; a backend test's id names its
# backend (tests/backends.py: test_x[cpu], test_x[triton-...], test_x[cuda-...]), and each step
# selects its tests by that name (-k). The CUDA step also runs the reference tests that take CUDA
# tensors (test_reference_*), the op library and the other modules named here.
FAMILIES=(tests/test_last_layer.py tests/test_lcmat_distance.py tests/test_facility_location.py
  tests/test_sinkhorn.py tests/test_fdmat.py tests/test_linear_grad_norms.py tests/test_gradient_moments.py
  tests/test_submodular.py)
CUDA_TESTS=("${FAMILIES[@]}" tests/test_ops_registration.py tests/test_ot_api.py tests/test_distributed.py::test_cuda_tensors)
CUDA_SELECT="cpu or cuda or test_reference_ or test_ops_registration or test_ot_api or test_cuda_tensors"
TRITON_TESTS=("${FAMILIES[@]}" tests/test_triton_int64_offsets.py tests/test_triton_gpu_typing.py
  tests/test_triton_config.py)
TRITON_SELECT="triton"
# name|limit|script and arguments (backends named: one that is missing fails its step, it does
# not drop out of the table)
BENCHES=(
  "bench_lcmat_steps.md|90|bench/run_lcmat_steps.py --device cuda --backends reference,cuda,triton --whole --reps 3"
  "bench_imagenet.log|100|bench/run_imagenet_shape.py --device cuda --backend cuda --methods lcmat,fdmat"
  "bench_triton_kernels.md|60|bench/run_triton.py --only kernels --reps 5"
  "bench_triton_sinkhorn.md|45|bench/run_triton.py --only sinkhorn --problems 1000 --pot-problems 20 --iters 50"
)

{
  echo "gpu_check $( ((DRY_RUN)) && echo "DRY RUN (no GPU step runs)")"
  if ((DRY_RUN)); then echo "no nvidia-smi in a dry run"; else
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; fi
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  nproc
} >"$SUMMARY" 2>&1

if ((!DRY_RUN)) && [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# The extension, CPU and CUDA, built in place for this machine (LCMAT_NATIVE=1; nvcc for this GPU
# only, to save time).
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
if ((DRY_RUN)); then
  echo "== build.log: not in a dry run (the extension built here is used)" >>"$SUMMARY"
else
  step build.log 200 env LCMAT_NATIVE=1 $PY setup.py build_ext --inplace
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

# Imports from the bare tree, and build discovery: the compiled backend loads (with CUDA on the
# GPU machine), the Triton twins resolve inside this tree.
check imports $PY -c "
import os, lcmat, lcmat.csrc as C, lcmat.triton_kernels as T, lcmat.ops as ops
root = os.getcwd()
for mod in (lcmat, T):
    assert os.path.realpath(mod.__file__).startswith(os.path.realpath(root)), mod.__file__
assert C.available('cpu'), 'lcmat._C did not load'
print('lcmat', lcmat.__file__, '| triton_kernels', T.__file__, '| _C', C._C.__file__)
print('WITH_CUDA', C._C.WITH_CUDA, '| backends', ops.available_backends())
if not $DRY_RUN:
    assert C.available('cuda'), 'lcmat._C was built without CUDA or sees no GPU'
    assert 'triton' in ops.available_backends()
"
# Every GPU test module collects (an import error here would otherwise end the test step at once).
check collect $PY -m pytest -qq --collect-only -p no:cacheprovider "${CUDA_TESTS[@]}" "${TRITON_TESTS[@]}" \
  tests/test_cuda_compile.py tests/test_triton_compile.py
# What each test step selects (-k), counted per file: a selection of nothing fails the check.
check collect_cuda_step $PY -m pytest -qq --collect-only -p no:cacheprovider -k "$CUDA_SELECT" "${CUDA_TESTS[@]}"
check collect_triton_step $PY -m pytest -qq --collect-only -p no:cacheprovider -k "$TRITON_SELECT" "${TRITON_TESTS[@]}"

if ((DRY_RUN)); then
  # The benchmark commands' imports and argument parsing: each script runs up to its
  # parse_args, which checks the arguments and stops.
  specs=()
  for b in "${BENCHES[@]}"; do specs+=("${b##*|}"); done
  check bench_arguments $PY - "${specs[@]}" <<'EOF'
import argparse, runpy, shlex, sys

class Parsed(Exception):
    pass

def parse_args(self, args=None, namespace=None):
    namespace, extra = self.parse_known_args(args, namespace)
    if extra:
        self.error(f"unrecognized arguments: {' '.join(extra)}")
    raise Parsed(vars(namespace))

argparse.ArgumentParser.parse_args = parse_args
for spec in sys.argv[1:]:
    script, *args = shlex.split(spec)
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
        raise SystemExit(f"{script}: never parsed its arguments")
    except Parsed as parsed:
        print(f"{script}: {parsed.args[0]}")
EOF
  echo "total $((SECONDS - START)) s, $( ((FAILED)) && echo FAILED || echo ok)" | tee -a "$SUMMARY"
  exit $FAILED
fi

XDIST=()
$PY -c "import xdist" 2>/dev/null && XDIST=(-n "${TEST_WORKERS:-8}")
step tests_cuda.log 150 $PY -m pytest -q -p no:cacheprovider -rfE -k "$CUDA_SELECT" "${CUDA_TESTS[@]}"
step tests_triton.log 150 env LCMAT_TRITON_FIXED_CONFIG=1 HYPOTHESIS_PROFILE=gpu \
  $PY -m pytest -q -p no:cacheprovider -rfE "${XDIST[@]}" -k "$TRITON_SELECT" "${TRITON_TESTS[@]}"
for b in "${BENCHES[@]}"; do
  IFS='|' read -r name limit spec <<<"$b"
  # shellcheck disable=SC2086  # the spec is words
  step "$name" "$limit" $PY $spec
done
echo "total $((SECONDS - START)) s, $( ((FAILED)) && echo "some step FAILED" || echo ok)" | tee -a "$SUMMARY"
exit $FAILED
