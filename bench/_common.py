"""Helpers shared by the benchmark files: which backends to time, and one call that checks a
result before timing it and records the work done so that rates can be printed beside times."""
import os

import pytest
import torch

from lcmat import ops

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
THREADS = int(os.environ.get("LCMAT_BENCH_THREADS", "1"))


def backends():
    """The lcmat backends usable for tensors on DEVICE (triton only on a GPU)."""
    usable = ops.available_backends()
    if DEVICE.type == "cuda":
        return [b for b in ("reference", "cuda", "triton") if b in usable]
    return [b for b in ("reference", "cpu") if b in usable]


def peer(name):
    """The outside library `name`, or a skip when it is not installed (pip install -e .[bench])."""
    return pytest.importorskip(name, reason=f"{name} is a bench extra: pip install -e .[bench]")


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def bench(benchmark, fn, *, flops=0, bytes=0, **info):
    """Time `fn` (already checked by the caller) with pytest-benchmark; `flops` and `bytes` are
    the work of one call, stored in extra_info for the GFLOP/s and GB/s columns."""
    benchmark.extra_info.update(flops=float(flops), bytes=float(bytes), threads=THREADS,
                                device=str(DEVICE), **info)

    def call():
        out = fn()
        sync()
        return out
    return benchmark(call)


def assert_close(actual, expected, rtol=1e-4, atol=1e-6, what="result"):
    actual = torch.as_tensor(actual).detach().to("cpu", torch.float64)
    expected = torch.as_tensor(expected).detach().to("cpu", torch.float64)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")
