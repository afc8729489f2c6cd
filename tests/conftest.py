import os

# Triton kernels run on the CPU through its interpreter; this must be set before triton imports.
try:
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass

import pytest
from hypothesis import settings

from backends import BACKENDS, device_of, param, unavailable

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
# The GPU run (bench/gpu_check.sh): few, fixed examples, so that every autotuned kernel meets a
# small set of shapes and the cold Triton cache compiles few specialisations.
settings.register_profile("gpu", max_examples=4, deadline=None, derandomize=True,
                          database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _imitate_gpu_argument_typing():
    """Under the interpreter, type a Python float kernel argument as the GPU compiler does.

    The compiler types a float argument as fp32 (triton.runtime.jit.mangle_type gives "fp32");
    the interpreter passes it on as an exact Python float, which then takes the dtype of the
    tensor it meets. Here the interpreter gets an fp32 scalar instead, so a float64 kernel that
    takes a float constant as a plain argument loses the same digits as on a GPU, and its tests
    fail on the CPU (tests/test_triton_gpu_typing.py checks the imitation itself). On by default
    under the interpreter; LCMAT_TRITON_GPU_TYPING=0 gives the interpreter's own typing. Integers
    already follow the compiler (int32, or int64 past 2^31).
    """
    if os.environ.get("LCMAT_TRITON_GPU_TYPING", "1") != "1":
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    implicit_cvt = getattr(interpreter, "_implicit_cvt", None)
    if implicit_cvt is None:  # another triton: tests/test_triton_gpu_typing.py then fails
        return

    def gpu_typed_cvt(arg):
        if isinstance(arg, float):
            handle = interpreter.TensorHandle(np.array([arg], dtype=np.float32), tl.float32)
            return tl.tensor(handle, tl.float32)
        return implicit_cvt(arg)

    interpreter._implicit_cvt = gpu_typed_cvt


if os.environ.get("TRITON_INTERPRET") == "1":
    try:
        _imitate_gpu_argument_typing()
    except ImportError:  # no triton: its tests skip themselves
        pass


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def _cap_hypothesis_examples(items, cap):
    """A test's own @settings(max_examples=...) outranks the profile: cap it to the profile's."""
    for item in items:
        fn = getattr(item, "obj", None)
        own = getattr(fn, "_hypothesis_internal_use_settings", None)
        if own is not None and own.max_examples > cap:
            fn._hypothesis_internal_use_settings = settings(own, max_examples=cap)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("HYPOTHESIS_PROFILE") == "gpu":
        _cap_hypothesis_examples(items, settings.get_profile("gpu").max_examples)
    has_cuda = torch.cuda.is_available()
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        # Markers, not keywords: keywords also hold the names of the folders above the test
        # (a checkout in a folder named "gpu" or "slow" would skip everything).
        if item.get_closest_marker("slow") and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if item.get_closest_marker("gpu") and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: tiny networks train fastest so, and a loaded machine stays
    usable. Opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=[param(name) for name in BACKENDS])
def backend(request):
    """The compiled or JIT backend a kernel test runs on ("cpu", "triton", "cuda"; see
    tests/backends.py), skipped with the reason when it cannot run here. Module-scoped, so that
    hypothesis tests may take it (a module's tests run grouped by backend).
    `@backends.only(...)` narrows a test to some of them."""
    reason = unavailable(request.param)
    if reason:
        pytest.skip(f"backend {request.param!r}: {reason}")
    return request.param


@pytest.fixture(scope="module")
def device(backend):
    """Where the backend's tensors live: cuda for "cuda", and for "triton" when a GPU is present."""
    return device_of(backend)
