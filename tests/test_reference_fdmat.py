"""lcmat.reference.fdmat against the formulas written out elementwise (numpy loops) and POT.

    x <- (x + eps)^beta;  x~_i = (x_i - m) / ||x_i||  (m the mean of the transformed x)
    mu_c = mean of x~ over class c;  M_ic = ||x~_i - mu_c||^2
    s_i = sum_c (P_ic M_ic)^2,  P the entropic plan between masses a_i = 1 and b_c = n_c
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import brute
from lcmat.reference import (class_prototypes, fdmat_scores, fdmat_transform, prototype_cost,
                             sinkhorn_log)


def features(N, D, seed, dtype=torch.float64, dead_units=()):
    """Non-negative post-ReLU-like features, some exact zeros, optional all-zero columns.

    Every row has an entry >= 0.5: the transform divides by ||(x_i + eps)^beta||, which is
    about sqrt(D eps^beta) for an all-zero row and small for a nearly-zero one, making its x~
    huge (1e2 to 1e3), the costs ill-conditioned and Sinkhorn crawl."""
    gen = brute.generator(seed)
    x = torch.relu(torch.randn(N, D, generator=gen, dtype=torch.float64) + 0.3)
    live = [d for d in range(D) if d not in dead_units]
    x[:, list(dead_units)] = 0.0
    top = torch.tensor(live)[x[:, live].argmax(1)]
    x[torch.arange(N), top] = x[torch.arange(N), top].clamp_min(0.5)
    return x.to(dtype)


def labels_with_all_classes(N, C, seed):
    gen = brute.generator(seed + 1)
    y = torch.randint(0, C, (N,), generator=gen)
    y[:C] = torch.arange(C)  # every class present (N >= C)
    return y


# ---------------------------------------------------------------------------------------------
# Elementwise definitions (numpy, explicit loops)

def loop_transform(x, beta, eps):
    x = np.asarray(x, dtype=np.float64)
    N, D = x.shape
    t = np.empty((N, D))
    for i in range(N):
        for d in range(D):
            t[i, d] = (x[i, d] + eps) ** beta
    mean = np.array([sum(t[i, d] for i in range(N)) / N for d in range(D)])
    out = np.empty((N, D))
    for i in range(N):
        norm = math.sqrt(sum(t[i, d] ** 2 for d in range(D)))
        for d in range(D):
            out[i, d] = (t[i, d] - mean[d]) / norm
    return out


def loop_prototypes(x, labels, C):
    x = np.asarray(x, dtype=np.float64)
    N, D = x.shape
    protos = np.zeros((C, D))
    for c in range(C):
        members = [i for i in range(N) if int(labels[i]) == c]
        for d in range(D):
            protos[c, d] = sum(x[i, d] for i in members) / len(members) if members else 0.0
    return protos


def loop_cost(x, protos):
    x, protos = np.asarray(x, dtype=np.float64), np.asarray(protos, dtype=np.float64)
    N, C = x.shape[0], protos.shape[0]
    M = np.empty((N, C))
    for i in range(N):
        for c in range(C):
            M[i, c] = sum((x[i, d] - protos[c, d]) ** 2 for d in range(x.shape[1]))
    return M


def loop_scores(plan, M):
    N, C = M.shape
    return np.array([sum((plan[i, c] * M[i, c]) ** 2 for c in range(C)) for i in range(N)])


# ---------------------------------------------------------------------------------------------
# Transform

@pytest.mark.parametrize("beta, eps", [(0.5, 1e-6), (1.0, 1e-6), (0.3, 1e-3), (2.0, 0.0)])
@given(N=st.integers(1, 9), D=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_fdmat_transform(beta, eps, N, D, seed):
    x = features(N, D, seed)
    if eps == 0.0:
        x = x + 0.01  # x^beta at 0 with eps = 0 would give a zero-norm row for beta > 0
    got = fdmat_transform(x, beta=beta, eps=eps)
    assert got.shape == (N, D) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), loop_transform(x.numpy(), beta, eps), rtol=1e-12,
                               atol=1e-14)


def test_fdmat_transform_defaults_dead_units_float32_non_contiguous():
    x = features(11, 5, seed=1, dead_units=(2,))
    expected = loop_transform(x.numpy(), 0.5, 1e-6)
    np.testing.assert_allclose(fdmat_transform(x).numpy(), expected, rtol=1e-12, atol=1e-14)
    x32 = x.float().T.contiguous().T
    assert not x32.is_contiguous()
    got = fdmat_transform(x32)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Prototypes and cost

@given(N=st.integers(0, 12), C=st.integers(1, 5), D=st.integers(1, 4),
       seed=st.integers(0, 2**31 - 1))
def test_class_prototypes(N, C, D, seed):
    gen = brute.generator(seed)
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=gen)  # empty and one-sample classes happen
    got = class_prototypes(x, y, C)
    assert got.shape == (C, D)
    np.testing.assert_allclose(got.numpy(), loop_prototypes(x.numpy(), y.numpy(), C),
                               rtol=1e-12, atol=1e-15)


def test_class_prototypes_empty_and_singleton_classes():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 7.0]], dtype=torch.float64)
    y = torch.tensor([2, 0, 2])
    got = class_prototypes(x, y, 4)
    expected = torch.tensor([[3.0, 4.0], [0.0, 0.0], [3.0, 4.5], [0.0, 0.0]],
                            dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@given(N=st.integers(0, 9), C=st.integers(1, 5), D=st.integers(1, 5),
       seed=st.integers(0, 2**31 - 1))
def test_prototype_cost(N, C, D, seed):
    gen = brute.generator(seed)
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    protos = torch.randn(C, D, generator=gen, dtype=torch.float64)
    if N:
        protos[0] = x[0]  # an exact zero cost must come out >= 0 and tiny
    got = prototype_cost(x, protos)
    assert got.shape == (N, C) and bool((got >= 0).all())
    expected = loop_cost(x.numpy(), protos.numpy())
    # GEMM form: the error is relative to ||x_i||^2 + ||mu_c||^2, not to M_ic itself.
    bound = 1e-13 * ((x * x).sum(1)[:, None] + (protos * protos).sum(1)[None, :]).numpy()
    assert np.all(np.abs(got.numpy() - expected) <= bound + 1e-300)


def test_prototype_cost_float32_non_contiguous():
    gen = brute.generator(3)
    x = torch.randn(4, 7, generator=gen).T  # [7, 4]
    protos = torch.randn(3, 4, generator=gen)
    got = prototype_cost(x, protos)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(),
                               loop_cost(x.double().numpy(), protos.double().numpy()),
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Scores

def test_fdmat_scores_formula_for_any_potentials():
    gen = brute.generator(4)
    M = torch.rand(6, 3, generator=gen, dtype=torch.float64)
    f = torch.randn(6, generator=gen, dtype=torch.float64)
    g = torch.randn(3, generator=gen, dtype=torch.float64)
    plan = np.array([[math.exp((float(f[i]) + float(g[c]) - float(M[i, c])) / 0.2)
                      for c in range(3)] for i in range(6)])
    np.testing.assert_allclose(fdmat_scores(M, f, g, 0.2).numpy(), loop_scores(plan, M.numpy()),
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("reg_factor", [0.5, 0.2])
@given(N=st.integers(4, 24), C=st.integers(1, 4), D=st.integers(1, 5),
       seed=st.integers(0, 2**31 - 1))
def test_fdmat_pipeline_against_loops_and_pot(reg_factor, N, C, D, seed):
    x = features(N, D, seed)
    y = labels_with_all_classes(N, C, seed)
    xt = fdmat_transform(x)
    M = prototype_cost(xt, class_prototypes(xt, y, C))
    # reg relative to the cost scale: the transform's costs range from ~1 to ~100 (small D,
    # small features), and Sinkhorn's rate degrades like exp(-range / reg): at reg = 0.1 x range
    # nearly decoupled blocks already take > 20000 iterations (a property of Sinkhorn, not of
    # the code under test). Smaller reg is covered by test_fdmat_scores_small_reg.
    reg = reg_factor * max(float(M.max()), 1.0)
    # Masses a_i = 1, b_c = n_c (equal totals N).
    a = torch.ones(N, dtype=torch.float64)
    b = torch.bincount(y, minlength=C).to(torch.float64)
    f, g, _, err = sinkhorn_log(a, b, M, reg, max_iter=5000, tol=1e-12)
    assert float(err) <= 1e-12
    got = fdmat_scores(M, f, g, reg)

    M_loop = loop_cost(loop_transform(x.numpy(), 0.5, 1e-6),
                       loop_prototypes(loop_transform(x.numpy(), 0.5, 1e-6), y.numpy(), C))
    plan_pot, _, _ = brute.pot_plan(a, b, M_loop, reg)
    expected = loop_scores(plan_pot, M_loop)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-8, atol=1e-12 * expected.max())


def test_fdmat_scores_float32():
    x = features(20, 4, seed=5)
    y = labels_with_all_classes(20, 3, seed=5)
    xt = fdmat_transform(x)
    M = prototype_cost(xt, class_prototypes(xt, y, 3))
    a = torch.ones(20, dtype=torch.float64)
    b = torch.bincount(y, minlength=3).to(torch.float64)
    f, g, _, _ = sinkhorn_log(a.float(), b.float(), M.float(), 0.1, tol=1e-6)
    got = fdmat_scores(M.float(), f, g, 0.1)
    assert got.dtype == torch.float32
    plan_pot, _, _ = brute.pot_plan(a, b, M, 0.1)
    expected = loop_scores(plan_pot, M.numpy())
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-3,
                               atol=1e-4 * expected.max())


def test_fdmat_scores_small_reg():
    """A seeded problem that converges at reg = 0.02 (cost range about 2)."""
    x = features(40, 6, seed=7)
    y = labels_with_all_classes(40, 4, seed=7)
    xt = fdmat_transform(x)
    M = prototype_cost(xt, class_prototypes(xt, y, 4))
    a = torch.ones(40, dtype=torch.float64)
    b = torch.bincount(y, minlength=4).to(torch.float64)
    f, g, _, err = sinkhorn_log(a, b, M, 0.02, max_iter=5000, tol=1e-12)
    assert float(err) <= 1e-12
    plan_pot, _, _ = brute.pot_plan(a, b, M, 0.02)
    expected = loop_scores(plan_pot, M.numpy())
    np.testing.assert_allclose(fdmat_scores(M, f, g, 0.02).numpy(), expected, rtol=1e-8,
                               atol=1e-12 * expected.max())
