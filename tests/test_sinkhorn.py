"""Log-domain Sinkhorn (sinkhorn_log, sinkhorn_log_ragged) and its plan (sinkhorn_plan).

First the reference (lcmat.reference.sinkhorn) against POT and against its own stated
definitions. POT solves the normalised problem (a / t, b / t) for total mass t; the plan for
(a, b) is t times its plan (brute.pot_plan). Potentials are unique up to f + c, g - c; with the
normalisation, f - f_pot and g - g_pot are constants summing to reg log t. Then every backend (the
`backend` fixture: cpu, triton, cuda) against the reference: the same stopping rule, the same
returns.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import brute
import lcmat.reference as R
from backends import kernels, maybe, only
from lcmat import ops
from lcmat.reference import (sinkhorn_log, sinkhorn_log_ragged, sinkhorn_plan,
                             squared_euclidean_cost)

DTYPES = st.sampled_from([torch.float32, torch.float64])

# ---- the reference against POT and its definitions -------------------------------------------

TIGHT = dict(max_iter=20000, tol=1e-12)


def problem(n, m, seed, total=1.0, cost_scale=1.0, dtype=torch.float64):
    """Masses a [n], b [m] with equal total mass and a cost [n, m] in [0, cost_scale)."""
    gen = brute.generator(seed)
    a = 0.1 + torch.rand(n, generator=gen, dtype=torch.float64)
    b = 0.1 + torch.rand(m, generator=gen, dtype=torch.float64)
    a, b = total * a / a.sum(), total * b / b.sum()
    M = cost_scale * torch.rand(n, m, generator=gen, dtype=torch.float64)
    return a.to(dtype), b.to(dtype), M.to(dtype)


def relative_row_error(plan, a):
    """The documented stopping quantity: sum_i |(P 1)_i - a_i| / sum_i a_i."""
    return float((plan.sum(-1) - a).abs().sum(-1) / a.sum(-1))


def assert_potentials_match_pot(f, g, f_pot, g_pot, reg, total, atol):
    """f = f_pot + c1, g = g_pot + c2 with c1 + c2 = reg log(total)."""
    df = f.double().numpy() - f_pot
    dg = g.double().numpy() - g_pot
    np.testing.assert_allclose(df, np.full_like(df, df.mean()), rtol=0, atol=atol)
    np.testing.assert_allclose(dg, np.full_like(dg, dg.mean()), rtol=0, atol=atol)
    np.testing.assert_allclose(df.mean() + dg.mean(), reg * np.log(total), rtol=0, atol=atol)


# ---------------------------------------------------------------------------------------------
# One dense problem

@pytest.mark.parametrize("reg", [1.0, 0.1, 0.05])
@given(n=st.integers(1, 9), m=st.integers(1, 9), seed=st.integers(0, 2**31 - 1),
       total=st.sampled_from([1.0, 7.5, 0.02]))
def test_sinkhorn_log_matches_pot(reg, n, m, seed, total):
    a, b, M = problem(n, m, seed, total)
    f, g, n_iter, err = sinkhorn_log(a, b, M, reg, **TIGHT)
    assert f.shape == (n,) and g.shape == (m,) and n_iter.shape == err.shape == ()
    assert float(err) <= 1e-12 and 1 <= int(n_iter) < 20000
    plan = sinkhorn_plan(f, g, M, reg)
    for method in ("sinkhorn_log", "sinkhorn"):
        plan_pot, f_pot, g_pot = brute.pot_plan(a, b, M, reg, method=method)
        np.testing.assert_allclose(plan.numpy(), plan_pot, rtol=1e-9, atol=1e-12 * total)
    _, f_pot, g_pot = brute.pot_plan(a, b, M, reg)
    assert_potentials_match_pot(f, g, f_pot, g_pot, reg, total, atol=1e-9 * reg)
    # Marginals: columns exact after the g-update, rows within the stopping tolerance.
    torch.testing.assert_close(plan.sum(0), b, rtol=1e-12, atol=1e-15)
    assert relative_row_error(plan, a) <= 1e-12 * 1.01


def test_reported_error_and_iterations_follow_the_definition():
    a, b, M = problem(8, 6, seed=1, total=3.0)
    reg, tol = 0.05, 1e-9
    f, g, n_iter, err = sinkhorn_log(a, b, M, reg, tol=tol)
    n = int(n_iter)
    assert n > 5
    assert float(err) == pytest.approx(relative_row_error(sinkhorn_plan(f, g, M, reg), a),
                                       rel=1e-10)
    assert float(err) <= tol
    # One iteration fewer has not converged: n_iter is the first iteration meeting tol.
    f1, g1, n1, err1 = sinkhorn_log(a, b, M, reg, max_iter=n - 1, tol=tol)
    assert int(n1) == n - 1 and float(err1) > tol
    assert float(err1) == pytest.approx(relative_row_error(sinkhorn_plan(f1, g1, M, reg), a),
                                        rel=1e-10)


def test_check_every_stops_on_a_multiple():
    a, b, M = problem(7, 5, seed=2)
    reg, tol = 0.05, 1e-10
    n1 = int(sinkhorn_log(a, b, M, reg, tol=tol)[2])
    for every in (2, 5, 7):
        n_every = int(sinkhorn_log(a, b, M, reg, tol=tol, check_every=every)[2])
        assert n_every % every == 0 and n1 <= n_every
        # At the previous check it had not converged yet.
        err_before = sinkhorn_log(a, b, M, reg, max_iter=n_every - every, tol=0.0)[3]
        assert float(err_before) > tol


def test_max_iter_reached_reports_error_at_last_iteration():
    a, b, M = problem(7, 5, seed=3)
    reg = 0.01
    f, g, n_iter, err = sinkhorn_log(a, b, M, reg, max_iter=7, tol=1e-14, check_every=5)
    assert int(n_iter) == 7
    assert float(err) == pytest.approx(relative_row_error(sinkhorn_plan(f, g, M, reg), a),
                                       rel=1e-10)


def test_float32_matches_pot_loosely():
    a, b, M = problem(9, 4, seed=4, total=2.0, dtype=torch.float32)
    f, g, n_iter, err = sinkhorn_log(a, b, M, 0.1, tol=1e-6)
    assert f.dtype == g.dtype == err.dtype == torch.float32
    plan_pot, f_pot, g_pot = brute.pot_plan(a, b, M, 0.1)
    np.testing.assert_allclose(sinkhorn_plan(f, g, M, 0.1).double().numpy(), plan_pot,
                               rtol=1e-4, atol=1e-6)
    assert_potentials_match_pot(f, g, f_pot, g_pot, 0.1, 2.0, atol=1e-4)


def test_non_contiguous_cost():
    a, b, M = problem(5, 7, seed=5)
    Mt = M.T.contiguous().T
    assert not Mt.is_contiguous()
    f, g, _, _ = sinkhorn_log(a, b, Mt, 0.1, **TIGHT)
    plan_pot, _, _ = brute.pot_plan(a, b, M, 0.1)
    np.testing.assert_allclose(sinkhorn_plan(f, g, Mt, 0.1).numpy(), plan_pot, rtol=1e-9,
                               atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Zero masses and small regularisation

def test_zero_masses_give_zero_plan_rows_and_columns():
    a, b, M = problem(7, 6, seed=6, total=4.0)
    a[[1, 4]] = 0.0
    b[[0, 5]] = 0.0
    a, b = 4.0 * a / a.sum(), 4.0 * b / b.sum()
    f, g, n_iter, err = sinkhorn_log(a, b, M, 0.1, **TIGHT)
    assert torch.isneginf(f[[1, 4]]).all() and torch.isneginf(g[[0, 5]]).all()
    assert torch.isfinite(f[[0, 2, 3, 5, 6]]).all() and torch.isfinite(g[1:5]).all()
    plan = sinkhorn_plan(f, g, M, 0.1)
    assert not plan.isnan().any()
    assert (plan[[1, 4]] == 0).all() and (plan[:, [0, 5]] == 0).all()
    rows, cols = [0, 2, 3, 5, 6], [1, 2, 3, 4]
    plan_pot, _, _ = brute.pot_plan(a[rows], b[cols], M[rows][:, cols], 0.1)
    np.testing.assert_allclose(plan[rows][:, cols].numpy(), plan_pot, rtol=1e-9, atol=1e-12)
    assert float(err) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cost_scale", [1.0, 250.0])
@pytest.mark.parametrize("reg_factor", [1.0, 0.1, 0.01, 1e-3])
def test_small_regularisation_stays_finite(dtype, cost_scale, reg_factor):
    a, b, M = problem(12, 9, seed=7, total=5.0, cost_scale=cost_scale, dtype=dtype)
    reg = reg_factor * cost_scale
    f, g, n_iter, err = sinkhorn_log(a, b, M, reg, max_iter=300, tol=1e-6)
    plan = sinkhorn_plan(f, g, M, reg)
    for x in (f, g, err, plan):
        assert torch.isfinite(x).all()
    rtol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(plan.sum(0), b, rtol=rtol, atol=rtol * 5.0)
    # The row error still decreases with iterations (no blow-up).
    err_early = sinkhorn_log(a, b, M, reg, max_iter=5, tol=0.0)[3]
    assert float(err) <= float(err_early) + 1e-6


# ---------------------------------------------------------------------------------------------
# Dense batch with per-problem stopping

def test_batch_stops_each_problem_on_its_own():
    reg = 0.05
    problems = [problem(6, 5, seed=10 + i, total=2.0, cost_scale=s)
                for i, s in enumerate([0.2, 1.0, 2.5, 0.5])]
    a = torch.stack([p[0] for p in problems])
    b = torch.stack([p[1] for p in problems])
    M = torch.stack([p[2] for p in problems])
    f, g, n_iter, err = sinkhorn_log(a, b, M, reg, tol=1e-10)
    assert f.shape == (4, 6) and g.shape == (4, 5) and n_iter.shape == err.shape == (4,)
    assert len(set(n_iter.tolist())) > 1, n_iter
    for i, (ai, bi, Mi) in enumerate(problems):
        fi, gi, ni, ei = sinkhorn_log(ai, bi, Mi, reg, tol=1e-10)
        assert int(n_iter[i]) == int(ni)
        torch.testing.assert_close(f[i], fi, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(g[i], gi, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(err[i], ei, rtol=1e-10, atol=1e-20)
    plan = sinkhorn_plan(f, g, M, reg)
    assert plan.shape == (4, 6, 5)
    torch.testing.assert_close(plan[2], sinkhorn_plan(f[2], g[2], M[2], reg), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# sinkhorn_plan and squared_euclidean_cost, elementwise

def test_sinkhorn_plan_elementwise():
    gen = brute.generator(8)
    f = torch.randn(4, generator=gen, dtype=torch.float64)
    g = torch.randn(3, generator=gen, dtype=torch.float64)
    M = torch.rand(4, 3, generator=gen, dtype=torch.float64)
    plan = sinkhorn_plan(f, g, M, 0.3)
    for i in range(4):
        for j in range(3):
            assert float(plan[i, j]) == pytest.approx(
                np.exp((float(f[i]) + float(g[j]) - float(M[i, j])) / 0.3), rel=1e-14)


@given(n=st.integers(0, 7), m=st.integers(0, 7), D=st.integers(1, 5),
       seed=st.integers(0, 2**31 - 1))
def test_squared_euclidean_cost(n, m, D, seed):
    gen = brute.generator(seed)
    x = torch.randn(n, D, generator=gen, dtype=torch.float64)
    y = torch.randn(m, D, generator=gen, dtype=torch.float64)
    if n and m:
        y[0] = x[0]  # an exact zero distance must not go negative
    got = squared_euclidean_cost(x, y)
    assert got.shape == (n, m) and bool((got >= 0).all())
    expected = brute.pairwise_squared_euclidean(x, y)
    scale = 1e-13 * ((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :])
    assert bool(((got - expected).abs() <= scale + 1e-300).all())


# ---------------------------------------------------------------------------------------------
# Ragged batches

SIZES = [(5, 4), (1, 1), (0, 0), (0, 3), (4, 0), (17, 6), (3, 14), (2, 2)]


def ragged(sizes, seed, dtype=torch.float64, D=3):
    """Concatenated masses (each problem of its own total), features, flat stored costs from
    those features, and the offsets."""
    gen = brute.generator(seed)
    a_parts, b_parts, x_parts, y_parts, costs = [], [], [], [], []
    for p, (n, m) in enumerate(sizes):
        total = 0.5 + p
        a = 0.1 + torch.rand(n, generator=gen, dtype=torch.float64)
        b = 0.1 + torch.rand(m, generator=gen, dtype=torch.float64)
        a_parts.append(total * a / a.sum())
        b_parts.append(total * b / b.sum())
        x = torch.randn(n, D, generator=gen, dtype=torch.float64)
        y = torch.randn(m, D, generator=gen, dtype=torch.float64) + 0.5
        x_parts.append(x)
        y_parts.append(y)
        costs.append(squared_euclidean_cost(x, y).flatten())
    row_offsets = torch.tensor([0] + np.cumsum([n for n, _ in sizes]).tolist())
    col_offsets = torch.tensor([0] + np.cumsum([m for _, m in sizes]).tolist())
    a, b, x, y, cost = (torch.cat(parts).to(dtype)
                        for parts in (a_parts, b_parts, x_parts, y_parts, costs))
    return a, b, x, y, cost, row_offsets, col_offsets


@pytest.mark.parametrize("source", ["cost", "features"])
def test_ragged_matches_each_problem_alone(source):
    a, b, x, y, cost, ro, co = ragged(SIZES, seed=20)
    reg = 0.5
    kwargs = dict(cost=cost) if source == "cost" else dict(x=x, y=y)
    f, g, n_iter, err = sinkhorn_log_ragged(a, b, ro, co, reg, tol=1e-11, **kwargs)
    assert f.shape == a.shape and g.shape == b.shape and n_iter.shape == err.shape == (8,)
    for p, (n, m) in enumerate(SIZES):
        r0, r1, c0, c1 = int(ro[p]), int(ro[p + 1]), int(co[p]), int(co[p + 1])
        if n == 0 or m == 0:
            # Empty problems are skipped: nothing iterated, zero potentials, zero error.
            assert int(n_iter[p]) == 0 and float(err[p]) == 0.0
            assert (f[r0:r1] == 0).all() and (g[c0:c1] == 0).all()
            continue
        M = squared_euclidean_cost(x[r0:r1], y[c0:c1])
        fp, gp, np_, ep = sinkhorn_log(a[r0:r1], b[c0:c1], M, reg, tol=1e-11)
        assert int(n_iter[p]) == int(np_)
        torch.testing.assert_close(f[r0:r1], fp, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(g[c0:c1], gp, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(err[p], ep, rtol=1e-10, atol=1e-20)
        # ... and the plan is the true entropic plan (POT), on the brute-force cost.
        plan_pot, _, _ = brute.pot_plan(a[r0:r1], b[c0:c1],
                                        brute.pairwise_squared_euclidean(x[r0:r1], y[c0:c1]),
                                        reg)
        np.testing.assert_allclose(sinkhorn_plan(f[r0:r1], g[c0:c1], M, reg).numpy(),
                                   plan_pot, rtol=1e-7, atol=1e-12)
    assert len(set(n_iter[n_iter > 0].tolist())) > 1  # problems stop on their own


def test_ragged_one_by_one_problem():
    a = torch.tensor([2.5], dtype=torch.float64)
    b = torch.tensor([2.5], dtype=torch.float64)
    cost = torch.tensor([0.75], dtype=torch.float64)
    f, g, n_iter, err = sinkhorn_log_ragged(a, b, [0, 1], [0, 1], 0.1, cost=cost)
    plan = sinkhorn_plan(f, g, cost.view(1, 1), 0.1)
    torch.testing.assert_close(plan, torch.tensor([[2.5]], dtype=torch.float64), rtol=1e-12,
                               atol=0)
    assert int(n_iter) >= 1 and float(err) <= 1e-6


def test_ragged_float32_matches_float64():
    a, b, x, y, cost, ro, co = ragged(SIZES, seed=21)
    a32, b32, x32, y32 = a.float(), b.float(), x.float(), y.float()
    f, g, _, _ = sinkhorn_log_ragged(a32, b32, ro, co, 0.5, x=x32, y=y32, tol=1e-5)
    f64, g64, _, _ = sinkhorn_log_ragged(a, b, ro, co, 0.5, x=x, y=y, tol=1e-12)
    assert f.dtype == g.dtype == torch.float32
    for p in range(len(SIZES)):
        r0, r1, c0, c1 = int(ro[p]), int(ro[p + 1]), int(co[p]), int(co[p + 1])
        if r1 == r0 or c1 == c0:
            continue
        M = brute.pairwise_squared_euclidean(x[r0:r1], y[c0:c1])
        plan32 = sinkhorn_plan(f[r0:r1].double(), g[c0:c1].double(), M, 0.5)
        plan64 = sinkhorn_plan(f64[r0:r1], g64[c0:c1], M, 0.5)
        torch.testing.assert_close(plan32, plan64, rtol=1e-3, atol=1e-5)


def test_ragged_all_empty():
    z = torch.zeros(0, dtype=torch.float64)
    f, g, n_iter, err = sinkhorn_log_ragged(z, z, [0, 0, 0], [0, 0, 0], 0.1, cost=z)
    assert f.shape == g.shape == (0,) and n_iter.tolist() == [0, 0]


@pytest.mark.parametrize("which", ["neither", "both", "x_only", "y_only"])
def test_ragged_needs_exactly_one_cost_source(which):
    a, b, x, y, cost, ro, co = ragged([(3, 2)], seed=22)
    kwargs = {"neither": {}, "both": dict(cost=cost, x=x, y=y), "x_only": dict(x=x),
              "y_only": dict(y=y)}[which]
    with pytest.raises(ValueError, match="cost"):
        sinkhorn_log_ragged(a, b, ro, co, 0.1, **kwargs)


def test_ragged_cost_with_half_the_features_is_rejected():
    a, b, x, y, cost, ro, co = ragged([(3, 2)], seed=22)
    with pytest.raises(ValueError, match="cost"):
        sinkhorn_log_ragged(a, b, ro, co, 0.1, cost=cost, x=x)


# ---- every backend against the reference -----------------------------------------------------

# The compiled backend on CPU tensors: dense, batched and ragged problems, the same iterations and
# errors as the reference in float64, the potentials at 1e-3 in float32.

def ot_problem(n, m, dtype, seed, zero_mass=False):
    g = torch.Generator().manual_seed(seed)
    M = torch.rand(n, m, generator=g, dtype=torch.float64)
    a = torch.ones(n, dtype=torch.float64)
    if zero_mass and n > 1:
        a[0] = 0.0
    b = torch.rand(m, generator=g, dtype=torch.float64) + 0.5
    b = b / b.sum() * a.sum()
    return a.to(dtype), b.to(dtype), M.to(dtype)


def assert_potentials_close(out, ref, dtype):
    f, g, n_iter, err = out
    f_ref, g_ref, n_iter_ref, err_ref = ref
    if dtype == torch.float64:
        torch.testing.assert_close(f, f_ref, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-9)
        assert torch.equal(n_iter, n_iter_ref)
        torch.testing.assert_close(err, err_ref, rtol=1e-6, atol=1e-12)
    else:
        torch.testing.assert_close(f.double(), f_ref.double(), rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(g.double(), g_ref.double(), rtol=1e-3, atol=1e-3)


@only("cpu")
@given(n=st.integers(1, 30), m=st.integers(1, 12), reg=st.sampled_from([0.05, 0.3]),
       check_every=st.sampled_from([1, 3]), zero_mass=st.booleans(), nc=st.booleans(),
       dtype=DTYPES, seed=st.integers(0, 99))
def test_sinkhorn_dense(backend, n, m, reg, check_every, zero_mass, nc, dtype, seed):
    kern = kernels(backend)
    a, b, M = ot_problem(n, m, dtype, seed, zero_mass)
    tol_ = 1e-7 if dtype == torch.float64 else 1e-4
    out = kern.sinkhorn_log(maybe(a, nc), b, maybe(M, nc), reg, 300, tol_, check_every)
    assert out[2].dim() == 0 and out[3].dim() == 0 and out[0].dtype == dtype
    ref = R.sinkhorn_log(a.double(), b.double(), M.double(), reg, 300, tol_, check_every)
    if dtype == torch.float64:
        assert_potentials_close(out, ref, dtype)
    else:
        assert_potentials_close(out[:2] + (None, None), ref[:2] + (None, None), dtype)
    if zero_mass and n > 1:
        assert out[0][0] == -math.inf


@only("cpu")
@given(B=st.integers(1, 4), n=st.integers(1, 20), m=st.integers(1, 9), dtype=DTYPES, seed=st.integers(0, 99))
def test_sinkhorn_dense_batched(backend, B, n, m, dtype, seed):
    kern = kernels(backend)
    problems = [ot_problem(n, m, torch.float64, seed + p) for p in range(B)]
    a, b, M = (torch.stack([p[i] for p in problems]) for i in range(3))
    M = M * torch.linspace(1, 3, B, dtype=torch.float64)[:, None, None]  # different convergence speeds
    out = kern.sinkhorn_log(a.to(dtype), b.to(dtype), M.to(dtype), 0.1, 200, 1e-7 if dtype == torch.float64 else 1e-4)
    ref = R.sinkhorn_log(a, b, M, 0.1, 200, 1e-7 if dtype == torch.float64 else 1e-4)
    assert out[0].shape == (B, n) and out[2].shape == (B,)
    assert_potentials_close(out, ref, dtype)


def ragged_problem(sizes, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    row_off, col_off = [0], [0]
    for n_p, m_p in sizes:
        row_off.append(row_off[-1] + n_p)
        col_off.append(col_off[-1] + m_p)
    x = torch.randn(row_off[-1], D, generator=g, dtype=torch.float64)
    y = torch.randn(col_off[-1], D, generator=g, dtype=torch.float64)
    a = torch.ones(row_off[-1], dtype=torch.float64)
    b = torch.rand(col_off[-1], generator=g, dtype=torch.float64) + 0.5
    blocks = []
    for p, (n_p, m_p) in enumerate(sizes):
        if m_p:
            b[col_off[p]:col_off[p + 1]] *= n_p / b[col_off[p]:col_off[p + 1]].sum()
        blocks.append(R.squared_euclidean_cost(x[row_off[p]:row_off[p + 1]], y[col_off[p]:col_off[p + 1]]).flatten())
    cost = torch.cat(blocks) if blocks else torch.zeros(0, dtype=torch.float64)
    return (a.to(dtype), b.to(dtype), row_off, col_off, cost.to(dtype), x.to(dtype), y.to(dtype))


RAGGED_SIZES = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 8)), min_size=1, max_size=6)


@only("cpu")
@given(sizes=RAGGED_SIZES, from_features=st.booleans(), check_every=st.sampled_from([1, 2]),
       dtype=DTYPES, seed=st.integers(0, 99))
def test_sinkhorn_ragged(backend, sizes, from_features, check_every, dtype, seed):
    kern = kernels(backend)
    a, b, row_off, col_off, cost, x, y = ragged_problem(sizes, 3, dtype, seed)
    tol_ = 1e-7 if dtype == torch.float64 else 1e-4
    kw = dict(x=x, y=y) if from_features else dict(cost=cost)
    ref_kw = dict(x=x.double(), y=y.double()) if from_features else dict(cost=cost.double())
    out = kern.sinkhorn_log_ragged(a, b, torch.tensor(row_off), col_off, 1.0, max_iter=300, tol=tol_,
                                   check_every=check_every, **kw)
    ref = R.sinkhorn_log_ragged(a.double(), b.double(), row_off, col_off, 1.0, max_iter=300, tol=tol_,
                                check_every=check_every, **ref_kw)
    assert out[0].shape == a.shape and out[2].shape == (len(sizes),)
    assert_potentials_close(out, ref, dtype)
    for p, (n_p, m_p) in enumerate(sizes):
        if n_p == 0 or m_p == 0:
            assert out[2][p] == 0 and out[3][p] == 0


@only("cpu")
def test_sinkhorn_ragged_very_different_sizes(backend):
    kern = kernels(backend)
    sizes = [(700, 30), (0, 5), (3, 1), (1, 1), (50, 0), (120, 9), (2, 40)]
    a, b, row_off, col_off, cost, x, y = ragged_problem(sizes, 4, torch.float64, 7)
    for kw in (dict(cost=cost), dict(x=x, y=y)):
        out = kern.sinkhorn_log_ragged(a, b, row_off, col_off, 2.0, max_iter=500, tol=1e-9, **kw)
        ref = R.sinkhorn_log_ragged(a, b, row_off, col_off, 2.0, max_iter=500, tol=1e-9, **kw)
        assert_potentials_close(out, ref, torch.float64)


@only("cpu")
def test_sinkhorn_arguments(backend):
    kern = kernels(backend)
    a, b, M = ot_problem(5, 3, torch.float64, 0)
    with pytest.raises(ValueError, match="cost"):
        kern.sinkhorn_log_ragged(a, b, [0, 5], [0, 3], 1.0)
    with pytest.raises(RuntimeError, match="reg"):
        kern.sinkhorn_log(a, b, M, 0.0)
    with pytest.raises(ValueError, match="row_offsets"):  # checked as the reference checks it
        kern.sinkhorn_log_ragged(a, b, [0, 6], [0, 3], 1.0, cost=M.flatten())
    f, g, n_iter, err = kern.sinkhorn_log(a, b, M, 1.0, max_iter=0)
    assert n_iter == 0 and err == math.inf and torch.all(f == 0)


# The compiled plan (csrc/sinkhorn.cpp) and the few-columns path of the compiled solver
# (m <= 32), through lcmat.ops.
def _potentials(B, n, m, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (B,) if B else ()
    M = torch.rand(*shape, n, m, generator=gen, dtype=torch.float64).to(dtype) * 4
    f = (torch.randn(*shape, n, generator=gen, dtype=torch.float64) * 0.1).to(dtype)
    g = (torch.randn(*shape, m, generator=gen, dtype=torch.float64) * 0.1).to(dtype)
    return f, g, M


@only("cpu")
@given(B=st.sampled_from([0, 1, 3]), n=st.integers(0, 70), m=st.integers(0, 40),
       dtype=st.sampled_from([torch.float32, torch.float64]), reg=st.sampled_from([0.05, 0.1, 1.0]),
       seed=st.integers(0, 2**16))
def test_plan_matches_reference(backend, B, n, m, dtype, reg, seed):
    f, g, M = _potentials(B, n, m, dtype, seed)
    got = ops.sinkhorn_plan(f, g, M, reg, backend=backend)
    assert got.shape == M.shape and got.dtype == dtype
    rtol = 2e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, R.sinkhorn_plan(f, g, M, reg), rtol=rtol, atol=0.0)


@only("cpu")
def test_plan_large_parallel_and_infinities(backend):
    f, g, M = _potentials(0, 3000, 50, torch.float32, 1)
    f[5] = -torch.inf  # a zero-mass row: its plan row is zero
    got = ops.sinkhorn_plan(f, g, M, 0.1, backend=backend)
    torch.testing.assert_close(got, R.sinkhorn_plan(f, g, M, 0.1), rtol=2e-5, atol=0.0)
    assert (got[5] == 0).all()


@only("cpu")
def test_plan_rejects_bad_arguments(backend):
    kern = kernels(backend)
    f, g, M = _potentials(0, 4, 3, torch.float32, 0)
    with pytest.raises(RuntimeError, match="reg"):
        kern.sinkhorn_plan(f, g, M, 0.0)
    with pytest.raises(RuntimeError, match="f: must have shape"):
        kern.sinkhorn_plan(f[:3], g, M, 0.1)
    with pytest.raises(RuntimeError, match="g: must have shape"):
        kern.sinkhorn_plan(f, g[:2], M, 0.1)


@only("cpu")
@given(n=st.integers(1, 3000), m=st.integers(1, 32), dtype=st.sampled_from([torch.float32, torch.float64]),
       zero_rows=st.booleans(), iters=st.integers(1, 12), check_every=st.sampled_from([1, 3]),
       seed=st.integers(0, 2**16))
def test_few_columns_solver_matches_reference(backend, n, m, dtype, zero_rows, iters, check_every, seed):
    gen = torch.Generator().manual_seed(seed)
    M = (torch.rand(n, m, generator=gen, dtype=torch.float64) * 2).to(dtype)
    a = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1
    if zero_rows and n > 1:
        a[::3] = 0.0
    b = torch.rand(m, generator=gen, dtype=torch.float64) + 0.1
    a, b = (a / a.sum()).to(dtype), (b / b.sum()).to(dtype)
    got = ops.sinkhorn_log(a, b, M, 0.1, max_iter=iters, tol=1e-7, check_every=check_every, backend=backend)
    want = R.sinkhorn_log(a, b, M, 0.1, max_iter=iters, tol=1e-7, check_every=check_every)
    rtol, atol = (1e-4, 1e-5) if dtype == torch.float32 else (1e-10, 1e-12)
    assert int(got[2]) == int(want[2])
    for x, y in zip(got[:2], want[:2]):
        finite = torch.isfinite(y)
        assert torch.equal(finite, torch.isfinite(x))
        torch.testing.assert_close(x[finite], y[finite], rtol=rtol, atol=atol)
    torch.testing.assert_close(got[3], want[3], rtol=1e-3 if dtype == torch.float32 else 1e-8, atol=1e-6)


@only("cpu")
def test_few_columns_parallel_equals_one_thread(backend):
    gen = torch.Generator().manual_seed(3)
    M = torch.rand(40_000, 10, generator=gen)
    a, b = torch.full((40_000,), 1 / 40_000), torch.full((10,), 0.1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.sinkhorn_log(a, b, M, 0.1, max_iter=20, tol=0.0, backend=backend)
        torch.set_num_threads(max(2, threads))
        many = ops.sinkhorn_log(a, b, M, 0.1, max_iter=20, tol=0.0, backend=backend)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one[0], many[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one[1], many[1], rtol=1e-5, atol=1e-6)


# Triton (interpreted on the CPU, compiled on a GPU): 5 to 6 examples, its own tolerances.
def _ragged(ns, ms, dim, dtype, seed, device, balanced=True):
    g = torch.Generator().manual_seed(seed)
    ro = torch.tensor([0] + list(ns)).cumsum(0)
    co = torch.tensor([0] + list(ms)).cumsum(0)
    a = torch.rand(sum(ns), generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(sum(ms), generator=g, dtype=torch.float64) + 0.1
    for p in range(len(ns)):
        if balanced and ns[p] and ms[p]:  # equal total masses per problem
            b[co[p]:co[p + 1]] *= a[ro[p]:ro[p + 1]].sum() / b[co[p]:co[p + 1]].sum()
    x = torch.randn(sum(ns), dim, generator=g, dtype=torch.float64)
    y = torch.randn(sum(ms), dim, generator=g, dtype=torch.float64)
    cost = torch.cat([R.squared_euclidean_cost(x[ro[p]:ro[p + 1]], y[co[p]:co[p + 1]]).reshape(-1)
                      for p in range(len(ns))])
    return [t.to(dtype).to(device) for t in (a, b, x, y, cost)] + [ro.to(device), co.to(device)]


def _assert_same(ours, ref, dtype, exact_iters=True):
    f, g, n_iter, err = ours
    rf, rg, rn, re = ref
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-4)
    assert f.dtype == rf.dtype and g.dtype == rg.dtype and n_iter.dtype == torch.long
    torch.testing.assert_close(f, rf, equal_nan=True, **tol)
    torch.testing.assert_close(g, rg, equal_nan=True, **tol)
    if exact_iters:
        assert n_iter.tolist() == rn.tolist()
    torch.testing.assert_close(err, re, rtol=1e-6 if dtype == torch.float64 else 1e-2,
                               atol=1e-12 if dtype == torch.float64 else 1e-5)


@only("triton")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log(0) of zero masses
@settings(max_examples=6)
@given(n=st.integers(1, 30), m=st.integers(1, 20), reg=st.sampled_from([0.05, 0.5, 2.0]),
       check_every=st.integers(1, 4), seed=st.integers(0, 99))
def test_dense_matches_reference_float64(backend, device, n, m, reg, check_every, seed):
    kern = kernels(backend)
    a, b, _, _, cost, _, _ = _ragged([n], [m], 3, torch.float64, seed, device)
    M = cost.view(n, m) / cost.max().clamp_min(1e-12)
    args = (a, b, M, reg, 25, 1e-7, check_every)
    _assert_same(kern.sinkhorn_log(*args), R.sinkhorn_log(*args), torch.float64)


@only("cpu", "triton")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log(0) of zero masses
def test_dense_float32_fixed_iterations(backend, device):
    kern = kernels(backend)
    a, b, _, _, cost, _, _ = _ragged([27], [13], 5, torch.float32, 3, device)
    M = cost.view(27, 13) / cost.max()
    args = (a, b, M, 0.1, 15, 0.0, 1)  # tol 0: every problem runs max_iter
    ours, ref = kern.sinkhorn_log(*args), R.sinkhorn_log(*args)
    _assert_same(ours, ref, torch.float32)
    assert int(ours[2]) == 15


@only("cpu", "triton")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log(0) of zero masses
def test_dense_batch_with_zero_masses(backend, device):
    kern = kernels(backend)
    a, b, _, _, cost, _, _ = _ragged([17] * 3, [9] * 3, 4, torch.float64, 7, device)
    a, b, M = a.view(3, 17).clone(), b.view(3, 9).clone(), cost.view(3, 17, 9)
    a[1, 3] = 0.0  # a zero-mass row: potential -inf, zero plan row
    b[2, 0] = 0.0
    args = (a, b, M / M.max(), 0.2, 30, 1e-6, 2)
    ours, ref = kern.sinkhorn_log(*args), R.sinkhorn_log(*args)
    _assert_same(ours, ref, torch.float64)
    assert ours[0][1, 3] == -torch.inf and ours[1][2, 0] == -torch.inf


@only("triton")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log(0) of zero masses
@settings(max_examples=5)
@given(sizes=st.lists(st.tuples(st.integers(0, 19), st.integers(0, 9)), min_size=1, max_size=5),
       features=st.booleans(), seed=st.integers(0, 99))
def test_ragged_matches_reference_float64(backend, device, sizes, features, seed):
    kern = kernels(backend)
    ns, ms = zip(*sizes)
    a, b, x, y, cost, ro, co = _ragged(ns, ms, 5, torch.float64, seed, device)
    kw = dict(x=x, y=y) if features else dict(cost=cost)
    args = (a, b, ro, co, 3.0)
    opts = dict(max_iter=20, tol=1e-6, check_every=3)
    _assert_same(kern.sinkhorn_log_ragged(*args, **kw, **opts), R.sinkhorn_log_ragged(*args, **kw, **opts),
                 torch.float64)


@only("cpu", "triton")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log(0) of zero masses
def test_ragged_empty_and_one_element_problems(backend, device):
    kern = kernels(backend)
    ns, ms = [0, 5, 1, 0, 1, 18, 4], [3, 0, 1, 0, 6, 17, 1]
    a, b, x, y, cost, ro, co = _ragged(ns, ms, 7, torch.float64, 11, device)
    for kw in (dict(cost=cost), dict(x=x, y=y)):
        ours = kern.sinkhorn_log_ragged(a, b, ro, co, 2.0, **kw, max_iter=25, tol=1e-8)
        ref = R.sinkhorn_log_ragged(a, b, ro, co, 2.0, **kw, max_iter=25, tol=1e-8)
        _assert_same(ours, ref, torch.float64)
        assert ours[2].tolist()[:2] == [0, 0] and ours[3][0] == 0  # empty problems untouched


@only("cpu", "triton")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log(0) of zero masses
def test_ragged_float32_features_and_cost_agree(backend, device):
    kern = kernels(backend)
    ns, ms = [13, 1, 21], [5, 7, 11]
    a, b, x, y, cost, ro, co = _ragged(ns, ms, 19, torch.float32, 5, device)
    opts = dict(max_iter=12, tol=0.0)
    ref = R.sinkhorn_log_ragged(a, b, ro, co, 4.0, cost=cost, **opts)
    _assert_same(kern.sinkhorn_log_ragged(a, b, ro, co, 4.0, cost=cost, **opts), ref, torch.float32)
    _assert_same(kern.sinkhorn_log_ragged(a, b, ro, co, 4.0, x=x, y=y, **opts), ref, torch.float32)


@only("cpu", "triton")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log(0) of zero masses
def test_unbalanced_masses_hit_max_iter(backend, device):
    kern = kernels(backend)
    # Unequal total masses never converge: err is the one at the max_iter check.
    a, b, _, _, cost, ro, co = _ragged([9, 6], [4, 5], 3, torch.float64, 2, device, balanced=False)
    opts = dict(max_iter=7, tol=1e-9, check_every=5)
    ours = kern.sinkhorn_log_ragged(a, b, ro, co, 1.0, cost=cost, **opts)
    _assert_same(ours, R.sinkhorn_log_ragged(a, b, ro, co, 1.0, cost=cost, **opts), torch.float64)
    assert ours[2].tolist() == [7, 7] and bool((ours[3] > 1e-9).all())


@only("cpu", "triton")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log(0) of zero masses
def test_max_iter_zero(backend, device):
    kern = kernels(backend)
    a, b, _, _, cost, ro, co = _ragged([4], [3], 2, torch.float64, 0, device)
    ours = kern.sinkhorn_log_ragged(a, b, ro, co, 1.0, cost=cost, max_iter=0)
    ref = R.sinkhorn_log_ragged(a, b, ro, co, 1.0, cost=cost, max_iter=0)
    assert ours[2].tolist() == ref[2].tolist() == [0]
    assert torch.equal(ours[3], ref[3]) and torch.equal(ours[0], ref[0])


@only("triton")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log(0) of zero masses
def test_eps_scaling_reaches_the_same_plan(backend, device):
    ns, ms = [15, 8], [6, 9]
    a, b, x, y, cost, ro, co = _ragged(ns, ms, 4, torch.float64, 9, device)
    cost = cost / cost.max()
    reg = 0.05
    from lcmat.triton_kernels.sinkhorn import sinkhorn_log_ragged_eps_scaling
    f, g, n_iter, err = sinkhorn_log_ragged_eps_scaling(a, b, ro, co, reg, cost=cost, max_iter=400,
                                                         tol=1e-9, stage_iter=5)
    rf, rg, rn, re = R.sinkhorn_log_ragged(a, b, ro, co, reg, cost=cost, max_iter=400, tol=1e-9)
    assert bool((err <= 1e-9).all()) and bool((re <= 1e-9).all())
    for p in range(2):  # potentials are unique up to a constant: compare the plans
        r0, r1, c0, c1 = int(ro[p]), int(ro[p + 1]), int(co[p]), int(co[p + 1])
        M = cost[int((torch.tensor(ns[:p]) * torch.tensor(ms[:p])).sum()):][:(r1 - r0) * (c1 - c0)]
        M = M.view(r1 - r0, c1 - c0)
        torch.testing.assert_close(R.sinkhorn_plan(f[r0:r1], g[c0:c1], M, reg),
                                   R.sinkhorn_plan(rf[r0:r1], rg[c0:c1], M, reg), rtol=1e-6, atol=1e-8)


@only("triton")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log(0) of zero masses
def test_bad_arguments_raise(backend, device):
    kern = kernels(backend)
    a, b, x, y, cost, ro, co = _ragged([4, 2], [3, 2], 2, torch.float64, 0, device)
    with pytest.raises(ValueError, match="cost, x, y"):
        kern.sinkhorn_log_ragged(a, b, ro, co, 1.0, cost=cost, x=x, y=y)
    with pytest.raises(ValueError, match="row_offsets"):
        kern.sinkhorn_log_ragged(a, b, ro.flip(0), co, 1.0, cost=cost)
    with pytest.raises(ValueError, match="cost"):
        kern.sinkhorn_log_ragged(a, b, ro, co, 1.0, cost=cost[:-1])
    with pytest.raises(ValueError, match="reg"):
        kern.sinkhorn_log(a[:4], b[:3], cost[:12].view(4, 3), 0.0)
    with pytest.raises(ValueError, match="a"):
        kern.sinkhorn_log(a[:3], b[:3], cost[:12].view(4, 3), 1.0)


@only("triton")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log(0) of zero masses
@pytest.mark.gpu
def test_gpu_imagenet_like_batch(backend, device):
    kern = kernels(backend)
    ns, ms = [1281 - (p % 7) * 13 for p in range(50)], [128] * 50
    a, b, x, y, cost, ro, co = _ragged(ns, ms, 64, torch.float32, 0, device)
    a = torch.ones_like(a)
    b = torch.cat([torch.full((m,), n / m, device=device) for n, m in zip(ns, ms)])
    opts = dict(max_iter=50, tol=0.0)
    ref = R.sinkhorn_log_ragged(a, b, ro, co, 5.0, cost=cost, **opts)
    _assert_same(kern.sinkhorn_log_ragged(a, b, ro, co, 5.0, cost=cost, **opts), ref, torch.float32)
    _assert_same(kern.sinkhorn_log_ragged(a, b, ro, co, 5.0, x=x, y=y, **opts), ref, torch.float32)
    a64, b64, c64 = a.double(), b.double(), cost.double()
    opts = dict(max_iter=300, tol=1e-6, check_every=5)
    _assert_same(kern.sinkhorn_log_ragged(a64, b64, ro, co, 5.0, cost=c64, **opts),
                 R.sinkhorn_log_ragged(a64, b64, ro, co, 5.0, cost=c64, **opts), torch.float64)


@only("triton")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log(0) of zero masses
@pytest.mark.parametrize("features,dtype", [(False, torch.float64), (True, torch.float32)])
def test_split_column_pass_matches_reference(backend, device, features, dtype):
    """Problems of more than ROW_CHUNK rows take the split column pass (row chunks, then the
    merge): a problem of several chunks and a ragged last one, one of a single column, one just
    past a chunk, small and empty ones beside them, and zero masses."""
    kern = kernels(backend)
    from lcmat.triton_kernels.sinkhorn import ROW_CHUNK, _Batch
    ns, ms = [2 * ROW_CHUNK + 5, 7, ROW_CHUNK + 1, 0, 2], [10, 3, 1, 4, 0]
    a, b, x, y, cost, ro, co = _ragged(ns, ms, 3, dtype, 11, device)
    a[5] = 0.0  # a zero-mass row in the first problem's first chunk
    b[0] = 0.0  # and a zero-mass column
    kw = dict(x=x, y=y) if features else dict(cost=cost)
    assert _Batch(a, b, ro, co, kw.get("cost"), kw.get("x"), kw.get("y")).col_parts is not None
    args = (a, b, ro, co, 0.5)
    ours = kern.sinkhorn_log_ragged(*args, max_iter=20, tol=1e-7, **kw)
    ref = R.sinkhorn_log_ragged(*args, max_iter=20, tol=1e-7, **kw)
    _assert_same(ours, ref, dtype, exact_iters=dtype == torch.float64)
    assert ours[1][0] == -torch.inf


@only("cuda")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dense_and_ragged_match_reference(backend, device, dtype):
    kern = kernels(backend)
    a, b, M = ot_problem(500, 37, dtype, 1, zero_mass=True)
    tol_ = 1e-7 if dtype == torch.float64 else 1e-4
    out = kern.sinkhorn_log(a.to(device), b.to(device), M.to(device), 0.1, 500, tol_)
    ref = R.sinkhorn_log(a.double(), b.double(), M.double(), 0.1, 500, tol_)
    assert_potentials_close(tuple(o.cpu() for o in out), ref, dtype) if dtype == torch.float64 else \
        assert_potentials_close(tuple(o.cpu() for o in out[:2]) + (None, None), ref[:2] + (None, None), dtype)
    sizes = [(300, 20), (0, 3), (5, 1), (40, 0), (90, 9)]
    a, b, row_off, col_off, cost, x, y = ragged_problem(sizes, 4, dtype, 3)
    for kw in (dict(cost=cost), dict(x=x, y=y)):
        ref = R.sinkhorn_log_ragged(a.double(), b.double(), row_off, col_off, 2.0, max_iter=400, tol=tol_,
                                    **{k: v.double() for k, v in kw.items()})
        out = kern.sinkhorn_log_ragged(a.to(device), b.to(device), row_off, col_off, 2.0, max_iter=400, tol=tol_,
                                       **{k: v.to(device) for k, v in kw.items()})
        out = tuple(o.cpu() for o in out)
        if dtype == torch.float64:
            assert_potentials_close(out, ref, dtype)
        else:
            assert_potentials_close(out[:2] + (None, None), ref[:2] + (None, None), dtype)
