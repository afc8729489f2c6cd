"""The compiled Sinkhorn plan (csrc/sinkhorn_plan.cpp) and the few-columns path of the compiled
solver (csrc/cpu/sinkhorn.cpp, m <= 32) against the reference (lcmat/reference/sinkhorn.py)."""
import pytest
import torch
from hypothesis import given, strategies as st

import lcmat.reference as R
from lcmat import csrc, ops

pytestmark = pytest.mark.skipif(not csrc.available("cpu"), reason="lcmat._C is not built")


def _potentials(B, n, m, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (B,) if B else ()
    M = torch.rand(*shape, n, m, generator=gen, dtype=torch.float64).to(dtype) * 4
    f = (torch.randn(*shape, n, generator=gen, dtype=torch.float64) * 0.1).to(dtype)
    g = (torch.randn(*shape, m, generator=gen, dtype=torch.float64) * 0.1).to(dtype)
    return f, g, M


@given(B=st.sampled_from([0, 1, 3]), n=st.integers(0, 70), m=st.integers(0, 40),
       dtype=st.sampled_from([torch.float32, torch.float64]), reg=st.sampled_from([0.05, 0.1, 1.0]),
       seed=st.integers(0, 2**16))
def test_plan_matches_reference(B, n, m, dtype, reg, seed):
    f, g, M = _potentials(B, n, m, dtype, seed)
    got = ops.sinkhorn_plan(f, g, M, reg, backend="cpu")
    assert got.shape == M.shape and got.dtype == dtype
    rtol = 2e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, R.sinkhorn_plan(f, g, M, reg), rtol=rtol, atol=0.0)


def test_plan_large_parallel_and_infinities():
    f, g, M = _potentials(0, 3000, 50, torch.float32, 1)
    f[5] = -torch.inf  # a zero-mass row: its plan row is zero
    got = ops.sinkhorn_plan(f, g, M, 0.1, backend="cpu")
    torch.testing.assert_close(got, R.sinkhorn_plan(f, g, M, 0.1), rtol=2e-5, atol=0.0)
    assert (got[5] == 0).all()


def test_plan_rejects_bad_arguments():
    f, g, M = _potentials(0, 4, 3, torch.float32, 0)
    with pytest.raises(RuntimeError, match="reg"):
        csrc.sinkhorn_plan(f, g, M, 0.0)
    with pytest.raises(RuntimeError, match="f: must have shape"):
        csrc.sinkhorn_plan(f[:3], g, M, 0.1)
    with pytest.raises(RuntimeError, match="g: must have shape"):
        csrc.sinkhorn_plan(f, g[:2], M, 0.1)


@given(n=st.integers(1, 3000), m=st.integers(1, 32), dtype=st.sampled_from([torch.float32, torch.float64]),
       zero_rows=st.booleans(), iters=st.integers(1, 12), check_every=st.sampled_from([1, 3]),
       seed=st.integers(0, 2**16))
def test_few_columns_solver_matches_reference(n, m, dtype, zero_rows, iters, check_every, seed):
    gen = torch.Generator().manual_seed(seed)
    M = (torch.rand(n, m, generator=gen, dtype=torch.float64) * 2).to(dtype)
    a = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1
    if zero_rows and n > 1:
        a[::3] = 0.0
    b = torch.rand(m, generator=gen, dtype=torch.float64) + 0.1
    a, b = (a / a.sum()).to(dtype), (b / b.sum()).to(dtype)
    got = ops.sinkhorn_log(a, b, M, 0.1, max_iter=iters, tol=1e-7, check_every=check_every, backend="cpu")
    want = R.sinkhorn_log(a, b, M, 0.1, max_iter=iters, tol=1e-7, check_every=check_every)
    rtol, atol = (1e-4, 1e-5) if dtype == torch.float32 else (1e-10, 1e-12)
    assert int(got[2]) == int(want[2])
    for x, y in zip(got[:2], want[:2]):
        finite = torch.isfinite(y)
        assert torch.equal(finite, torch.isfinite(x))
        torch.testing.assert_close(x[finite], y[finite], rtol=rtol, atol=atol)
    torch.testing.assert_close(got[3], want[3], rtol=1e-3 if dtype == torch.float32 else 1e-8, atol=1e-6)


def test_few_columns_parallel_equals_one_thread():
    gen = torch.Generator().manual_seed(3)
    M = torch.rand(40_000, 10, generator=gen)
    a, b = torch.full((40_000,), 1 / 40_000), torch.full((10,), 0.1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.sinkhorn_log(a, b, M, 0.1, max_iter=20, tol=0.0, backend="cpu")
        torch.set_num_threads(max(2, threads))
        many = ops.sinkhorn_log(a, b, M, 0.1, max_iter=20, tol=0.0, backend="cpu")
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one[0], many[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one[1], many[1], rtol=1e-5, atol=1e-6)
