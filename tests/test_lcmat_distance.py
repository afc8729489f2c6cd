"""The LCMat-S distance kernels (curvature_moments and the top-variance coordinates,
gradient_distance, hessian_diag_coords, pairwise_l1, lcmat_distance).

First the reference (lcmat.reference.lcmat_distance) against the materialised per-sample g and d
(autograd),

    D_ij = || g_i - g_j ||_2 + rho * || d_i[K] - d_j[K] ||_1 ;

gradients come from Gram identities in the reference, so distances are compared on their squares
with the cancellation error bound of a Gram matrix (brute.gram_distance_tolerance); everything
else is compared at 1e-10 relative in float64. Then every backend (the `backend` fixture: cpu,
triton, cuda) against the reference.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import brute
import lcmat.algorithms as algorithms
import lcmat.reference as R
from backends import kernels, last_layer_inputs, maybe, num_threads, only, tol, triton_problem
from lcmat.algorithms import top_variance_coords_pruned, weight_row_bounds
from lcmat.reference import (coords_by_variance, curvature_moments, gradient_distance, gradient_gram,
                             hessian_diag_coords, last_layer_factors, lcmat_distance,
                             pairwise_l1, top_variance_coords)

FLOATS = [torch.float32, torch.float64]
DTYPES = st.sampled_from(FLOATS)
F64 = dict(rtol=1e-10, atol=1e-13)
F32 = dict(rtol=1e-4, atol=1e-5)

# ---- the reference against autograd ----------------------------------------------------------

shapes = dict(n=st.integers(1, 8), C=st.integers(1, 4), D=st.integers(1, 4),
              seed=st.integers(0, 2**31 - 1), use_scale=st.booleans())


def materialise(n, C, D, seed, use_scale, dtype=torch.float64):
    """One class: inputs for the reference (in `dtype`) and float64 g, d from autograd."""
    h, z, y, s = brute.random_class(n, C, D, seed, dtype=dtype)
    scale = s if use_scale else None
    e, q = last_layer_factors(z, y)
    g = brute.per_sample_gradients(h, z, y, scale)
    d = brute.per_sample_hessian_diagonals(h, z, y, scale)
    return h, e, q, scale, g, d


def assert_gram_distance(dist, g, rel):
    expected = brute.pairwise_euclidean(g)
    tol = brute.gram_distance_tolerance(expected, (g * g).sum(1), rel)
    err = (dist.double() - expected).abs()
    assert bool((err <= tol + 1e-300).all()), f"max excess {(err - tol).max().item()}"
    assert bool((dist.diagonal() == 0).all())


# ---------------------------------------------------------------------------------------------
# Gradient Gram matrix and distance

@given(**shapes)
def test_gradient_gram(n, C, D, seed, use_scale):
    h, e, _, scale, g, _ = materialise(n, C, D, seed, use_scale)
    torch.testing.assert_close(gradient_gram(h, e, scale), g @ g.T, **F64)


@given(**shapes)
def test_gradient_distance(n, C, D, seed, use_scale):
    h, e, _, scale, g, _ = materialise(n, C, D, seed, use_scale)
    assert_gram_distance(gradient_distance(h, e, scale), g, rel=1e-12)


def test_gradient_distance_duplicated_samples_are_near_zero():
    h, z, y, s = brute.random_class(4, 3, 5, seed=2)
    idx = torch.tensor([0, 1, 2, 3, 1, 0, 1])
    h, z, y, s = h[idx], z[idx], y[idx], s[idx]
    e, _ = last_layer_factors(z, y)
    g = brute.per_sample_gradients(h, z, y, s)
    dist = gradient_distance(h, e, s)
    assert_gram_distance(dist, g, rel=1e-12)
    assert dist.shape == (7, 7)


def test_gradient_gram_and_distance_float32():
    h, e, _, scale, g, _ = materialise(9, 4, 6, seed=4, use_scale=True, dtype=torch.float32)
    gram = gradient_gram(h, e, scale)
    assert gram.dtype == torch.float32
    torch.testing.assert_close(gram.double(), g @ g.T, **F32)
    assert_gram_distance(gradient_distance(h, e, scale), g, rel=1e-5)


def test_gradient_distance_non_contiguous():
    h, e, _, scale, g, _ = materialise(6, 3, 4, seed=8, use_scale=True)
    h_nc, e_nc = h.T.contiguous().T, e.T.contiguous().T
    assert not h_nc.is_contiguous() and not e_nc.is_contiguous()
    assert_gram_distance(gradient_distance(h_nc, e_nc, scale), g, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Curvature moments and the top-variance coordinates

@given(**shapes)
def test_curvature_moments(n, C, D, seed, use_scale):
    h, _, q, scale, _, d = materialise(n, C, D, seed, use_scale)
    mean, second = curvature_moments(h, q, scale)
    torch.testing.assert_close(mean, d.mean(0), **F64)
    torch.testing.assert_close(second, (d * d).mean(0), **F64)


def test_curvature_moments_float32_inputs_accumulate_in_float64():
    """The moments are computed in float64 from the float32 inputs: compare against the
    definition evaluated on the same float32 values upcast, at float64 tolerance."""
    h32, z32, y, s32 = brute.random_class(13, 3, 5, seed=6, dtype=torch.float32)
    _, q32 = last_layer_factors(z32, y)
    mean, second = curvature_moments(h32, q32, s32)
    assert mean.dtype == second.dtype == torch.float64
    h, q, s = h32.double(), q32.double(), s32.double()
    d = torch.cat([s[:, None] * q, (s[:, None, None] * q[:, :, None] * (h * h)[:, None, :])
                   .flatten(1)], dim=1)
    torch.testing.assert_close(mean, d.mean(0), **F64)
    torch.testing.assert_close(second, (d * d).mean(0), **F64)


@given(num_coords=st.integers(0, 30), **shapes)
def test_top_variance_coords(num_coords, n, C, D, seed, use_scale):
    h, _, q, scale, _, d = materialise(n, C, D, seed, use_scale)
    if n == 1 or C == 1:
        return  # every variance is exactly zero: covered by the tie tests below
    var = brute.population_variance(d)
    coords = top_variance_coords(h, q, num_coords, scale)
    assert coords.dtype == torch.long
    if C == 2:
        # q_0 = q_1 in exact arithmetic (p_1 = 1 - p_0): coordinates (0, d) and (1, d) tie
        # mathematically but not in floating point, so only the top-K property is checked.
        assert_top_variance(var, coords.tolist(), num_coords)
    else:
        assert coords.tolist() == brute.descending_order(var)[:num_coords]


def assert_top_variance(var, coords, num_coords, rtol=1e-9):
    """coords are min(K, P) distinct coordinates in non-increasing variance (up to rtol), and
    no coordinate left out has a larger variance (up to rtol)."""
    tol = rtol * float(var.max())
    assert len(coords) == min(num_coords, var.numel()) == len(set(coords))
    chosen = var[coords].tolist()
    assert all(x >= y - tol for x, y in zip(chosen, chosen[1:]))
    rest = [float(var[j]) for j in range(var.numel()) if j not in coords]
    if chosen and rest:
        assert max(rest) <= min(chosen) + tol


@given(P=st.integers(1, 60), num_coords=st.integers(0, 70), levels=st.integers(1, 5),
       seed=st.integers(0, 2**31 - 1))
def test_coords_by_variance_equals_the_full_stable_sort(P, num_coords, levels, seed):
    """Few distinct variances (many ties, zeros among them): the first K of all P coordinates
    sorted by decreasing variance, lowest index first among equals."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randint(0, 4, (P,), generator=g).double()
    var = torch.randint(0, levels, (P,), generator=g).double()  # small integers: exact arithmetic
    second = mean.square() + var
    expected = sorted(range(P), key=lambda j: (-float(var[j]), j))[:num_coords]
    assert coords_by_variance(mean, second, num_coords).tolist() == expected


@pytest.mark.parametrize("use_scale", [False, True])
def test_top_variance_coords_ties_among_zero_columns(use_scale):
    """Dead embedding units (all-zero columns) give exactly zero variance on every weight
    coordinate of that unit: they come after all others, lowest index first."""
    h, z, y, s = brute.random_class(10, 3, 5, seed=9)
    h[:, [1, 3]] = 0.0
    scale = s if use_scale else None
    _, q = last_layer_factors(z, y)
    var = brute.population_variance(brute.per_sample_hessian_diagonals(h, z, y, scale))
    assert int((var == 0).sum()) == 6
    expected = brute.descending_order(var)
    assert expected[-6:] == [3 + 1, 3 + 3, 3 + 5 + 1, 3 + 5 + 3, 3 + 10 + 1, 3 + 10 + 3]
    assert top_variance_coords(h, q, 18, scale).tolist() == expected
    assert top_variance_coords(h, q, 100, scale).tolist() == expected  # K > P: all of them


def test_top_variance_coords_single_class_model_all_zero():
    """C = 1: p = 1, q = 0, every coordinate has zero variance: indices in order."""
    h, z, y, _ = brute.random_class(6, 1, 4, seed=10)
    _, q = last_layer_factors(z, y)
    assert top_variance_coords(h, q, 3).tolist() == [0, 1, 2]
    assert top_variance_coords(h, q, 5).tolist() == [0, 1, 2, 3, 4]


def test_top_variance_coords_one_sample_class():
    h, z, y, s = brute.random_class(1, 3, 2, seed=0)
    _, q = last_layer_factors(z, y)
    assert top_variance_coords(h, q, 9).tolist() == list(range(9))


def test_top_variance_coords_identical_samples():
    h, z, y, s = brute.random_class(1, 3, 4, seed=1)
    h, z, y = h.repeat(5, 1), z.repeat(5, 1), y.repeat(5)
    _, q = last_layer_factors(z, y)
    var = brute.population_variance(brute.per_sample_hessian_diagonals(h, z, y))
    assert bool((var == 0).all())
    assert top_variance_coords(h, q, 15).tolist() == list(range(15))


def test_top_variance_coords_duplicate_columns():
    failures = []
    for seed in range(40):
        h, z, y, _ = brute.random_class(3 + seed % 23, 3 + seed % 3, 4 + seed % 5, seed)
        h[:, -1] = h[:, 0]  # weight coords (c, 0) and (c, D-1) tie for every class c
        _, q = last_layer_factors(z, y)
        var = brute.population_variance(brute.per_sample_hessian_diagonals(h, z, y))
        expected = brute.descending_order(var)
        got = top_variance_coords(h, q, var.numel()).tolist()
        if got != expected:
            failures.append((seed, expected, got))
    assert not failures, failures[0]


# ---------------------------------------------------------------------------------------------
# Gathered Hessian-diagonal coordinates

# ---- the pruned search: same coordinates, fewer moment GEMMs -------------------------------------

def confident_class(n, C, D, seed, margin=16.0, use_scale=False):
    """One class (label 0) of a confident model: the label's logit `margin` above the rest, a few
    confusable classes in between, so most classes' weight rows have tiny variances."""
    h, z, _, s = brute.random_class(n, C, D, seed)
    z[:, 0] += margin
    z[:, 1:4] += margin / 2
    _, q = last_layer_factors(z, torch.zeros(n, dtype=torch.long))
    return h.abs(), q, (s if use_scale else None)


def counting(moments):
    """moments, recording how many classes each call was given."""
    calls = []

    def wrapped(h, q, scale):
        calls.append(q.shape[1])
        return moments(h, q, scale)
    return wrapped, calls


@given(n=st.integers(1, 12), C=st.integers(1, 8), D=st.integers(1, 5), seed=st.integers(0, 2**31 - 1),
       use_scale=st.booleans())
def test_weight_row_bounds_bound_every_weight_variance(n, C, D, seed, use_scale):
    h, _, q, scale, _, d = materialise(n, C, D, seed, use_scale)
    var = brute.population_variance(d)[C:].view(C, D)
    m2 = (d * d).mean(0)[C:].view(C, D)
    bound = weight_row_bounds(h, q, scale)
    assert bound.shape == (C,) and bound.dtype == torch.float64
    assert bool((bound >= m2.amax(1) * (1 - 1e-12)).all())
    assert bool((bound >= var.amax(1) * (1 - 1e-12)).all())


@pytest.mark.parametrize("use_scale", [False, True])
@pytest.mark.parametrize("num_coords", [1, 7, 40])
def test_pruned_coords_equal_the_full_search_and_skip_rows(num_coords, use_scale):
    h, q, scale = confident_class(50, 60, 9, seed=num_coords, use_scale=use_scale)
    moments, calls = counting(curvature_moments)
    got = top_variance_coords_pruned(h, q, num_coords, scale, moments, first_rows=2)
    assert got.tolist() == top_variance_coords(h, q, num_coords, scale).tolist()
    assert sum(calls) < 60  # rows were skipped: the test exercises the pruning
    assert calls == [2 * 2 ** i for i in range(len(calls))]  # chunks double


@pytest.mark.parametrize("logit_scale", [0.0, 0.3, 3.0])
def test_pruned_coords_flat_softmax_compute_every_row(logit_scale):
    """A flat softmax (every class alike, or exactly uniform: all rows tie) leaves nothing to
    skip; the coordinates, tie order included, are those of the full search."""
    h, z, _, _ = brute.random_class(30, 40, 6, seed=5, logit_scale=logit_scale)
    _, q = last_layer_factors(z, torch.zeros(30, dtype=torch.long))
    moments, calls = counting(curvature_moments)
    for num_coords in (1, 50, 300):
        assert (top_variance_coords_pruned(h, q, num_coords, None, moments, first_rows=3).tolist()
                == top_variance_coords(h, q, num_coords).tolist())


@given(num_coords=st.integers(0, 40), n=st.integers(1, 10), C=st.integers(1, 9), D=st.integers(1, 4),
       first_rows=st.integers(1, 4), seed=st.integers(0, 2**31 - 1), use_scale=st.booleans(),
       confident=st.booleans())
def test_pruned_coords_fuzz(num_coords, n, C, D, first_rows, seed, use_scale, confident):
    if confident and C >= 4:
        h, q, scale = confident_class(n, C, D, seed, use_scale=use_scale)
    else:
        h, _, q, scale, _, _ = materialise(n, C, D, seed, use_scale)
    assert (top_variance_coords_pruned(h, q, num_coords, scale, first_rows=first_rows).tolist()
            == top_variance_coords(h, q, num_coords, scale).tolist())


def test_pruned_coords_ties_across_skipped_rows():
    """Duplicated classes (identical q columns) and a dead unit: ties inside and across rows are
    broken by the lowest index, exactly as in the full search; K > P returns all of them."""
    h, q, _ = confident_class(20, 12, 5, seed=3)
    q = torch.cat([q, q[:, :4]], dim=1)  # classes 12..15 repeat 0..3
    h[:, 2] = 0.0
    for num_coords in (1, 5, 6, 11, 30, 97, 1000):
        assert (top_variance_coords_pruned(h, q, num_coords, first_rows=1).tolist()
                == top_variance_coords(h, q, num_coords).tolist())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_coords_nan_or_inf_raise_in_both_searches(bad):
    h, q, _ = confident_class(20, 30, 4, seed=4)
    q[3, 17] = bad
    moments, calls = counting(curvature_moments)
    with pytest.raises(ValueError, match="embeddings, q: .*NaN"):
        top_variance_coords(h, q, 5)
    with pytest.raises(ValueError, match="embeddings, q: .*NaN"):
        top_variance_coords_pruned(h, q, 5, None, moments, first_rows=2)
    assert sum(calls) == 30  # a NaN bound never lets a row be skipped


@given(data=st.data(), **shapes)
def test_hessian_diag_coords(data, n, C, D, seed, use_scale):
    h, _, q, scale, _, d = materialise(n, C, D, seed, use_scale)
    P = C * (D + 1)
    coords = data.draw(st.lists(st.integers(0, P - 1), max_size=12))  # repeats allowed
    coords = torch.tensor(coords, dtype=torch.long)
    got = hessian_diag_coords(h, q, coords, scale)
    assert got.shape == (n, len(coords))
    torch.testing.assert_close(got, d[:, coords], **F64)


def test_hessian_diag_coords_all_and_float32():
    h, _, q, scale, _, d = materialise(7, 3, 4, seed=12, use_scale=True, dtype=torch.float32)
    coords = torch.arange(15).flip(0)
    got = hessian_diag_coords(h, q, coords, scale)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), d[:, coords], **F32)


# ---------------------------------------------------------------------------------------------
# Tiled pairwise L1

@given(n=st.integers(0, 13), m=st.integers(0, 9), K=st.integers(0, 6), tile=st.integers(1, 5),
       self_distance=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_pairwise_l1(n, m, K, tile, self_distance, seed):
    gen = brute.generator(seed)
    a = torch.randn(n, K, generator=gen, dtype=torch.float64)
    b = None if self_distance else torch.randn(m, K, generator=gen, dtype=torch.float64)
    got = pairwise_l1(a, b, tile=tile)
    expected = brute.pairwise_l1(a, b)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_pairwise_l1_default_tile_and_ragged_last_tile():
    gen = brute.generator(3)
    a = torch.randn(300, 5, generator=gen, dtype=torch.float64)  # 256 + 44
    b = torch.randn(17, 5, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(pairwise_l1(a, b), brute.pairwise_l1(a, b), rtol=1e-12,
                               atol=1e-14)
    torch.testing.assert_close(pairwise_l1(a), brute.pairwise_l1(a), rtol=1e-12, atol=1e-14)


def test_pairwise_l1_float32_non_contiguous():
    gen = brute.generator(4)
    a = torch.randn(6, 11, generator=gen).T  # [11, 6], non-contiguous
    b = torch.randn(6, 4, generator=gen).T
    got = pairwise_l1(a, b, tile=3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), brute.pairwise_l1(a.double(), b.double()), **F32)
    self_dist = pairwise_l1(a, tile=4)
    assert bool((self_dist.diagonal() == 0).all())


# ---------------------------------------------------------------------------------------------
# The full LCMat-S block

@pytest.mark.parametrize("rho", [0.0, 0.01, 1.0])
@given(num_coords=st.integers(0, 12), **shapes)
def test_lcmat_distance(rho, num_coords, n, C, D, seed, use_scale):
    h, e, q, scale, g, d = materialise(n, C, D, seed, use_scale)
    coords = top_variance_coords(h, q, num_coords, scale)
    got = lcmat_distance(h, e, q, coords, rho, scale)
    grad_part = brute.pairwise_euclidean(g)
    curv_part = brute.pairwise_l1(d[:, coords])
    tol = brute.gram_distance_tolerance(grad_part, (g * g).sum(1), 1e-12)
    tol = tol + 1e-12 * rho * curv_part + 1e-300
    err = (got - (grad_part + rho * curv_part)).abs()
    assert bool((err <= tol).all()), f"max excess {(err - tol).max().item()}"


def test_lcmat_distance_rho_term_is_visible():
    """rho = 1 adds exactly the L1 block; a wrong coefficient or missing term would show."""
    h, e, q, scale, g, d = materialise(8, 3, 4, seed=13, use_scale=True)
    coords = torch.tensor([0, 5, 14, 3])
    base = lcmat_distance(h, e, q, coords, 0.0, scale)
    full = lcmat_distance(h, e, q, coords, 1.0, scale)
    curv = brute.pairwise_l1(d[:, coords])
    assert curv.max() > 1e-3
    torch.testing.assert_close(full - base, curv, **F64)
    empty = lcmat_distance(h, e, q, torch.zeros(0, dtype=torch.long), 1.0, scale)
    torch.testing.assert_close(empty, base, rtol=0, atol=0)


def test_lcmat_distance_float32():
    h, e, q, scale, g, d = materialise(10, 4, 5, seed=14, use_scale=True, dtype=torch.float32)
    coords = torch.tensor([1, 7, 22, 9, 0])
    got = lcmat_distance(h, e, q, coords, 0.5, scale)
    assert got.dtype == torch.float32
    grad_part = brute.pairwise_euclidean(g)
    expected = grad_part + 0.5 * brute.pairwise_l1(d[:, coords])
    tol = brute.gram_distance_tolerance(grad_part, (g * g).sum(1), 1e-5) + 1e-5 * expected
    assert bool(((got.double() - expected).abs() <= tol + 1e-7).all())


# ---- every backend against the reference -----------------------------------------------------

# The compiled backend on CPU tensors: hypothesis at the profile's example count, non-contiguous
# inputs, the float64 reference's values at tol(dtype) or distance_tol; its row blocks, tiles,
# class chunks and thread counts.

@only("cpu")
@given(n=st.integers(1, 30), C=st.integers(1, 6), D=st.integers(1, 8), K=st.integers(0, 12),
       dtype=DTYPES, nc=st.booleans(), scaled=st.booleans(), seed=st.integers(0, 99))
def test_curvature_and_top_coords(backend, n, C, D, K, dtype, nc, scaled, seed):
    kern = kernels(backend)
    H, Z, y, s = last_layer_inputs(n, C, D, dtype, seed)
    _, q = R.last_layer_factors(Z, y)
    scale = s if scaled else None
    mean, second = kern.curvature_moments(maybe(H, nc), maybe(q, nc), scale)
    mean_ref, second_ref = R.curvature_moments(H, q, scale)
    assert mean.dtype == torch.float64 and mean.shape == (C * (D + 1),)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(second, second_ref, rtol=1e-12, atol=0)
    coords = algorithms.top_variance_coords(H, q, K, scale, backend=backend)
    ref = R.top_variance_coords(H, q, K, scale)
    # the same variances in the same order; the same indices unless variances nearly tie (n = 1:
    # all are zero up to rounding)
    var = (second_ref - mean_ref.square()).clamp_min(0.0)
    assert len(coords) == len(ref)
    torch.testing.assert_close(var[coords], var[ref], rtol=1e-9, atol=1e-12 * float(var.max()) + 1e-300)
    top = torch.sort(var, descending=True).values[:K + 1]
    if len(top) < 2 or bool(((top[:-1] - top[1:]) > 1e-9 * top[0]).all()):
        assert coords.tolist() == ref.tolist()


@only("cpu")
@pytest.mark.parametrize("D", [31, 32, 33, 70])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_curvature_moments_many_column_slices(backend, D, dtype):
    kern = kernels(backend)
    # the kernel splits the weight coordinates into slices of 32 embedding columns, one per task
    H, Z, y, s = last_layer_inputs(57, 4, D, dtype, D)
    _, q = R.last_layer_factors(Z, y)
    mean, second = kern.curvature_moments(H, q, s)
    mean_ref, second_ref = R.curvature_moments(H, q, s)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(second, second_ref, rtol=1e-12, atol=0)
    threads = torch.get_num_threads()
    try:  # each sum runs over the rows in order, so the thread count does not change a bit
        torch.set_num_threads(1)
        one = kern.curvature_moments(H, q, s)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], mean) and torch.equal(one[1], second)


@only("cpu")
def test_curvature_moments_many_classes(backend):
    kern = kernels(backend)
    # above 64 classes: the register-blocked kernel in 64-class chunks (AVX-512 builds), else
    # float64 GEMMs
    H, Z, y, s = last_layer_inputs(40, 100, 6, torch.float64, 2)
    _, q = R.last_layer_factors(Z, y)
    mean, second = kern.curvature_moments(H, q, s)
    mean_ref, second_ref = R.curvature_moments(H, q, s)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(second, second_ref, rtol=1e-12, atol=0)


@only("cpu")
@pytest.mark.parametrize("n,C,D", [(300, 67, 17), (513, 130, 48), (1, 5, 16), (257, 4, 15), (256, 64, 32)])
@pytest.mark.parametrize("h_dtype,q_dtype", [(torch.float32, torch.float32), (torch.float32, torch.float64),
                                             (torch.float64, torch.float32), (torch.float64, torch.float64)])
def test_curvature_moments_blocks_and_mixed_dtypes(backend, n, C, D, h_dtype, q_dtype):
    """Row blocks of 256, groups of 4 classes and chunks of 64, slices of 16 columns, each with a
    ragged tail; q in float32 or float64 whatever the embeddings' dtype (q is used as given, not
    rounded to the embeddings' dtype); the same bits on 1 and 3 threads."""
    kern = kernels(backend)
    H, Z, y, s = last_layer_inputs(n, C, D, torch.float64, n + C)
    _, q = R.last_layer_factors(Z, y)
    H, q = H.to(h_dtype), q.to(q_dtype)
    mean, second = kern.curvature_moments(H, q, s)
    mean_ref, second_ref = R.curvature_moments(H.double(), q.double(), s)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(second, second_ref, rtol=1e-12, atol=0)
    for threads in (1, 3):
        with num_threads(threads):
            again = kern.curvature_moments(H, q, s)
        assert torch.equal(again[0], mean) and torch.equal(again[1], second)


@only("cpu")
def test_curvature_moments_empty_class_like_reference(backend):
    kern = kernels(backend)
    H, q = torch.zeros(0, 3), torch.zeros(0, 2)
    mean, second = kern.curvature_moments(H, q, None)
    mean_ref, second_ref = R.curvature_moments(H, q)
    torch.testing.assert_close(mean, mean_ref, equal_nan=True)
    torch.testing.assert_close(second, second_ref, equal_nan=True)


@only("cpu", "triton")
def test_top_coords_ties_lowest_index_first(backend, device):
    # duplicated embedding columns give equal variances: the lower coordinate must come first
    H, Z, y, _ = last_layer_inputs(20, 3, 4, torch.float64, 1)
    H = torch.cat([H, H], dim=1)
    _, q = R.last_layer_factors(Z, y)
    coords = algorithms.top_variance_coords(H.to(device), q.to(device), 24, backend=backend)
    assert coords.tolist() == R.top_variance_coords(H, q, 24).tolist()


@only("cpu")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(3))
def test_ops_top_variance_coords_prunes_rows_like_the_full_reference(backend, seed, dtype):
    """An ImageNet-like class (many classes, a confident model): lcmat.algorithms skips the weight rows
    that cannot reach the top and runs the cpu moments on column subsets of q."""
    from lcmat import algorithms
    H, Z, _, s = last_layer_inputs(300, 200, 24, dtype, seed)
    Z[:, 0] += 20.0
    Z[:, 1:6] += 10.0
    _, q = R.last_layer_factors(Z, torch.zeros(300, dtype=torch.long))
    for K in (1, 30, 100):
        for scale in (None, s):
            expected = R.top_variance_coords(H, q, K, scale).tolist()
            assert algorithms.top_variance_coords(H, q, K, scale, backend=backend).tolist() == expected


def distance_inputs(n, C, D, dtype, seed):
    H, Z, y, s = last_layer_inputs(n, C, D, torch.float64, seed)
    e, q = R.last_layer_factors(Z, y)
    return H.to(dtype), e.to(dtype), q.to(dtype), s.to(dtype)


def distance_tol(dtype, ref):
    # sqrt amplifies the cancellation of ||g_i||^2 + ||g_j||^2 - 2 <g_i, g_j> near zero
    scale = float(ref.max()) if ref.numel() else 1.0
    if dtype == torch.float64:
        return {"rtol": 1e-9, "atol": 1e-6 * (1 + scale)}
    return {"rtol": 1e-3, "atol": 3e-3 * (1 + scale)}


@only("cpu")
@given(n=st.integers(1, 40), C=st.integers(1, 6), D=st.integers(1, 10), dtype=DTYPES,
       nc=st.booleans(), scaled=st.booleans(), seed=st.integers(0, 99))
def test_gradient_distance_noncontiguous_and_scaled(backend, n, C, D, dtype, nc, scaled, seed):
    kern = kernels(backend)
    H, e, q, s = distance_inputs(n, C, D, dtype, seed)
    scale = s if scaled else None
    out = kern.gradient_distance(maybe(H, nc), maybe(e, nc), scale)
    ref = R.gradient_distance(H.double(), e.double(), None if scale is None else scale.double())
    assert out.dtype == dtype and out.shape == (n, n)
    assert torch.all(out.diagonal() == 0)
    torch.testing.assert_close(out.double(), ref, **distance_tol(dtype, ref))


@only("cpu")
@given(n=st.integers(0, 45), m=st.integers(0, 45), K=st.integers(0, 9), dtype=DTYPES,
       nc=st.booleans(), same=st.booleans(), seed=st.integers(0, 99))
def test_pairwise_l1_noncontiguous_and_empty(backend, n, m, K, dtype, nc, same, seed):
    kern = kernels(backend)
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, K, generator=g, dtype=torch.float64).to(dtype)
    b = None if same else torch.randn(m, K, generator=g, dtype=torch.float64).to(dtype)
    out = kern.pairwise_l1(maybe(a, nc), None if b is None else maybe(b, nc))
    ref = R.pairwise_l1(a.double(), None if b is None else b.double())
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, **tol(dtype))
    if b is None:
        assert torch.equal(out, out.T)  # the symmetric path mirrors exactly


@only("cpu")
def test_pairwise_l1_larger_than_tiles(backend):
    kern = kernels(backend)
    g = torch.Generator().manual_seed(3)
    a = torch.randn(301, 17, generator=g, dtype=torch.float64)
    b = torch.randn(263, 17, generator=g, dtype=torch.float64)
    torch.testing.assert_close(kern.pairwise_l1(a, b), R.pairwise_l1(a, b))
    out = kern.pairwise_l1(a)
    torch.testing.assert_close(out, R.pairwise_l1(a))
    assert torch.equal(out, out.T)


@only("cpu")
@pytest.mark.parametrize("shape", [(70, 50, 13), (133, 133, 100), (5, 300, 3)])
def test_pairwise_l1_float32_sums_in_order(backend, shape):
    kern = kernels(backend)
    # every kernel variant (the register-blocked AVX2 one included) sums over k in order, so it
    # must agree to the bit with the same sums done elementwise in float32
    n, m, K = shape
    g = torch.Generator().manual_seed(n)
    a, b = torch.randn(n, K, generator=g), torch.randn(m, K, generator=g)

    def in_order(x, y):
        acc = torch.zeros(len(x), len(y))
        for k in range(K):
            acc += (x[:, k, None] - y[None, :, k]).abs()
        return acc

    assert torch.equal(kern.pairwise_l1(a, b), in_order(a, b))
    assert torch.equal(kern.pairwise_l1(a), in_order(a, a))


@only("cpu")
@given(n=st.integers(1, 40), C=st.integers(1, 5), D=st.integers(1, 8), K=st.integers(0, 10),
       rho=st.sampled_from([0.0, 0.01, 1.0]), dtype=DTYPES, nc=st.booleans(), scaled=st.booleans(),
       seed=st.integers(0, 99))
def test_lcmat_distance_noncontiguous_and_scaled(backend, n, C, D, K, rho, dtype, nc, scaled, seed):
    kern = kernels(backend)
    H, e, q, s = distance_inputs(n, C, D, dtype, seed)
    scale = s if scaled else None
    coords = R.top_variance_coords(H, q, K, scale)
    out = kern.lcmat_distance(maybe(H, nc), maybe(e, nc), maybe(q, nc), coords, rho, scale)
    ref = R.lcmat_distance(H.double(), e.double(), q.double(), coords, rho,
                           None if scale is None else scale.double())
    torch.testing.assert_close(out.double(), ref, **distance_tol(dtype, ref))
    d = kern.hessian_diag_coords(H, q, coords, scale)
    torch.testing.assert_close(d.double(), R.hessian_diag_coords(H.double(), q.double(), coords,
                               None if scale is None else scale.double()), **tol(dtype))


@only("cpu")
def test_lcmat_distance_class_larger_than_tile_and_one_sample(backend):
    kern = kernels(backend)
    H, e, q, s = distance_inputs(300, 10, 33, torch.float64, 5)
    coords = R.top_variance_coords(H, q, 40, s)
    torch.testing.assert_close(kern.lcmat_distance(H, e, q, coords, 0.5, s),
                               R.lcmat_distance(H, e, q, coords, 0.5, s), rtol=1e-9, atol=1e-9)
    out = kern.lcmat_distance(H[:1], e[:1], q[:1], coords, 0.5)
    assert out.shape == (1, 1) and out.item() == 0.0


@only("cpu")
@pytest.mark.parametrize("n", [127, 129, 257, 289, 300])
def test_lcmat_distance_tile_edges(backend, n):
    kern = kernels(backend)
    # rows come in blocks of 256 and tiles of 32 x 128; n = 289 leaves the last row alone in its tile
    H, e, q, s = distance_inputs(n, 3, 5, torch.float64, n)
    coords = R.top_variance_coords(H, q, 7, s)
    for rho in (0.0, 0.3):
        out = kern.lcmat_distance(H, e, q, coords, rho, s)
        torch.testing.assert_close(out, R.lcmat_distance(H, e, q, coords, rho, s), rtol=1e-9, atol=1e-9)
        assert torch.equal(out, out.T) and torch.all(out.diagonal() == 0)
    grad = kern.gradient_distance(H, e, s)
    assert torch.equal(grad, kern.lcmat_distance(H, e, q, coords, 0.0, s))
    torch.testing.assert_close(grad, R.gradient_distance(H, e, s), rtol=1e-9, atol=1e-9)


@only("cpu")
@pytest.mark.parametrize("n", [1, 7, 8, 9, 31, 33, 255, 256, 257, 300, 520])
@pytest.mark.parametrize("D,C", [(5, 3), (32, 10), (33, 40), (100, 64)])
def test_gradient_distance_float32_exact_on_integer_inputs(backend, n, D, C):
    """Small integers make every Gram entry exact in float32, in ATen's GEMM and in the packed
    AVX-512 Gram kernel alike (used for float with at least 32 columns), and so are the squared
    distances: the distances must be their correctly rounded square roots, which the float64
    reference rounded to float32 is (torch's float32 sqrt is not always). Any misplaced row,
    column or panel shows."""
    kern = kernels(backend)
    g = torch.Generator().manual_seed(n * 1000 + D + C)
    H = torch.randint(0, 4, (n, D), generator=g).float()
    e = torch.randint(-2, 3, (n, C), generator=g).float()
    out = kern.gradient_distance(H, e, None)
    assert torch.equal(out, R.gradient_distance(H.double(), e.double()).float())
    q = torch.rand(n, C, generator=g)
    coords = torch.arange(min(7, C))
    torch.testing.assert_close(kern.lcmat_distance(H, e, q, coords, 0.0, None), out, rtol=0, atol=0)


# Triton (interpreted on the CPU, compiled on a GPU): its own shapes, example counts (6 to 8) and
# tolerances; distances compared squared (the Gram identity's cancellation).
@only("triton")
@settings(max_examples=8)
@given(n=st.integers(1, 37), c=st.integers(1, 19), d=st.integers(0, 35),
       dtype=DTYPES, scaled=st.booleans(), seed=st.integers(0, 99))
def test_curvature_moments_match_reference(backend, device, n, c, d, dtype, scaled, seed):
    kern = kernels(backend)
    z, y, h, s = triton_problem(n, c, d, dtype, seed, device)
    _, q = R.last_layer_factors(z, y)
    scale = s if scaled else None
    mean, second = kern.curvature_moments(h, q, scale)
    mr, sr = R.curvature_moments(h, q, scale)
    assert mean.dtype == torch.float64 and mean.shape == (c * (d + 1),)
    torch.testing.assert_close(mean, mr, atol=1e-15, rtol=1e-12)
    torch.testing.assert_close(second, sr, atol=1e-15, rtol=1e-12)


@only("triton")
@settings(max_examples=6)
@given(n=st.integers(2, 30), c=st.integers(1, 9), d=st.integers(1, 20), k=st.integers(0, 50),
       seed=st.integers(0, 99))
def test_top_variance_coords_match_reference(backend, device, n, c, d, k, seed):
    z, y, h, s = triton_problem(n, c, d, torch.float32, seed, device)
    _, q = R.last_layer_factors(z, y)
    assert torch.equal(algorithms.top_variance_coords(h, q, k, s, backend=backend), R.top_variance_coords(h, q, k, s))


@only("cpu", "triton")
def test_top_variance_coords_ties_and_cancellation(backend, device):
    # A zero embedding column gives weight coordinates of exactly zero variance: ties, broken
    # by the lowest index. A large offset with tiny spread is where float32 m2 - m1^2 fails.
    z, y, h, _ = triton_problem(25, 4, 6, torch.float32, 3, device)
    h[:, 2] = 0.0
    h[:, 4] = 100.0 + 1e-3 * h[:, 4]
    _, q = R.last_layer_factors(z, y)
    ours = algorithms.top_variance_coords(h, q, 28, backend=backend)
    assert torch.equal(ours, R.top_variance_coords(h, q, 28))
    zero_var = [4 + c * 6 + 2 for c in range(4)]
    assert ours[-4:].tolist() == zero_var


def _class_rows(n, c, d, dtype, seed, device):
    g = torch.Generator().manual_seed(seed)
    z = 2 * torch.randn(n, c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    e, q = R.last_layer_factors(z, y)
    h = torch.randn(n, d, generator=g, dtype=torch.float64)
    s = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    return [t.to(dtype).to(device) for t in (h, e, q, s)]


def _assert_close_gradient_part(out, ref, dtype):
    """Distances come from sqrt(|g_i|^2 + |g_j|^2 - 2 <g_i, g_j>): the squared distances carry an
    error of a few eps times max |g|^2 (the square root of it for near-duplicate rows), so they
    are compared squared."""
    eps = torch.finfo(dtype).eps
    top = float(ref.square().max()) if ref.numel() else 0.0
    torch.testing.assert_close(out.double().square(), ref.square(), rtol=0.0, atol=20 * eps * (1 + top))


@only("triton")
@settings(max_examples=8)
@given(n=st.integers(1, 37), c=st.integers(1, 12), d=st.integers(0, 35), scaled=st.booleans(),
       dtype=DTYPES, seed=st.integers(0, 99))
def test_gradient_distance_matches_reference(backend, device, n, c, d, scaled, dtype, seed):
    kern = kernels(backend)
    h, e, _, s = _class_rows(n, c, d, dtype, seed, device)
    scale = s if scaled else None
    out = kern.gradient_distance(h, e, scale)
    ref = R.gradient_distance(h.double(), e.double(), None if scale is None else scale.double())
    assert out.shape == (n, n) and out.dtype == dtype
    assert torch.all(out.diagonal() == 0)
    _assert_close_gradient_part(out, ref, dtype)


@only("triton")
@settings(max_examples=8)
@given(n=st.integers(1, 33), m=st.integers(1, 20), k=st.integers(0, 30),
       same=st.booleans(), dtype=DTYPES, seed=st.integers(0, 99))
def test_pairwise_l1_matches_reference(backend, device, n, m, k, same, dtype, seed):
    kern = kernels(backend)
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, k, generator=g, dtype=torch.float64).to(dtype).to(device)
    b = None if same else torch.randn(m, k, generator=g, dtype=torch.float64).to(dtype).to(device)
    out = kern.pairwise_l1(a, b)
    ref = R.pairwise_l1(a.double(), None if b is None else b.double())
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=rtol)


@only("triton")
@settings(max_examples=6)
@given(n=st.integers(1, 30), c=st.integers(1, 8), d=st.integers(1, 20), kc=st.integers(1, 40),
       scaled=st.booleans(), dtype=DTYPES, seed=st.integers(0, 99))
def test_hessian_diag_coords_match_reference(backend, device, n, c, d, kc, scaled, dtype, seed):
    kern = kernels(backend)
    h, _, q, s = _class_rows(n, c, d, dtype, seed, device)
    g = torch.Generator().manual_seed(seed)
    coords = torch.randint(0, c * (d + 1), (kc,), generator=g).to(device)
    coords[0] = 0  # always one bias coordinate
    scale = s if scaled else None
    out = kern.hessian_diag_coords(h, q, coords, scale)
    ref = R.hessian_diag_coords(h, q, coords, scale)
    torch.testing.assert_close(out, ref, rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=0.0)


@only("triton")
@settings(max_examples=8)
@given(n=st.integers(1, 35), c=st.integers(1, 10), d=st.integers(1, 30), k=st.integers(0, 40),
       rho=st.sampled_from([0.0, 0.01, 1.0]), scaled=st.booleans(),
       dtype=DTYPES, seed=st.integers(0, 99))
def test_lcmat_distance_matches_reference(backend, device, n, c, d, k, rho, scaled, dtype, seed):
    kern = kernels(backend)
    h, e, q, s = _class_rows(n, c, d, dtype, seed, device)
    scale = s if scaled else None
    coords = R.top_variance_coords(h, q, k, scale)
    out = kern.lcmat_distance(h, e, q, coords, rho, scale)
    h64, e64, q64 = (t.double() for t in (h, e, q))
    s64 = None if scale is None else scale.double()
    l1 = R.pairwise_l1(R.hessian_diag_coords(h64, q64, coords, s64))
    ref = R.lcmat_distance(h64, e64, q64, coords, rho, s64)
    torch.testing.assert_close(out.double(), ref, rtol=0.0, atol=10 * float(ref.max()))  # shape, finite
    _assert_close_gradient_part(out.double() - rho * l1, R.gradient_distance(h64, e64, s64), dtype)


@only("cpu", "triton")
def test_noncontiguous_inputs(backend, device):
    kern = kernels(backend)
    h, e, q, s = _class_rows(29, 7, 18, torch.float64, 5, device)
    ht, et, qt = (t.t().contiguous().t() for t in (h, e, q))
    coords = R.top_variance_coords(h, q, 17, s)
    ref = R.lcmat_distance(h, e, q, coords, 0.5, s)
    torch.testing.assert_close(kern.lcmat_distance(ht, et, qt, coords, 0.5, s[::1]), ref, rtol=1e-9, atol=1e-9)
    a = torch.randn(40, 9, dtype=torch.float64, device=device)[::2]
    torch.testing.assert_close(kern.pairwise_l1(a), R.pairwise_l1(a))


# Bad arguments: the compiled ops raise from their argument checks (RuntimeError), the Triton
# wrappers a ValueError; each names the argument.
BAD_ARGUMENT_ERROR = {"cpu": RuntimeError, "triton": ValueError}


@only("cpu", "triton")
def test_bad_arguments_raise(backend, device):
    kern, error = kernels(backend), BAD_ARGUMENT_ERROR[backend]
    h, e, q, _ = _class_rows(6, 3, 4, torch.float32, 0, device)
    with pytest.raises(error, match="coords"):
        kern.hessian_diag_coords(h, q, torch.tensor([15], device=device))
    with pytest.raises(error, match="e"):
        kern.gradient_distance(h, e[:5])
    with pytest.raises(error, match="b"):
        kern.pairwise_l1(h, e)
    H, e, q, _ = (t.to(device) for t in distance_inputs(5, 3, 2, torch.float64, 0))
    with pytest.raises(error, match="coords"):
        kern.lcmat_distance(H, e, q, torch.tensor([0, 9], device=device), 0.1)


@only("triton")
@pytest.mark.gpu
def test_gpu_class_sized_block(backend, device):
    kern = kernels(backend)
    h, e, q, s = _class_rows(1300, 1000, 512, torch.float64, 0, device)
    coords = R.top_variance_coords(h, q, 100, s)
    ref = R.lcmat_distance(h, e, q, coords, 0.01, s)
    torch.testing.assert_close(kern.lcmat_distance(h, e, q, coords, 0.01, s), ref, rtol=1e-9, atol=1e-7)
    h32, e32, q32, s32 = (t.float() for t in (h, e, q, s))
    l1 = R.pairwise_l1(R.hessian_diag_coords(h, q, coords, s))
    out = kern.lcmat_distance(h32, e32, q32, coords, 0.01, s32)
    _assert_close_gradient_part(out.double() - 0.01 * l1, R.gradient_distance(h, e, s), torch.float32)


@only("triton")
@pytest.mark.gpu
def test_gpu_large_curvature_moments(backend, device):
    kern = kernels(backend)
    z, y, h, s = triton_problem(5000, 1000, 512, torch.float32, 0, device)
    _, q = kern.last_layer_factors(z, y)
    mean, second = kern.curvature_moments(h[:1300], q[:1300], s[:1300])
    mr, sr = R.curvature_moments(h[:1300], q[:1300], s[:1300])
    torch.testing.assert_close(mean, mr, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(second, sr, rtol=1e-12, atol=1e-15)
    assert torch.equal(algorithms.top_variance_coords(h[:1300], q[:1300], 100, backend=backend),
                       R.top_variance_coords(h[:1300], q[:1300], 100))


@only("triton")
def test_ops_top_variance_coords_prunes_rows_on_triton_like_the_full_reference(backend, device):
    """Many classes, a confident model: lcmat.ops runs the Triton moments on the column subsets of
    q that can reach the top (algorithms.top_variance_coords_pruned), same coordinates."""
    from lcmat import algorithms
    g = torch.Generator().manual_seed(3)
    n, c, d = 40, 48, 6
    z = torch.randn(n, c, generator=g, dtype=torch.float64)
    z[:, 0] += 20.0
    z[:, 1:4] += 10.0
    _, q = R.last_layer_factors(z, torch.zeros(n, dtype=torch.long))
    h = torch.randn(n, d, generator=g, dtype=torch.float64).abs()
    for dtype in FLOATS:
        hd, qd = h.to(dtype).to(device), q.to(dtype).to(device)
        for k in (1, 10, 30):
            expected = R.top_variance_coords(hd, qd, k).tolist()
            assert algorithms.top_variance_coords(hd, qd, k, backend=backend).tolist() == expected


@only("cuda")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_class_sized_block_matches_reference(backend, device, dtype):
    kern = kernels(backend)
    H, Z, y, s = last_layer_inputs(301, 10, 37, dtype, 0)
    e, q = R.last_layer_factors(Z, y)
    coords = R.top_variance_coords(H, q, 40, s)
    assert algorithms.top_variance_coords(H.to(device), q.to(device), 40, s.to(device),
                                          backend=backend).tolist() == coords.tolist()
    ref = R.lcmat_distance(H.double(), e.double(), q.double(), coords, 0.3, s.double())
    got = kern.lcmat_distance(H.to(device), e.to(device), q.to(device), coords.to(device), 0.3, s.to(device))
    torch.testing.assert_close(got.cpu().double(), ref, **distance_tol(dtype, ref))
    a = torch.randn(300, 17, dtype=dtype)
    torch.testing.assert_close(kern.pairwise_l1(a.to(device)).cpu(), R.pairwise_l1(a), **tol(dtype))
    torch.testing.assert_close(kern.pairwise_l1(a.to(device), a[:130].to(device)).cpu(), R.pairwise_l1(a, a[:130]),
                               **tol(dtype))


@only("cuda")
def test_hessian_coords_without_embedding_dimensions(backend, device):
    """D = 0: every coordinate is a bias one (the kernel never divides by D)."""
    _, Z, y, _ = last_layer_inputs(9, 4, 3, torch.float64, 1)
    _, q = R.last_layer_factors(Z, y)
    H0 = torch.zeros(9, 0, dtype=torch.float64)
    coords = torch.tensor([0, 3, 1])
    got = kernels(backend).hessian_diag_coords(H0.to(device), q.to(device), coords.to(device))
    torch.testing.assert_close(got.cpu(), R.hessian_diag_coords(H0, q, coords))
