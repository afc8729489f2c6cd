"""The interpreter imitates the GPU compiler's typing of float arguments (tests/conftest.py).

The compiler types a Python float kernel argument as fp32, so on a GPU a float64 kernel that
takes `reg` or `rho` as a plain argument computes with a rounded constant. Under the interpreter
(as the tests run it) the same happens, so the float64 tests of such a kernel fail on the CPU
too; the kernels take their float constants as tensors in the compute dtype instead
(`_config.scalars`).
"""
import os

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from lcmat import triton_kernels as T  # noqa: E402

if not T.available("triton"):
    pytest.skip("triton backend unavailable (no CUDA and TRITON_INTERPRET unset)", allow_module_level=True)

from lcmat.triton_kernels import _config  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
IMITATED = not _config.INTERPRET or os.environ.get("LCMAT_TRITON_GPU_TYPING", "1") == "1"


@triton.jit
def _scale_by_argument(x_ptr, out_ptr, c):
    tl.store(out_ptr, tl.load(x_ptr) * c)


@triton.jit
def _scale_by_tensor(x_ptr, out_ptr, c_ptr):
    tl.store(out_ptr, tl.load(x_ptr) * tl.load(c_ptr))


@pytest.mark.skipif(not IMITATED, reason="LCMAT_TRITON_GPU_TYPING=0: the interpreter's own typing")
def test_a_float_argument_is_float32_in_a_float64_kernel():
    x = torch.ones(1, dtype=torch.float64, device=DEV)
    out = torch.empty_like(x)
    _scale_by_argument[(1,)](x, out, 0.1)
    assert float(out) == float(torch.tensor(0.1, dtype=torch.float32))
    assert float(out) != 0.1


def test_a_scalar_tensor_keeps_float64():
    x = torch.ones(1, dtype=torch.float64, device=DEV)
    out = torch.empty_like(x)
    _scale_by_tensor[(1,)](x, out, _config.scalars(tl.float64, x.device, 0.1))
    assert float(out) == 0.1
