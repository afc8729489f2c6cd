# `make demo` and `make test` work on a fresh machine: they create .venv, install the pinned
# dependencies (torch==2.13.0 is the CPU build), build the package, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# The extension is built for this machine (-march=native: AVX2/AVX-512 kernels where the CPU has
# them); NATIVE=0 gives the portable build that a wheel for other machines needs (setup.py).
NATIVE ?= 1
# Idle OpenMP threads sleep rather than spin (a large win on shared machines; see README).
export OMP_WAIT_POLICY ?= PASSIVE
EXT_SOURCES := $(shell find csrc triton_kernels -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)

.PHONY: setup demo test test-all check-builds bench gpu-wheels clean

setup: $(VENV)/.built

$(VENV)/.deps: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

# --no-build-isolation: an isolated build would fetch a second (CUDA) torch to build against.
$(VENV)/.built: $(VENV)/.deps setup.py $(EXT_SOURCES)
	LCMAT_NATIVE=$(NATIVE) $(PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

# The compiled backend's tests: its [cpu] and [cuda] cases in the kernel family files, and the op
# library (registration, fake shapes, torch.compile).
COMPILED_TESTS = tests/test_last_layer.py tests/test_lcmat_distance.py tests/test_facility_location.py \
	tests/test_sinkhorn.py tests/test_fdmat.py tests/test_linear_grad_norms.py tests/test_gradient_moments.py \
	tests/test_ops_registration.py

# Builds the extension both ways, portable and native, each in its own copy under build/, and runs
# the compiled-kernel tests against each (slow: two full builds; not part of `make test`).
check-builds: $(VENV)/.deps
	for native in 0 1; do \
	  dir=build/check-native-$$native; rm -rf $$dir && mkdir -p $$dir && \
	  cp -r lcmat triton_kernels tests pytest.ini $$dir/ && rm -f $$dir/lcmat/_C*.so && \
	  LCMAT_NATIVE=$$native LCMAT_REQUIRE_EXTENSION=1 $(PY) setup.py -q build_ext --build-lib $$dir \
	    --build-temp $$dir/obj && \
	  (cd $$dir && $(PY) -c "import lcmat.csrc as c; assert c._C is not None, 'extension not built'" && \
	   $(PY) -m pytest -q -p no:cacheprovider -k "cpu or cuda or test_ops_registration" $(COMPILED_TESTS)) || exit 1; \
	done

demo: setup
	$(VENV)/bin/lcmat demo

# The benchmark files (bench/bench_*.py) run once each at their tiny size, untimed.
test: setup
	$(PY) -m pytest -q --benchmark-disable $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -q --runslow --benchmark-disable $(PYTEST_ARGS)

# Kernel microbenchmarks against the outside libraries (the bench extra), one thread each:
#   make bench BENCH_SIZE=tiny,cifar10        (sizes: tiny, cifar10, imagenet, all)
# Medians go to bench/results/bench.json; bench/report.py prints the tables of BENCHMARKS.md.
BENCH_SIZE ?= tiny,cifar10
BENCH_ARGS ?=
$(VENV)/.bench: $(VENV)/.built setup.py
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation -e '.[bench]'
	touch $@

bench: $(VENV)/.bench
	OMP_NUM_THREADS=1 LCMAT_BENCH_THREADS=1 $(PY) -m pytest bench -q -p no:cacheprovider --benchmark-only \
	  --bench-size=$(BENCH_SIZE) --benchmark-min-rounds=3 --benchmark-json=bench/results/bench.json $(BENCH_ARGS)
	$(PY) bench/report.py bench/results/bench.json

# What the GPU machine lacks, as Python 3.12 wheels in .whl/: POT only (its image has torch,
# triton, numpy, scipy, pytest, pytest-benchmark, pytest-xdist, hypothesis, tqdm, scikit-learn,
# matplotlib, pillow, pybind11, ninja); bench/gpu_check.sh installs what .whl/ holds.
gpu-wheels: $(VENV)/.deps
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	  -d .whl pot==$$($(PY) -m pip show pot | awk '/^Version/ {print $$2}')

clean:
	rm -rf $(VENV) build *.egg-info lcmat/*.so
