"""FDMat's kernels (fdmat_transform, prototype_cost, fdmat_scores).

First the reference (lcmat.reference.fdmat) against the formulas written out elementwise (numpy
loops) and POT:

    x <- (x + eps)^beta;  x~_i = (x_i - m) / ||x_i||  (m the mean of the transformed x)
    mu_c = mean of x~ over class c;  M_ic = ||x~_i - mu_c||^2
    s_i = sum_c (P_ic M_ic)^2,  P the entropic plan between masses a_i = 1 and b_c = n_c

Then every backend (the `backend` fixture: cpu, triton, cuda) against the reference.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import brute
import lcmat.reference as R
from backends import kernels, maybe, only, tol
from lcmat.reference import (class_prototypes, fdmat_scores, fdmat_transform, prototype_cost,
                             sinkhorn_log)

DTYPES = st.sampled_from([torch.float32, torch.float64])

# ---- the reference against the formulas and POT ----------------------------------------------

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


# ---- every backend against the reference -----------------------------------------------------

# The compiled backend on CPU tensors: hypothesis at the profile's example count, non-contiguous
# inputs, tol(dtype); the float32 kernels exact on integer inputs; row chunking of the scores.

@only("cpu")
@given(N=st.integers(1, 3000), D=st.integers(1, 40), beta=st.sampled_from([0.5, 1.0, 0.25, 2.0]),
       dtype=DTYPES, nc=st.booleans(), seed=st.integers(0, 99))
def test_fdmat_transform_matches_reference(backend, N, D, beta, dtype, nc, seed):
    """The same ATen steps as the reference with the mean's float64 sums done by cpu::column_sums
    (fixed blocks of 1,024 rows): equal to the reference up to the sums' rounding."""
    kern = kernels(backend)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, D, generator=g, dtype=torch.float64).to(dtype)
    x[:, 0] = 0.0  # a dead unit: (0 + eps)^beta
    out = kern.fdmat_transform(maybe(x, nc), beta)
    assert out.dtype == dtype and out.shape == (N, D)
    torch.testing.assert_close(out, R.fdmat_transform(x, beta), rtol=1e-6 if dtype == torch.float32 else 1e-13,
                               atol=1e-6 if dtype == torch.float32 else 1e-13)


@only("cpu")
@pytest.mark.parametrize("N", [1, 7, 8, 9, 100])
@pytest.mark.parametrize("C,D", [(1, 32), (31, 40), (32, 32), (33, 64), (70, 33)])
def test_prototype_cost_float32_exact_on_integer_inputs(backend, N, C, D):
    """Small integers make x mu^T exact in float32 in ATen's GEMM and in the AVX-512 kernel
    (used for float32 with at least 32 columns) alike: the costs must equal the float64
    reference bit for bit, whatever the row block, panel or ragged edge."""
    kern = kernels(backend)
    g = torch.Generator().manual_seed(N * 100 + C + D)
    x = torch.randint(-3, 4, (N, D), generator=g).float()
    mu = torch.randint(-3, 4, (C, D), generator=g).float()
    assert torch.equal(kern.prototype_cost(x, mu), R.prototype_cost(x.double(), mu.double()).float())


@only("cpu")
def test_fdmat_transform_thread_count_independent_and_ops_dispatch(backend):
    kern = kernels(backend)
    from lcmat import ops
    x = torch.rand(5000, 16, generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kern.fdmat_transform(x, 0.5)
        torch.set_num_threads(2)
        two = kern.fdmat_transform(x, 0.5)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert ops.resolve("fdmat_transform", None, x)[0] == "cpu"
    assert torch.equal(ops.fdmat_transform(x, 0.5), one)
    with pytest.raises(RuntimeError, match="features"):
        kern.fdmat_transform(x[0], 0.5)


@only("cpu")
@given(N=st.integers(0, 50), C=st.integers(1, 9), D=st.integers(1, 8), dtype=DTYPES,
       nc=st.booleans(), seed=st.integers(0, 99))
def test_prototype_cost_and_scores(backend, N, C, D, dtype, nc, seed):
    kern = kernels(backend)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    mu = torch.randn(C, D, generator=g, dtype=torch.float64)
    M = kern.prototype_cost(maybe(x.to(dtype), nc), maybe(mu.to(dtype), nc))
    M_ref = R.prototype_cost(x, mu)
    torch.testing.assert_close(M.double(), M_ref, rtol=1e-4 if dtype == torch.float32 else 1e-10,
                               atol=1e-4 if dtype == torch.float32 else 1e-10)
    f = torch.randn(N, generator=g, dtype=torch.float64)
    gg = torch.randn(C, generator=g, dtype=torch.float64)
    s = kern.fdmat_scores(maybe(M_ref.to(dtype), nc), f.to(dtype), gg.to(dtype), 0.7)
    torch.testing.assert_close(s.double(), R.fdmat_scores(M_ref, f, gg, 0.7), **tol(dtype))


@only("cpu")
@pytest.mark.parametrize("N,C", [(5000, 3), (1400, 10), (300, 63), (300, 64), (70, 200), (1, 1), (0, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fdmat_scores_short_and_long_rows(backend, N, C, dtype):
    """Rows under 64 entries go in chunks of about 4,096 entries (several chunks and a ragged
    last one here), longer rows one by one."""
    kern = kernels(backend)
    g = torch.Generator().manual_seed(N + C)
    M = 4 * torch.rand(N, C, generator=g, dtype=torch.float64)
    f, gg = torch.randn(N, generator=g, dtype=torch.float64), torch.randn(C, generator=g, dtype=torch.float64)
    s = kern.fdmat_scores(M.to(dtype), f.to(dtype), gg.to(dtype), 0.5)
    assert s.shape == (N,) and s.dtype == dtype
    torch.testing.assert_close(s.double(), R.fdmat_scores(M, f, gg, 0.5), **tol(dtype))


# Triton (interpreted on the CPU, compiled on a GPU): 8 examples, its own tolerances.
def _features(n, c, d, dtype, seed, device):
    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(n, d, generator=g, dtype=torch.float64)  # non-negative, post-ReLU like
    labels = torch.arange(n) % c
    x = R.fdmat_transform(feats)
    mu = R.class_prototypes(x, labels, c)
    return x.to(dtype).to(device), mu.to(dtype).to(device)


@only("triton")
@settings(max_examples=8)
@given(n=st.integers(1, 40), c=st.integers(1, 20), d=st.integers(1, 37),
       dtype=DTYPES, seed=st.integers(0, 99))
def test_prototype_cost_matches_reference(backend, device, n, c, d, dtype, seed):
    kern = kernels(backend)
    x, mu = _features(n, c, d, dtype, seed, device)
    out = kern.prototype_cost(x, mu)
    ref = R.prototype_cost(x.double(), mu.double())
    assert out.shape == (n, c) and out.dtype == dtype and bool((out >= 0).all())
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out.double(), ref, rtol=0.0, atol=20 * eps * (1 + float(ref.max())))


@only("cpu", "triton")
def test_prototype_cost_noncontiguous(backend, device):
    kern = kernels(backend)
    x, mu = _features(30, 6, 17, torch.float64, 1, device)
    xt = x.t().contiguous().t()
    torch.testing.assert_close(kern.prototype_cost(xt, mu[::1]), R.prototype_cost(x, mu), rtol=1e-12, atol=1e-12)


@only("triton")
@settings(max_examples=8)
@given(n=st.integers(1, 40), c=st.integers(1, 20), reg=st.sampled_from([0.05, 1.0, 10.0]),
       dtype=DTYPES, seed=st.integers(0, 99))
def test_scores_match_reference(backend, device, n, c, reg, dtype, seed):
    kern = kernels(backend)
    x, mu = _features(n, c, 9, torch.float64, seed, device)
    M = R.prototype_cost(x, mu)
    labels_mass = torch.bincount(torch.arange(n) % c, minlength=c).double().to(device)
    f, g, _, _ = R.sinkhorn_log(torch.ones(n, dtype=torch.float64, device=device), labels_mass, M, reg,
                                max_iter=30)
    M, f, g = M.to(dtype), f.to(dtype), g.to(dtype)
    out = kern.fdmat_scores(M, f, g, reg)
    ref = R.fdmat_scores(M.double(), f.double(), g.double(), reg)
    rtol = 1e-4 if dtype == torch.float32 else 1e-11
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=rtol * float(ref.max()))


# Bad arguments: the compiled ops raise from their argument checks (RuntimeError), the Triton
# wrappers a ValueError; each names the argument.
BAD_ARGUMENT_ERROR = {"cpu": RuntimeError, "triton": ValueError}


@only("cpu", "triton")
def test_bad_arguments_raise(backend, device):
    kern, error = kernels(backend), BAD_ARGUMENT_ERROR[backend]
    x, mu = _features(5, 2, 3, torch.float32, 0, device)
    with pytest.raises(error, match="prototypes"):
        kern.prototype_cost(x, mu[:, :2])
    M = R.prototype_cost(x, mu)
    with pytest.raises(error, match="g"):
        kern.fdmat_scores(M, torch.zeros(5, device=device), torch.zeros(3, device=device), 1.0)
    with pytest.raises(error, match="reg"):
        kern.fdmat_scores(M, torch.zeros(5, device=device), torch.zeros(2, device=device), -1.0)


@only("triton")
@pytest.mark.gpu
def test_gpu_large_shapes(backend, device):
    kern = kernels(backend)
    x, mu = _features(100_000, 1000, 512, torch.float32, 0, device)
    ref = R.prototype_cost(x.double(), mu.double())
    out = kern.prototype_cost(x, mu)
    torch.testing.assert_close(out.double(), ref, rtol=0.0, atol=1e-5 * (1 + float(ref.max())))
    f = torch.randn(100_000, device=device) * 0.01
    g = torch.randn(1000, device=device) * 0.01
    torch.testing.assert_close(kern.fdmat_scores(out, f, g, 0.5).double(),
                               R.fdmat_scores(out.double(), f.double(), g.double(), 0.5), rtol=1e-4, atol=1e-6)


@only("cuda")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cost_and_scores_match_reference(backend, device, dtype):
    kern = kernels(backend)
    x = torch.randn(400, 16, dtype=dtype)
    mu = torch.randn(10, 16, dtype=dtype)
    M = kern.prototype_cost(x.to(device), mu.to(device))
    torch.testing.assert_close(M.cpu(), R.prototype_cost(x, mu), rtol=1e-4, atol=1e-4)
    f, g = torch.randn(400, dtype=dtype), torch.randn(10, dtype=dtype)
    torch.testing.assert_close(kern.fdmat_scores(M, f.to(device), g.to(device), 0.7).cpu(),
                               R.fdmat_scores(M.cpu(), f, g, 0.7), **tol(dtype))
