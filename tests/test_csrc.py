"""The compiled kernels (lcmat.csrc, backends "cpu" and "cuda") against the reference.

float64 runs are compared with the float64 reference at tight tolerances; float32 runs with the
float64 reference (the truth) at tolerances derived from float32's epsilon and the data's scale.
Facility-location picks must be identical to the reference's naive greedy.
"""
import contextlib
import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import lcmat.algorithms as algorithms
import lcmat.ops as ops
import lcmat.reference as R

csrc = pytest.importorskip("lcmat.csrc")
if not csrc.available("cpu"):
    pytest.skip("the compiled extension lcmat._C is not built", allow_module_level=True)

DTYPES = st.sampled_from([torch.float32, torch.float64])


def noncontig(t):
    """The same values in a non-contiguous layout (a strided view of a larger buffer)."""
    wide = torch.stack([t, torch.full_like(t, float("nan"))], dim=-1)
    out = wide[..., 0]
    assert t.numel() <= 1 or not out.is_contiguous()
    return out


def maybe(t, flag):
    return noncontig(t) if flag else t


def tol(dtype):
    return {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}


def last_layer_inputs(n, C, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(n, D, generator=g, dtype=torch.float64).abs()
    Z = 3 * torch.randn(n, C, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (n,), generator=g)
    s = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    return H.to(dtype), Z.to(dtype), y, s.to(dtype)


# ---- last_layer -------------------------------------------------------------------------------

@given(n=st.integers(0, 40), C=st.integers(1, 12), D=st.integers(1, 9), dtype=DTYPES,
       nc=st.booleans(), scaled=st.booleans(), seed=st.integers(0, 99))
def test_last_layer(n, C, D, dtype, nc, scaled, seed):
    H, Z, y, s = last_layer_inputs(n, C, D, dtype, seed)
    e, q = csrc.last_layer_factors(maybe(Z, nc), y)
    e_ref, q_ref = R.last_layer_factors(Z.double(), y)
    assert e.dtype == dtype and q.dtype == dtype and e.shape == (n, C)
    torch.testing.assert_close(e.double(), e_ref, **tol(dtype))
    torch.testing.assert_close(q.double(), q_ref, **tol(dtype))
    scale = s if scaled else None
    gn, en = csrc.last_layer_grad_norms(maybe(H, nc), Z, y, scale)
    gn_ref, en_ref = R.last_layer_grad_norms(H.double(), Z.double(), y, None if scale is None else s.double())
    torch.testing.assert_close(gn.double(), gn_ref, **tol(dtype))
    torch.testing.assert_close(en.double(), en_ref, **tol(dtype))


def test_last_layer_bad_labels():
    H, Z, y, _ = last_layer_inputs(6, 3, 2, torch.float64, 0)
    y[4] = 3
    with pytest.raises(RuntimeError, match="labels"):
        csrc.last_layer_factors(Z, y)
    with pytest.raises(RuntimeError, match="labels"):
        csrc.last_layer_grad_norms(H, Z, y)
    with pytest.raises(RuntimeError, match="embeddings"):
        csrc.last_layer_grad_norms(H[:5], Z, y)


# ---- lcmat_distance ---------------------------------------------------------------------------

@given(n=st.integers(1, 30), C=st.integers(1, 6), D=st.integers(1, 8), K=st.integers(0, 12),
       dtype=DTYPES, nc=st.booleans(), scaled=st.booleans(), seed=st.integers(0, 99))
def test_curvature_and_top_coords(n, C, D, K, dtype, nc, scaled, seed):
    H, Z, y, s = last_layer_inputs(n, C, D, dtype, seed)
    _, q = R.last_layer_factors(Z, y)
    scale = s if scaled else None
    mean, second = csrc.curvature_moments(maybe(H, nc), maybe(q, nc), scale)
    mean_ref, second_ref = R.curvature_moments(H, q, scale)
    assert mean.dtype == torch.float64 and mean.shape == (C * (D + 1),)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(second, second_ref, rtol=1e-12, atol=0)
    coords = algorithms.top_variance_coords(H, q, K, scale, backend="cpu")
    ref = R.top_variance_coords(H, q, K, scale)
    # the same variances in the same order; the same indices unless variances nearly tie (n = 1:
    # all are zero up to rounding)
    var = (second_ref - mean_ref.square()).clamp_min(0.0)
    assert len(coords) == len(ref)
    torch.testing.assert_close(var[coords], var[ref], rtol=1e-9, atol=1e-12 * float(var.max()) + 1e-300)
    top = torch.sort(var, descending=True).values[:K + 1]
    if len(top) < 2 or bool(((top[:-1] - top[1:]) > 1e-9 * top[0]).all()):
        assert coords.tolist() == ref.tolist()


@pytest.mark.parametrize("D", [31, 32, 33, 70])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_curvature_moments_many_column_slices(D, dtype):
    # the kernel splits the weight coordinates into slices of 32 embedding columns, one per task
    H, Z, y, s = last_layer_inputs(57, 4, D, dtype, D)
    _, q = R.last_layer_factors(Z, y)
    mean, second = csrc.curvature_moments(H, q, s)
    mean_ref, second_ref = R.curvature_moments(H, q, s)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(second, second_ref, rtol=1e-12, atol=0)
    threads = torch.get_num_threads()
    try:  # each sum runs over the rows in order, so the thread count does not change a bit
        torch.set_num_threads(1)
        one = csrc.curvature_moments(H, q, s)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], mean) and torch.equal(one[1], second)


def test_curvature_moments_many_classes():
    # above 64 classes: the register-blocked kernel in 64-class chunks (AVX-512 builds), else
    # float64 GEMMs
    H, Z, y, s = last_layer_inputs(40, 100, 6, torch.float64, 2)
    _, q = R.last_layer_factors(Z, y)
    mean, second = csrc.curvature_moments(H, q, s)
    mean_ref, second_ref = R.curvature_moments(H, q, s)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(second, second_ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("n,C,D", [(300, 67, 17), (513, 130, 48), (1, 5, 16), (257, 4, 15), (256, 64, 32)])
@pytest.mark.parametrize("h_dtype,q_dtype", [(torch.float32, torch.float32), (torch.float32, torch.float64),
                                             (torch.float64, torch.float32), (torch.float64, torch.float64)])
def test_curvature_moments_blocks_and_mixed_dtypes(n, C, D, h_dtype, q_dtype):
    """Row blocks of 256, groups of 4 classes and chunks of 64, slices of 16 columns, each with a
    ragged tail; q in float32 or float64 whatever the embeddings' dtype (q is used as given, not
    rounded to the embeddings' dtype); the same bits on 1 and 3 threads."""
    H, Z, y, s = last_layer_inputs(n, C, D, torch.float64, n + C)
    _, q = R.last_layer_factors(Z, y)
    H, q = H.to(h_dtype), q.to(q_dtype)
    mean, second = csrc.curvature_moments(H, q, s)
    mean_ref, second_ref = R.curvature_moments(H.double(), q.double(), s)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(second, second_ref, rtol=1e-12, atol=0)
    for threads in (1, 3):
        with num_threads(threads):
            again = csrc.curvature_moments(H, q, s)
        assert torch.equal(again[0], mean) and torch.equal(again[1], second)


def test_curvature_moments_empty_class_like_reference():
    H, q = torch.zeros(0, 3), torch.zeros(0, 2)
    mean, second = csrc.curvature_moments(H, q, None)
    mean_ref, second_ref = R.curvature_moments(H, q)
    torch.testing.assert_close(mean, mean_ref, equal_nan=True)
    torch.testing.assert_close(second, second_ref, equal_nan=True)


def test_top_coords_ties_lowest_index_first():
    # duplicated embedding columns give equal variances: the lower coordinate must come first
    H, Z, y, _ = last_layer_inputs(20, 3, 4, torch.float64, 1)
    H = torch.cat([H, H], dim=1)
    _, q = R.last_layer_factors(Z, y)
    coords = algorithms.top_variance_coords(H, q, 24, backend="cpu")
    assert coords.tolist() == R.top_variance_coords(H, q, 24).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(3))
def test_ops_top_variance_coords_prunes_rows_like_the_full_reference(seed, dtype):
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
            assert algorithms.top_variance_coords(H, q, K, scale, backend="cpu").tolist() == expected


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


@given(n=st.integers(1, 40), C=st.integers(1, 6), D=st.integers(1, 10), dtype=DTYPES,
       nc=st.booleans(), scaled=st.booleans(), seed=st.integers(0, 99))
def test_gradient_distance(n, C, D, dtype, nc, scaled, seed):
    H, e, q, s = distance_inputs(n, C, D, dtype, seed)
    scale = s if scaled else None
    out = csrc.gradient_distance(maybe(H, nc), maybe(e, nc), scale)
    ref = R.gradient_distance(H.double(), e.double(), None if scale is None else scale.double())
    assert out.dtype == dtype and out.shape == (n, n)
    assert torch.all(out.diagonal() == 0)
    torch.testing.assert_close(out.double(), ref, **distance_tol(dtype, ref))


@given(n=st.integers(0, 45), m=st.integers(0, 45), K=st.integers(0, 9), dtype=DTYPES,
       nc=st.booleans(), same=st.booleans(), seed=st.integers(0, 99))
def test_pairwise_l1(n, m, K, dtype, nc, same, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, K, generator=g, dtype=torch.float64).to(dtype)
    b = None if same else torch.randn(m, K, generator=g, dtype=torch.float64).to(dtype)
    out = csrc.pairwise_l1(maybe(a, nc), None if b is None else maybe(b, nc))
    ref = R.pairwise_l1(a.double(), None if b is None else b.double())
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, **tol(dtype))
    if b is None:
        assert torch.equal(out, out.T)  # the symmetric path mirrors exactly


def test_pairwise_l1_larger_than_tiles():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(301, 17, generator=g, dtype=torch.float64)
    b = torch.randn(263, 17, generator=g, dtype=torch.float64)
    torch.testing.assert_close(csrc.pairwise_l1(a, b), R.pairwise_l1(a, b))
    out = csrc.pairwise_l1(a)
    torch.testing.assert_close(out, R.pairwise_l1(a))
    assert torch.equal(out, out.T)


@pytest.mark.parametrize("shape", [(70, 50, 13), (133, 133, 100), (5, 300, 3)])
def test_pairwise_l1_float32_sums_in_order(shape):
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

    assert torch.equal(csrc.pairwise_l1(a, b), in_order(a, b))
    assert torch.equal(csrc.pairwise_l1(a), in_order(a, a))


@given(n=st.integers(1, 40), C=st.integers(1, 5), D=st.integers(1, 8), K=st.integers(0, 10),
       rho=st.sampled_from([0.0, 0.01, 1.0]), dtype=DTYPES, nc=st.booleans(), scaled=st.booleans(),
       seed=st.integers(0, 99))
def test_lcmat_distance(n, C, D, K, rho, dtype, nc, scaled, seed):
    H, e, q, s = distance_inputs(n, C, D, dtype, seed)
    scale = s if scaled else None
    coords = R.top_variance_coords(H, q, K, scale)
    out = csrc.lcmat_distance(maybe(H, nc), maybe(e, nc), maybe(q, nc), coords, rho, scale)
    ref = R.lcmat_distance(H.double(), e.double(), q.double(), coords, rho,
                           None if scale is None else scale.double())
    torch.testing.assert_close(out.double(), ref, **distance_tol(dtype, ref))
    d = csrc.hessian_diag_coords(H, q, coords, scale)
    torch.testing.assert_close(d.double(), R.hessian_diag_coords(H.double(), q.double(), coords,
                               None if scale is None else scale.double()), **tol(dtype))


def test_lcmat_distance_class_larger_than_tile_and_one_sample():
    H, e, q, s = distance_inputs(300, 10, 33, torch.float64, 5)
    coords = R.top_variance_coords(H, q, 40, s)
    torch.testing.assert_close(csrc.lcmat_distance(H, e, q, coords, 0.5, s),
                               R.lcmat_distance(H, e, q, coords, 0.5, s), rtol=1e-9, atol=1e-9)
    out = csrc.lcmat_distance(H[:1], e[:1], q[:1], coords, 0.5)
    assert out.shape == (1, 1) and out.item() == 0.0


@pytest.mark.parametrize("n", [127, 129, 257, 289, 300])
def test_lcmat_distance_tile_edges(n):
    # rows come in blocks of 256 and tiles of 32 x 128; n = 289 leaves the last row alone in its tile
    H, e, q, s = distance_inputs(n, 3, 5, torch.float64, n)
    coords = R.top_variance_coords(H, q, 7, s)
    for rho in (0.0, 0.3):
        out = csrc.lcmat_distance(H, e, q, coords, rho, s)
        torch.testing.assert_close(out, R.lcmat_distance(H, e, q, coords, rho, s), rtol=1e-9, atol=1e-9)
        assert torch.equal(out, out.T) and torch.all(out.diagonal() == 0)
    grad = csrc.gradient_distance(H, e, s)
    assert torch.equal(grad, csrc.lcmat_distance(H, e, q, coords, 0.0, s))
    torch.testing.assert_close(grad, R.gradient_distance(H, e, s), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 31, 33, 255, 256, 257, 300, 520])
@pytest.mark.parametrize("D,C", [(5, 3), (32, 10), (33, 40), (100, 64)])
def test_gradient_distance_float32_exact_on_integer_inputs(n, D, C):
    """Small integers make every Gram entry exact in float32, in ATen's GEMM and in the packed
    AVX-512 Gram kernel alike (used for float with at least 32 columns), and so are the squared
    distances: the distances must be their correctly rounded square roots, which the float64
    reference rounded to float32 is (torch's float32 sqrt is not always). Any misplaced row,
    column or panel shows."""
    g = torch.Generator().manual_seed(n * 1000 + D + C)
    H = torch.randint(0, 4, (n, D), generator=g).float()
    e = torch.randint(-2, 3, (n, C), generator=g).float()
    out = csrc.gradient_distance(H, e, None)
    assert torch.equal(out, R.gradient_distance(H.double(), e.double()).float())
    q = torch.rand(n, C, generator=g)
    coords = torch.arange(min(7, C))
    torch.testing.assert_close(csrc.lcmat_distance(H, e, q, coords, 0.0, None), out, rtol=0, atol=0)


def test_lcmat_distance_bad_coords():
    H, e, q, _ = distance_inputs(5, 3, 2, torch.float64, 0)
    with pytest.raises(RuntimeError, match="coords"):
        csrc.lcmat_distance(H, e, q, torch.tensor([0, 9]), 0.1)


# ---- facility_location ------------------------------------------------------------------------

def random_dist(n, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    return torch.cdist(x, x).to(dtype)


def has_near_tie(dist, k, L, rel=1e-5):
    """Whether the naive greedy (in float64) meets two different positive gains closer than `rel`
    at its best: there float32 rounding may legitimately flip the pick. (Exact ties are fine.)"""
    dist = dist.double()
    sim = ((dist.max() if L is None else L) - dist).clamp_min(0.0)
    coverage = torch.zeros(len(dist), dtype=torch.float64)
    selected = torch.zeros(len(dist), dtype=torch.bool)
    for _ in range(k):
        gains = (sim - coverage[:, None]).clamp_min(0.0).sum(0).masked_fill(selected, -1.0)
        top = torch.topk(gains, min(2, len(gains))).values
        if len(top) == 2 and top[0] > 0 and 0 < top[0] - top[1] <= rel * top[0]:
            return True
        j = int(torch.argmax(gains))
        selected[j] = True
        coverage = torch.maximum(coverage, sim[:, j])
    return False


@given(n=st.integers(1, 60), D=st.integers(2, 5), frac=st.floats(0, 1), dtype=DTYPES,
       givenL=st.booleans(), nc=st.booleans(), seed=st.integers(0, 999))
def test_facility_location_matches_naive_reference(n, D, frac, dtype, givenL, nc, seed):
    dist = random_dist(n, D, dtype, seed)
    k = round(frac * n)
    L = float(dist.max()) * 0.7 if givenL else None
    assume(not has_near_tie(dist, k, L))
    ref = R.facility_location_greedy(dist, k, L, lazy=False)
    for lazy in (True, False):
        picks, objective, weights = csrc.facility_location_greedy(maybe(dist, nc), k, L, lazy)
        assert picks.tolist() == ref[0].tolist()
        assert objective.dtype == dtype and weights.dtype == dtype
        torch.testing.assert_close(objective, ref[1], **tol(dtype))
        assert torch.equal(weights, ref[2])


@given(n=st.integers(2, 40), reps=st.integers(2, 4), seed=st.integers(0, 999), dtype=DTYPES)
def test_facility_location_exact_ties_lowest_index(n, reps, seed, dtype):
    # integer points duplicated `reps` times, L1 distances: exact in floating point, exact ties
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 6, (n, 2), generator=g).double()
    pts = base.repeat(reps, 1)[torch.randperm(n * reps, generator=g)]
    dist = torch.cdist(pts, pts, p=1).to(dtype)
    k = min(len(pts), n)
    ref = R.facility_location_greedy(dist, k, lazy=False)
    for lazy in (True, False):
        picks, objective, weights = csrc.facility_location_greedy(dist, k, None, lazy)
        assert picks.tolist() == ref[0].tolist()
        assert torch.equal(weights, ref[2])


def test_facility_location_nearly_symmetric_block():
    # entries below the diagonal break the symmetry (candidate 3 covers rows 4-149 at no
    # distance): the check, in tiles of 64, must see them, or column 3 is read as row 3
    dist = random_dist(150, 3, torch.float64, 4)
    broken = dist.clone()
    broken[4:, 3] = 0.0
    for d in (dist, broken):
        ref = R.facility_location_greedy(d, 20, lazy=False)
        picks, objective, weights = csrc.facility_location_greedy(d, 20, None, True)
        assert picks.tolist() == ref[0].tolist()
        torch.testing.assert_close(objective, ref[1])
        assert torch.equal(weights, ref[2])
    assert csrc.facility_location_greedy(broken, 20)[0][0] == 3 != csrc.facility_location_greedy(dist, 20)[0][0]


@given(n=st.integers(2, 41), data=st.data(), dtype=DTYPES, seed=st.integers(0, 99))
def test_facility_location_one_broken_mirror_entry_anywhere(n, data, dtype, seed):
    """One entry D_ij != D_ji, in a full 8 x 8 block, a diagonal block or the n mod 8 strip: the
    symmetry check must see it (else column j is read as row j and j's objective is wrong)."""
    i = data.draw(st.integers(0, n - 1))
    j = data.draw(st.integers(0, n - 1).filter(lambda v: v != i))
    dist = random_dist(n, 3, dtype, seed)
    dist[i, j] = 0.0  # j covers i at no distance, i does not cover j
    ref = R.facility_location_greedy(dist, n, lazy=False)
    picks, objective, weights = csrc.facility_location_greedy(dist, n, None, True)
    assert picks.tolist() == ref[0].tolist()
    torch.testing.assert_close(objective, ref[1])
    assert torch.equal(weights, ref[2])


def test_facility_location_signed_zero_keeps_the_block_symmetric():
    """-0 == +0: a mirror pair (+0, -0) keeps the block symmetric; the reference's result."""
    dist = random_dist(19, 3, torch.float32, 1)
    dist[2, 11], dist[11, 2] = 0.0, -0.0
    ref = R.facility_location_greedy(dist, 6, lazy=False)
    picks, objective, weights = csrc.facility_location_greedy(dist, 6, None, True)
    assert picks.tolist() == ref[0].tolist()
    torch.testing.assert_close(objective, ref[1])
    assert torch.equal(weights, ref[2])


@pytest.mark.parametrize("n", [5, 21])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_facility_location_largest_entry_anywhere_sets_L(n, dtype):
    """The paper mode's L = max D is read during the symmetry check: a largest mirror pair (or
    diagonal entry) at every position (full 8 x 8 blocks, diagonal blocks, the n mod 8 strip)
    must set it."""
    base = random_dist(n, 3, dtype, n)
    for i in range(n):
        for j in range(i, n):
            dist = base.clone()
            dist[i, j] = dist[j, i] = 3 * float(base.max()) + 1
            ref = R.facility_location_greedy(dist, 4, lazy=False)
            picks, objective, weights = csrc.facility_location_greedy(dist, 4, None, True)
            assert picks.tolist() == ref[0].tolist(), (i, j)
            torch.testing.assert_close(objective, ref[1])
            assert torch.equal(weights, ref[2])


def test_facility_location_edges():
    dist = random_dist(7, 2, torch.float64, 0)
    picks, objective, weights = csrc.facility_location_greedy(dist, 0)
    assert picks.shape == (0,) and objective.shape == (0,) and weights.shape == (0,)
    picks, _, weights = csrc.facility_location_greedy(dist, 7, lazy=True)
    assert sorted(picks.tolist()) == list(range(7)) and weights.sum() == 7
    with pytest.raises(ValueError, match="k"):
        csrc.facility_location_greedy(dist, 8)
    with pytest.raises(RuntimeError, match="dist"):
        csrc.facility_location_greedy(dist[0], 2)


@contextlib.contextmanager
def num_threads(count):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@given(sizes=st.lists(st.integers(0, 70), max_size=7), frac=st.floats(0, 1), dtype=DTYPES,
       givenL=st.booleans(), lazy=st.booleans(), threads=st.sampled_from([1, 2, 3]), seed=st.integers(0, 999))
def test_facility_location_batch_matches_the_reference_per_block(sizes, frac, dtype, givenL, lazy, threads, seed):
    """Blocks of very different sizes (empty, one sample, many): with more blocks than threads
    they run in parallel, one thread each; with fewer, in turn. Each block gets the reference's
    picks, and exactly what the one-block op gives it (the same code on one thread)."""
    dists = [random_dist(n, 3, dtype, seed + b) for b, n in enumerate(sizes)]
    ks = [round(frac * n) for n in sizes]
    L = 2.0 if givenL else None
    assume(not any(has_near_tie(d, k, L) for d, k in zip(dists, ks) if k > 0))
    with num_threads(threads):
        out = csrc.facility_location_greedy_batch(dists, ks, L, lazy)
    assert len(out) == len(sizes)
    for d, k, (picks, objective, weights) in zip(dists, ks, out):
        ref = R.facility_location_greedy(d, k, L, lazy=False)
        assert picks.tolist() == ref[0].tolist()
        assert objective.dtype == dtype and weights.dtype == dtype
        torch.testing.assert_close(objective, ref[1], **tol(dtype))
        assert torch.equal(weights, ref[2])
        single = csrc.facility_location_greedy(d, k, L, lazy)
        assert torch.equal(objective, single[1])


def test_facility_location_batch_many_blocks_in_parallel_equal_one_by_one():
    """Twelve blocks on two threads (the parallel path), largest first, non-contiguous ones among
    them, ties included: bit for bit what one call per block gives."""
    sizes = [1, 300, 2, 57, 0, 140, 5, 300, 33, 1, 64, 9]
    dists = [random_dist(n, 2, torch.float32, n) for n in sizes]
    pts = torch.randint(0, 4, (20, 2)).double().repeat(3, 1)
    dists[3] = torch.cdist(pts[:57], pts[:57], p=1).float()  # exact ties
    dists[5] = noncontig(dists[5])
    ks = [1, 30, 2, 20, 0, 14, 3, 300, 10, 0, 64, 9]
    with num_threads(2):
        out = csrc.facility_location_greedy_batch(dists, ks, None, True)
    for d, k, got in zip(dists, ks, out):
        single = csrc.facility_location_greedy(d, k, None, True)
        for a, b in zip(got, single):
            assert torch.equal(a, b)
        assert got[0].tolist() == R.facility_location_greedy(d, k)[0].tolist()


def test_facility_location_batch_arguments():
    d = random_dist(6, 2, torch.float64, 0)
    assert csrc.facility_location_greedy_batch([], []) == []
    with pytest.raises(ValueError, match="ks"):
        csrc.facility_location_greedy_batch([d, d], [1])
    with pytest.raises(ValueError, match="ks: block 1"):
        csrc.facility_location_greedy_batch([d, d], [1, 7])
    with pytest.raises(ValueError, match="ks"):
        csrc.facility_location_greedy_batch([d], [-1])
    with pytest.raises(ValueError, match="dists: block 1"):
        csrc.facility_location_greedy_batch([d, d.float()], [1, 1])
    with pytest.raises(ValueError, match="dists: block 0"):
        csrc.facility_location_greedy_batch([d[0]], [1])
    with pytest.raises(RuntimeError, match="dists"):
        torch.ops.lcmat.facility_location_greedy_batch([d.int()], [1], None, True)
    with pytest.raises(RuntimeError, match="ks"):
        torch.ops.lcmat.facility_location_greedy_batch([d], [1, 2], None, True)


def test_ops_facility_location_batch_dispatch():
    from lcmat import ops
    dists = [random_dist(n, 3, torch.float32, n) for n in (40, 9, 25)]
    ks = [4, 2, 5]
    auto = ops.facility_location_greedy_batch(dists, ks)
    ref = ops.facility_location_greedy_batch(dists, ks, backend="reference")
    assert [p.tolist() for p, _, _ in auto] == [p.tolist() for p, _, _ in ref]
    assert ops.resolve("facility_location_greedy_batch", None, dists[0])[0] == "cpu"
    assert ops.facility_location_greedy_batch([], []) == []
    assert ops.parallel_blocks("cpu") == torch.get_num_threads()


# ---- sinkhorn ---------------------------------------------------------------------------------

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


@given(n=st.integers(1, 30), m=st.integers(1, 12), reg=st.sampled_from([0.05, 0.3]),
       check_every=st.sampled_from([1, 3]), zero_mass=st.booleans(), nc=st.booleans(),
       dtype=DTYPES, seed=st.integers(0, 99))
def test_sinkhorn_dense(n, m, reg, check_every, zero_mass, nc, dtype, seed):
    a, b, M = ot_problem(n, m, dtype, seed, zero_mass)
    tol_ = 1e-7 if dtype == torch.float64 else 1e-4
    out = csrc.sinkhorn_log(maybe(a, nc), b, maybe(M, nc), reg, 300, tol_, check_every)
    assert out[2].dim() == 0 and out[3].dim() == 0 and out[0].dtype == dtype
    ref = R.sinkhorn_log(a.double(), b.double(), M.double(), reg, 300, tol_, check_every)
    if dtype == torch.float64:
        assert_potentials_close(out, ref, dtype)
    else:
        assert_potentials_close(out[:2] + (None, None), ref[:2] + (None, None), dtype)
    if zero_mass and n > 1:
        assert out[0][0] == -math.inf


@given(B=st.integers(1, 4), n=st.integers(1, 20), m=st.integers(1, 9), dtype=DTYPES, seed=st.integers(0, 99))
def test_sinkhorn_dense_batched(B, n, m, dtype, seed):
    problems = [ot_problem(n, m, torch.float64, seed + p) for p in range(B)]
    a, b, M = (torch.stack([p[i] for p in problems]) for i in range(3))
    M = M * torch.linspace(1, 3, B, dtype=torch.float64)[:, None, None]  # different convergence speeds
    out = csrc.sinkhorn_log(a.to(dtype), b.to(dtype), M.to(dtype), 0.1, 200, 1e-7 if dtype == torch.float64 else 1e-4)
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


SIZES = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 8)), min_size=1, max_size=6)


@given(sizes=SIZES, from_features=st.booleans(), check_every=st.sampled_from([1, 2]),
       dtype=DTYPES, seed=st.integers(0, 99))
def test_sinkhorn_ragged(sizes, from_features, check_every, dtype, seed):
    a, b, row_off, col_off, cost, x, y = ragged_problem(sizes, 3, dtype, seed)
    tol_ = 1e-7 if dtype == torch.float64 else 1e-4
    kw = dict(x=x, y=y) if from_features else dict(cost=cost)
    ref_kw = dict(x=x.double(), y=y.double()) if from_features else dict(cost=cost.double())
    out = csrc.sinkhorn_log_ragged(a, b, torch.tensor(row_off), col_off, 1.0, max_iter=300, tol=tol_,
                                   check_every=check_every, **kw)
    ref = R.sinkhorn_log_ragged(a.double(), b.double(), row_off, col_off, 1.0, max_iter=300, tol=tol_,
                                check_every=check_every, **ref_kw)
    assert out[0].shape == a.shape and out[2].shape == (len(sizes),)
    assert_potentials_close(out, ref, dtype)
    for p, (n_p, m_p) in enumerate(sizes):
        if n_p == 0 or m_p == 0:
            assert out[2][p] == 0 and out[3][p] == 0


def test_sinkhorn_ragged_very_different_sizes():
    sizes = [(700, 30), (0, 5), (3, 1), (1, 1), (50, 0), (120, 9), (2, 40)]
    a, b, row_off, col_off, cost, x, y = ragged_problem(sizes, 4, torch.float64, 7)
    for kw in (dict(cost=cost), dict(x=x, y=y)):
        out = csrc.sinkhorn_log_ragged(a, b, row_off, col_off, 2.0, max_iter=500, tol=1e-9, **kw)
        ref = R.sinkhorn_log_ragged(a, b, row_off, col_off, 2.0, max_iter=500, tol=1e-9, **kw)
        assert_potentials_close(out, ref, torch.float64)


def test_sinkhorn_arguments():
    a, b, M = ot_problem(5, 3, torch.float64, 0)
    with pytest.raises(ValueError, match="cost"):
        csrc.sinkhorn_log_ragged(a, b, [0, 5], [0, 3], 1.0)
    with pytest.raises(RuntimeError, match="reg"):
        csrc.sinkhorn_log(a, b, M, 0.0)
    with pytest.raises(ValueError, match="row_offsets"):  # checked as the reference checks it
        csrc.sinkhorn_log_ragged(a, b, [0, 6], [0, 3], 1.0, cost=M.flatten())
    f, g, n_iter, err = csrc.sinkhorn_log(a, b, M, 1.0, max_iter=0)
    assert n_iter == 0 and err == math.inf and torch.all(f == 0)


# ---- fdmat ------------------------------------------------------------------------------------

@given(N=st.integers(1, 3000), D=st.integers(1, 40), beta=st.sampled_from([0.5, 1.0, 0.25, 2.0]),
       dtype=DTYPES, nc=st.booleans(), seed=st.integers(0, 99))
def test_fdmat_transform(N, D, beta, dtype, nc, seed):
    """The same ATen steps as the reference with the mean's float64 sums done by cpu::column_sums
    (fixed blocks of 1,024 rows): equal to the reference up to the sums' rounding."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, D, generator=g, dtype=torch.float64).to(dtype)
    x[:, 0] = 0.0  # a dead unit: (0 + eps)^beta
    out = csrc.fdmat_transform(maybe(x, nc), beta)
    assert out.dtype == dtype and out.shape == (N, D)
    torch.testing.assert_close(out, R.fdmat_transform(x, beta), rtol=1e-6 if dtype == torch.float32 else 1e-13,
                               atol=1e-6 if dtype == torch.float32 else 1e-13)


@pytest.mark.parametrize("N", [1, 7, 8, 9, 100])
@pytest.mark.parametrize("C,D", [(1, 32), (31, 40), (32, 32), (33, 64), (70, 33)])
def test_prototype_cost_float32_exact_on_integer_inputs(N, C, D):
    """Small integers make x mu^T exact in float32 in ATen's GEMM and in the AVX-512 kernel
    (used for float32 with at least 32 columns) alike: the costs must equal the float64
    reference bit for bit, whatever the row block, panel or ragged edge."""
    g = torch.Generator().manual_seed(N * 100 + C + D)
    x = torch.randint(-3, 4, (N, D), generator=g).float()
    mu = torch.randint(-3, 4, (C, D), generator=g).float()
    assert torch.equal(csrc.prototype_cost(x, mu), R.prototype_cost(x.double(), mu.double()).float())


def test_fdmat_transform_thread_count_independent_and_ops_dispatch():
    from lcmat import ops
    x = torch.rand(5000, 16, generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = csrc.fdmat_transform(x, 0.5)
        torch.set_num_threads(2)
        two = csrc.fdmat_transform(x, 0.5)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert ops.resolve("fdmat_transform", None, x)[0] == "cpu"
    assert torch.equal(ops.fdmat_transform(x, 0.5), one)
    with pytest.raises(RuntimeError, match="features"):
        csrc.fdmat_transform(x[0], 0.5)


@given(N=st.integers(0, 50), C=st.integers(1, 9), D=st.integers(1, 8), dtype=DTYPES,
       nc=st.booleans(), seed=st.integers(0, 99))
def test_prototype_cost_and_scores(N, C, D, dtype, nc, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    mu = torch.randn(C, D, generator=g, dtype=torch.float64)
    M = csrc.prototype_cost(maybe(x.to(dtype), nc), maybe(mu.to(dtype), nc))
    M_ref = R.prototype_cost(x, mu)
    torch.testing.assert_close(M.double(), M_ref, rtol=1e-4 if dtype == torch.float32 else 1e-10,
                               atol=1e-4 if dtype == torch.float32 else 1e-10)
    f = torch.randn(N, generator=g, dtype=torch.float64)
    gg = torch.randn(C, generator=g, dtype=torch.float64)
    s = csrc.fdmat_scores(maybe(M_ref.to(dtype), nc), f.to(dtype), gg.to(dtype), 0.7)
    torch.testing.assert_close(s.double(), R.fdmat_scores(M_ref, f, gg, 0.7), **tol(dtype))


@pytest.mark.parametrize("N,C", [(5000, 3), (1400, 10), (300, 63), (300, 64), (70, 200), (1, 1), (0, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fdmat_scores_short_and_long_rows(N, C, dtype):
    """Rows under 64 entries go in chunks of about 4,096 entries (several chunks and a ragged
    last one here), longer rows one by one."""
    g = torch.Generator().manual_seed(N + C)
    M = 4 * torch.rand(N, C, generator=g, dtype=torch.float64)
    f, gg = torch.randn(N, generator=g, dtype=torch.float64), torch.randn(C, generator=g, dtype=torch.float64)
    s = csrc.fdmat_scores(M.to(dtype), f.to(dtype), gg.to(dtype), 0.5)
    assert s.shape == (N,) and s.dtype == dtype
    torch.testing.assert_close(s.double(), R.fdmat_scores(M, f, gg, 0.5), **tol(dtype))


# ---- dispatch and half precision --------------------------------------------------------------

def _op_samples():
    """(op name, arguments) for every op of torch.ops.lcmat, small float32 and float64 inputs."""
    samples = []
    for dtype in (torch.float32, torch.float64):
        H, Z, y, s = last_layer_inputs(13, 4, 6, dtype, 0)
        e, q = R.last_layer_factors(Z, y)
        coords = torch.tensor([0, 5, 11, 27])
        dist = random_dist(13, 3, dtype, 0)
        a, b, M = torch.ones(13, dtype=dtype), torch.full((5,), 13 / 5, dtype=dtype), torch.rand(13, 5, dtype=dtype)
        x, mu = torch.rand(13, 6, dtype=dtype), torch.rand(5, 6, dtype=dtype)
        samples += [
            ("last_layer_factors", (Z, y)),
            ("last_layer_grad_norms", (H, Z, y, s)),
            ("curvature_moments", (H, q, s.double())),
            ("gradient_distance", (H, e, None)),
            ("pairwise_l1", (H, None)),
            ("pairwise_l1", (H, H[:4])),
            ("hessian_diag_coords", (H, q, coords, s)),
            ("lcmat_distance", (H, e, q, coords, 0.5, None)),
            ("facility_location_greedy", (dist, 4, None, True)),
            ("facility_location_greedy_batch", ([dist, dist[:6, :6]], [4, 2], None, True)),
            ("sinkhorn_log", (a, b, M, 0.5, 50, 1e-6, 1)),
            ("sinkhorn_log", (a.repeat(2, 1), b.repeat(2, 1), M.repeat(2, 1, 1), 0.5, 50, 1e-6, 1)),
            ("sinkhorn_log_ragged", (a, b, [0, 6, 13], [0, 2, 5], 0.5, torch.rand(6 * 2 + 7 * 3, dtype=dtype),
                                     None, None, 50, 1e-6, 1)),
            ("sinkhorn_log_ragged", (a, b, [0, 6, 13], [0, 2, 5], 0.5, None, x, mu, 50, 1e-6, 1)),
            ("fdmat_transform", (x, 0.5, 1e-6)),
            ("prototype_cost", (x, mu)),
            ("fdmat_scores", (M, torch.rand(13, dtype=dtype), torch.rand(5, dtype=dtype), 0.5)),
            ("graph_cut_greedy", (x @ x.T, 4, 1.0, True)),
            ("log_determinant_greedy", (x @ x.T, 4, 1.0, False)),
            ("sinkhorn_plan", (torch.rand(13, dtype=dtype), torch.rand(5, dtype=dtype), M, 0.5)),
            ("sinkhorn_plan", (torch.rand(2, 13, dtype=dtype), torch.rand(2, 5, dtype=dtype), M.repeat(2, 1, 1), 0.5)),
            ("linear_grad_norms", (torch.rand(3, 4, 6, dtype=dtype), torch.rand(3, 4, 5, dtype=dtype))),
            ("linear_grad_norms", (torch.rand(3, 40, 2, dtype=dtype), torch.rand(3, 40, 3, dtype=dtype))),
            ("gradient_moments", (H, Z, y)),
            ("gradient_moments_backward", (torch.rand(4, 28, dtype=dtype), torch.rand(4, 28, dtype=dtype), H, Z, y,
                                           R.gradient_moments(H, Z, y)[0])),
        ]
    return samples


def test_every_op_has_a_sample_for_opcheck():
    registered = {op.split("::")[1] for op in torch._C._dispatch_get_all_op_names() if op.startswith("lcmat::")}
    assert {name for name, _ in _op_samples()} == registered


@pytest.mark.parametrize("name,args", _op_samples(), ids=lambda v: v if isinstance(v, str) else "")
def test_op_registration_and_fake_shapes(name, args):
    """torch.library.opcheck: the schema, and the fake kernel (what torch.compile traces with)
    gives the real kernel's shapes and dtypes, static and dynamic."""
    torch.library.opcheck(getattr(torch.ops.lcmat, name).default, args)


def test_torch_compile_fullgraph_matches_eager():
    """A selection step under torch.compile (no graph break): factors, distances, greedy."""
    def step(h, z, y):
        e, q = csrc.last_layer_factors(z, y)
        dist = csrc.lcmat_distance(h, e, q, torch.tensor([1, 3, 8]), 0.5)
        picks, objective, _ = csrc.facility_location_greedy(dist, 5, None, True)
        return dist, picks, objective
    H, Z, y, _ = last_layer_inputs(40, 3, 7, torch.float32, 1)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    for got, want in zip(compiled(H, Z, y), step(H, Z, y)):
        assert torch.equal(got, want)


def test_ops_selects_cpu_backend():
    import lcmat.ops as ops
    a = torch.randn(4, 3)
    assert ops.resolve("pairwise_l1", None, a)[0] == "cpu"
    torch.testing.assert_close(ops.pairwise_l1(a, backend="cpu"), R.pairwise_l1(a))


def test_bfloat16_runs_in_float32():
    H, e, q, _ = distance_inputs(9, 3, 4, torch.float64, 2)
    out = csrc.gradient_distance(H.bfloat16(), e.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), R.gradient_distance(H, e), rtol=0.05, atol=0.05)


def test_missing_extension_warns_once_and_ops_fall_back():
    import subprocess
    import sys
    code = ("import sys, warnings; sys.modules['lcmat._C'] = None; warnings.simplefilter('always')\n"
            "import torch, lcmat.csrc as C, lcmat.ops as ops\n"
            "print(C.available('cpu'), ops.resolve('pairwise_l1', None, torch.zeros(2, 2))[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "reference"]
    assert out.stderr.count("did not load") == 1


# ---- CUDA ---------------------------------------------------------------------------------------

cuda = pytest.mark.gpu


def _need_cuda_build():
    if not csrc.available("cuda"):
        pytest.skip("lcmat._C was built without CUDA")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_last_layer_and_distance(dtype):
    _need_cuda_build()
    H, Z, y, s = last_layer_inputs(301, 10, 37, dtype, 0)
    dev = torch.device("cuda")
    for got, want in zip(csrc.last_layer_factors(Z.to(dev), y.to(dev)), R.last_layer_factors(Z, y)):
        torch.testing.assert_close(got.cpu(), want, **tol(dtype))
    for got, want in zip(csrc.last_layer_grad_norms(H.to(dev), Z.to(dev), y.to(dev), s.to(dev)),
                         R.last_layer_grad_norms(H, Z, y, s)):
        torch.testing.assert_close(got.cpu(), want, **tol(dtype))
    e, q = R.last_layer_factors(Z, y)
    coords = R.top_variance_coords(H, q, 40, s)
    assert algorithms.top_variance_coords(H.to(dev), q.to(dev), 40, s.to(dev), backend="cuda").tolist() == coords.tolist()
    ref = R.lcmat_distance(H.double(), e.double(), q.double(), coords, 0.3, s.double())
    got = csrc.lcmat_distance(H.to(dev), e.to(dev), q.to(dev), coords.to(dev), 0.3, s.to(dev))
    torch.testing.assert_close(got.cpu().double(), ref, **distance_tol(dtype, ref))
    a = torch.randn(300, 17, dtype=dtype)
    torch.testing.assert_close(csrc.pairwise_l1(a.to(dev)).cpu(), R.pairwise_l1(a), **tol(dtype))
    torch.testing.assert_close(csrc.pairwise_l1(a.to(dev), a[:130].to(dev)).cpu(), R.pairwise_l1(a, a[:130]),
                               **tol(dtype))


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_facility_location(dtype):
    _need_cuda_build()
    dist = random_dist(700, 3, dtype, 4)
    ref = R.facility_location_greedy(dist, 60, lazy=False)
    picks, objective, weights = csrc.facility_location_greedy(dist.cuda(), 60)
    assert picks.cpu().tolist() == ref[0].tolist()
    torch.testing.assert_close(objective.cpu(), ref[1], **tol(dtype))
    assert torch.equal(weights.cpu(), ref[2])
    pts = torch.randint(0, 5, (40, 2)).double().repeat(3, 1)
    dist = torch.cdist(pts, pts, p=1).to(dtype)
    assert csrc.facility_location_greedy(dist.cuda(), 30)[0].cpu().tolist() == \
        R.facility_location_greedy(dist, 30)[0].tolist()


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_facility_location_batch(dtype):
    _need_cuda_build()
    dists = [random_dist(n, 3, dtype, n) for n in (700, 1, 0, 90)]
    ks = [60, 1, 0, 9]
    out = csrc.facility_location_greedy_batch([d.cuda() for d in dists], ks)
    for d, k, (picks, objective, weights) in zip(dists, ks, out):
        ref = R.facility_location_greedy(d, k, lazy=False)
        assert picks.cpu().tolist() == ref[0].tolist()
        torch.testing.assert_close(objective.cpu(), ref[1], **tol(dtype))
        assert torch.equal(weights.cpu(), ref[2])


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_sinkhorn_and_fdmat(dtype):
    _need_cuda_build()
    a, b, M = ot_problem(500, 37, dtype, 1, zero_mass=True)
    tol_ = 1e-7 if dtype == torch.float64 else 1e-4
    out = csrc.sinkhorn_log(a.cuda(), b.cuda(), M.cuda(), 0.1, 500, tol_)
    ref = R.sinkhorn_log(a.double(), b.double(), M.double(), 0.1, 500, tol_)
    assert_potentials_close(tuple(o.cpu() for o in out), ref, dtype) if dtype == torch.float64 else \
        assert_potentials_close(tuple(o.cpu() for o in out[:2]) + (None, None), ref[:2] + (None, None), dtype)
    sizes = [(300, 20), (0, 3), (5, 1), (40, 0), (90, 9)]
    a, b, row_off, col_off, cost, x, y = ragged_problem(sizes, 4, dtype, 3)
    for kw in (dict(cost=cost), dict(x=x, y=y)):
        ref = R.sinkhorn_log_ragged(a.double(), b.double(), row_off, col_off, 2.0, max_iter=400, tol=tol_,
                                    **{k: v.double() for k, v in kw.items()})
        out = csrc.sinkhorn_log_ragged(a.cuda(), b.cuda(), row_off, col_off, 2.0, max_iter=400, tol=tol_,
                                       **{k: v.cuda() for k, v in kw.items()})
        out = tuple(o.cpu() for o in out)
        if dtype == torch.float64:
            assert_potentials_close(out, ref, dtype)
        else:
            assert_potentials_close(out[:2] + (None, None), ref[:2] + (None, None), dtype)
    x = torch.randn(400, 16, dtype=dtype)
    mu = torch.randn(10, 16, dtype=dtype)
    M = csrc.prototype_cost(x.cuda(), mu.cuda())
    torch.testing.assert_close(M.cpu(), R.prototype_cost(x, mu), rtol=1e-4, atol=1e-4)
    f, g = torch.randn(400, dtype=dtype), torch.randn(10, dtype=dtype)
    torch.testing.assert_close(csrc.fdmat_scores(M, f.cuda(), g.cuda(), 0.7).cpu(),
                               R.fdmat_scores(M.cpu(), f, g, 0.7), **tol(dtype))


@cuda
def test_cuda_ops_reject_a_cpu_tensor_beside_cuda_ones():
    """The dispatcher sends an op with any CUDA argument to its CUDA kernel: a CPU tensor beside
    CUDA ones is a ValueError naming it, never a host pointer handed to a kernel."""
    _need_cuda_build()
    H, Z, y, s = last_layer_inputs(20, 3, 5, torch.float32, 0)
    e, q = R.last_layer_factors(Z, y)
    dev = torch.device("cuda")
    with pytest.raises(ValueError, match="embeddings: must be on cuda"):
        csrc.last_layer_grad_norms(H, Z.to(dev), y.to(dev))
    with pytest.raises(ValueError, match="scale: must be on cuda"):
        csrc.last_layer_grad_norms(H.to(dev), Z.to(dev), y.to(dev), s)
    with pytest.raises(ValueError, match="embeddings: must be on cuda"):
        csrc.gradient_distance(H, e.to(dev))
    with pytest.raises(ValueError, match="q: must be on cuda"):
        csrc.lcmat_distance(H.to(dev), e.to(dev), q, torch.tensor([0, 4]), 0.5)
    with pytest.raises(ValueError, match="b: must be on cuda"):
        csrc.pairwise_l1(H.to(dev), H)
    with pytest.raises(ValueError, match="prototypes: must be on cuda"):
        csrc.prototype_cost(H.to(dev), H[:3])
    with pytest.raises(ValueError, match="f: must be on cuda"):
        csrc.fdmat_scores(Z.abs().to(dev), torch.zeros(20), torch.zeros(3, device=dev), 0.5)
    a, b = torch.full((20,), 0.05), torch.full((3,), 1 / 3)
    with pytest.raises(ValueError, match="a: must be on cuda"):
        csrc.sinkhorn_log(a, b.to(dev), Z.abs().to(dev), 0.5)


@cuda
def test_cuda_hessian_coords_without_embedding_dimensions():
    """D = 0: every coordinate is a bias one (the kernel never divides by D)."""
    _need_cuda_build()
    _, Z, y, _ = last_layer_inputs(9, 4, 3, torch.float64, 1)
    _, q = R.last_layer_factors(Z, y)
    H0 = torch.zeros(9, 0, dtype=torch.float64)
    coords = torch.tensor([0, 3, 1])
    got = csrc.hessian_diag_coords(H0.cuda(), q.cuda(), coords.cuda())
    torch.testing.assert_close(got.cpu(), R.hessian_diag_coords(H0, q, coords))
