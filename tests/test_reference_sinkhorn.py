"""lcmat.reference.sinkhorn against POT and against its own stated definitions.

POT solves the normalised problem (a / t, b / t) for total mass t; the plan for (a, b) is t times
its plan (brute.pot_plan). Potentials are unique up to f + c, g - c; with the normalisation,
f - f_pot and g - g_pot are constants summing to reg log t.
"""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import brute
from lcmat.reference import (sinkhorn_log, sinkhorn_log_ragged, sinkhorn_plan,
                             squared_euclidean_cost)

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
