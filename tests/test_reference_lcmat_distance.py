"""lcmat.reference.lcmat_distance against the materialised per-sample g and d (autograd).

    D_ij = || g_i - g_j ||_2 + rho * || d_i[K] - d_j[K] ||_1

Gradients come from Gram identities in the reference, so distances are compared on their squares
with the cancellation error bound of a Gram matrix (brute.gram_distance_tolerance); everything
else is compared at 1e-10 relative in float64.
"""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import brute
from lcmat.algorithms import top_variance_coords_pruned, weight_row_bounds
from lcmat.reference import (coords_by_variance, curvature_moments, gradient_distance, gradient_gram,
                             hessian_diag_coords, last_layer_factors, lcmat_distance,
                             pairwise_l1, top_variance_coords)

F64 = dict(rtol=1e-10, atol=1e-13)
F32 = dict(rtol=1e-4, atol=1e-5)

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
