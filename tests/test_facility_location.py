"""Greedy facility location (facility_location_greedy and its batched form).

First the reference (lcmat.reference.facility_location) against a greedy written from the
objective itself,

    F(S) = sum_i max(0, max_{j in S} (L - D_ij)),

and against the exhaustive optimum over all subsets of size k. Integer-valued distance blocks make
every sum exact in float64 (and float32) so that ties are exact and the tie rule (lowest index
first) is tested strictly; asymmetric blocks catch a row/column mix-up (rows are covered,
columns are candidates). Then every backend (the `backend` fixture: cpu, triton, cuda) against
the reference's naive greedy: the same picks, exactly.
"""
import itertools
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import brute
import lcmat.reference as R
from lcmat import ops
from backends import kernels, maybe, noncontig, num_threads, only, tol
from lcmat.reference import facility_location_greedy, nearest_pick_counts

DTYPES = st.sampled_from([torch.float32, torch.float64])

# ---- the reference against the objective and the optimum ------------------------------------

APPROX = 1.0 - 1.0 / math.e


def integer_block(n, seed, high=6, symmetric=False, dtype=torch.float64):
    """Random integer distances in [0, high), zero diagonal: many exact ties."""
    gen = brute.generator(seed)
    dist = torch.randint(0, high, (n, n), generator=gen).to(dtype)
    if symmetric:
        dist = torch.triu(dist, 1) + torch.triu(dist, 1).T
    return dist.fill_diagonal_(0.0)


def euclidean_block(n, seed, duplicates=0, dtype=torch.float64):
    """Distances between random points in the plane, the first `duplicates` points repeated at
    the end (exact ties: identical rows and columns)."""
    gen = brute.generator(seed)
    x = torch.randn(n - duplicates, 2, generator=gen, dtype=torch.float64)
    x = torch.cat([x, x[torch.arange(duplicates) % (n - duplicates)]])
    return brute.pairwise_euclidean(x).to(dtype)


def check_against_brute(dist, k, L, lazy):
    picks, objective, weights = facility_location_greedy(dist, k, L=L, lazy=lazy)
    expected_picks, expected_objective = brute.greedy_facility_location(dist, k, L)
    assert picks.dtype == torch.long and picks.shape == (k,)
    assert picks.tolist() == expected_picks
    assert objective.dtype == dist.dtype and objective.shape == (k,)
    assert objective.tolist() == pytest.approx(expected_objective, rel=1e-12, abs=1e-12)
    assert weights.dtype == dist.dtype and weights.shape == (k,)
    assert weights.tolist() == brute.nearest_pick_counts(dist, expected_picks)
    return picks, objective


L_CHOICES = [None, 10, 2.5, 1]  # 1 and 2.5 clip most of an integer block in [0, 6)


@pytest.mark.parametrize("lazy", [False, True])
@given(n=st.integers(1, 10), seed=st.integers(0, 2**31 - 1), symmetric=st.booleans(),
       L=st.sampled_from(L_CHOICES), data=st.data())
def test_greedy_integer_blocks(lazy, n, seed, symmetric, L, data):
    k = data.draw(st.integers(0, n))
    check_against_brute(integer_block(n, seed, symmetric=symmetric), k, L, lazy)


def check_greedy_up_to_rounding(dist, k, L, lazy, rel=1e-12):
    """Real-valued blocks: mathematically tied gains of different columns may be rounded either
    way (sums in different orders), so each pick must be a greedy maximiser up to `rel`, and
    exact ties between identical columns (duplicated points) must go to the lowest index."""
    picks, objective, weights = facility_location_greedy(dist, k, L=L, lazy=lazy)
    L_value = brute.default_L(dist) if L is None else L
    assert picks.shape == objective.shape == weights.shape == (k,)
    rows = brute.exact_rows(dist)
    chosen = []
    for p in picks.tolist():
        values = {j: float(brute.facility_value(rows, chosen + [j], L_value))
                  for j in range(dist.shape[0]) if j not in chosen}
        best = max(values.values())
        assert p in values and values[p] >= best - rel * max(1.0, best)
        for j in values:
            if j < p:
                assert not torch.equal(dist[:, j], dist[:, p]), "identical column, lower index"
        chosen.append(p)
        assert float(objective[len(chosen) - 1]) == pytest.approx(values[p], rel=rel, abs=rel)
    assert weights.tolist() == brute.nearest_pick_counts(dist, chosen)


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("L", [None, 10, 0.7])
@given(n=st.integers(2, 10), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_greedy_euclidean_with_duplicates(lazy, L, n, seed, data):
    duplicates = data.draw(st.integers(0, n // 2))
    k = data.draw(st.integers(0, n))
    check_greedy_up_to_rounding(euclidean_block(n, seed, duplicates), k, L, lazy)


def test_greedy_euclidean_without_ties_matches_brute_exactly():
    """Generic points (no duplicates, no symmetric coincidences at these seeds): the strict
    comparison holds for both variants, including the exact ties of small L (seeds 3 and 5:
    every isolated point gains exactly L, the lowest index must win)."""
    for seed in range(6):
        dist = euclidean_block(9, seed)
        for L in (None, 10, 0.7):
            for lazy in (False, True):
                check_against_brute(dist, 9, L, lazy)


@pytest.mark.parametrize("L", [None, 10, 2.5, 1])
@given(n=st.integers(1, 10), seed=st.integers(0, 2**31 - 1), symmetric=st.booleans())
def test_lazy_equals_naive_on_exact_blocks(L, n, seed, symmetric):
    dist = integer_block(n, seed, symmetric=symmetric)
    naive = facility_location_greedy(dist, n, L=L)
    lazy = facility_location_greedy(dist, n, L=L, lazy=True)
    for x, y in zip(naive, lazy):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_lazy_equals_naive_on_rounded_tie():
    # Points x0, x1, x2 (x3) with x4 = x0, x5 = x1, x6 = x2: columns 0 and 2 have the same
    # multiset of similarities, gains 1.9228658252000272 vs ...275 after rounding.
    dist = euclidean_block(7, seed=231, duplicates=3)
    naive = facility_location_greedy(dist, 1, L=0.7)[0].tolist()
    lazy = facility_location_greedy(dist, 1, L=0.7, lazy=True)[0].tolist()
    assert naive == lazy


@pytest.mark.parametrize("lazy", [False, True])
def test_greedy_all_ties(lazy):
    """Every point identical: all gains equal at every step, picks are 0, 1, 2, ...; the first
    pick covers everything, so its weight is n and later ones get nothing."""
    dist = torch.zeros(6, 6, dtype=torch.float64)
    picks, objective, weights = facility_location_greedy(dist, 4, L=3.0, lazy=lazy)
    assert picks.tolist() == [0, 1, 2, 3]
    assert objective.tolist() == [18.0] * 4
    assert weights.tolist() == [6.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("lazy", [False, True])
def test_greedy_float32_integer_block(lazy):
    dist = integer_block(9, seed=21, dtype=torch.float32)
    for k in range(10):
        for L in L_CHOICES:
            check_against_brute(dist, k, L, lazy)


@pytest.mark.parametrize("lazy", [False, True])
def test_greedy_non_contiguous(lazy):
    base = integer_block(8, seed=5)
    dist = base.T.contiguous().T  # same values, column-major storage
    assert not dist.is_contiguous()
    check_against_brute(dist, 5, None, lazy)
    check_against_brute(base.T, 5, 3, lazy)  # the transposed block is a different problem


def test_default_L_is_max_distance():
    """L = None means L = max_ij D_ij: the same picks and objective as passing it explicitly,
    and the first pick is the medoid (smallest row-sum of distances down its column)."""
    dist = euclidean_block(9, seed=3)
    for lazy in (False, True):
        a = facility_location_greedy(dist, 5, lazy=lazy)
        b = facility_location_greedy(dist, 5, L=float(dist.max()), lazy=lazy)
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
        assert int(a[0][0]) == int(dist.sum(0).argmin())


@pytest.mark.parametrize("lazy", [False, True])
@given(n=st.integers(1, 10), seed=st.integers(0, 2**31 - 1), integer=st.booleans(),
       L=st.sampled_from([None, 10, 2.5]))
def test_greedy_within_1_minus_1_over_e_of_optimum(lazy, n, seed, integer, L):
    dist = integer_block(n, seed) if integer else euclidean_block(n, seed)
    L_value = brute.default_L(dist) if L is None else L
    _, objective, _ = facility_location_greedy(dist, n, L=L, lazy=lazy)
    rows = brute.exact_rows(dist)
    for k in range(1, n + 1):
        optimum = float(max(brute.facility_value(rows, s, L_value)
                            for s in itertools.combinations(range(n), k)))
        assert float(objective[k - 1]) <= optimum * (1 + 1e-12)
        assert float(objective[k - 1]) >= APPROX * optimum * (1 - 1e-12)


def test_objective_is_nondecreasing_and_saturates():
    dist = euclidean_block(10, seed=8)
    _, objective, weights = facility_location_greedy(dist, 10, L=10)
    assert bool((objective[1:] >= objective[:-1]).all())
    # With every point selected each row is its own nearest: F = n L (zero diagonal).
    assert float(objective[-1]) == pytest.approx(100.0, rel=1e-12)
    assert weights.tolist() == [1.0] * 10


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("k", [-1, 4, 100])
def test_k_out_of_range(lazy, k):
    with pytest.raises(ValueError, match=r"\bk\b"):
        facility_location_greedy(integer_block(3, seed=0), k, lazy=lazy)


@pytest.mark.parametrize("lazy", [False, True])
def test_empty_block_with_given_L(lazy):
    picks, objective, weights = facility_location_greedy(torch.zeros(0, 0), 0, L=1.0, lazy=lazy)
    assert picks.shape == objective.shape == weights.shape == (0,)


def test_empty_block_default_L():
    picks, objective, weights = facility_location_greedy(torch.zeros(0, 0), 0)
    assert picks.shape == objective.shape == weights.shape == (0,)


@given(n=st.integers(1, 10), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_nearest_pick_counts(n, seed, data):
    dist = integer_block(n, seed, high=3)  # many ties between picks
    picks = data.draw(st.permutations(range(n)))[:data.draw(st.integers(0, n))]
    got = nearest_pick_counts(dist, torch.tensor(picks, dtype=torch.long))
    assert got.shape == (len(picks),)
    assert got.tolist() == brute.nearest_pick_counts(dist, picks)
    if picks:
        assert float(got.sum()) == n


# ---- every backend against the reference -----------------------------------------------------

# The compiled backend on CPU tensors: the reference's naive greedy picks exactly (near ties, where
# float32 rounding may flip a pick, skipped by has_near_tie), on every block shape and symmetry
# case its kernels distinguish, and the batched op against one call per block.

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


@only("cpu")
@given(n=st.integers(1, 60), D=st.integers(2, 5), frac=st.floats(0, 1), dtype=DTYPES,
       givenL=st.booleans(), nc=st.booleans(), seed=st.integers(0, 999))
def test_facility_location_matches_naive_reference(backend, n, D, frac, dtype, givenL, nc, seed):
    kern = kernels(backend)
    dist = random_dist(n, D, dtype, seed)
    k = round(frac * n)
    L = float(dist.max()) * 0.7 if givenL else None
    assume(not has_near_tie(dist, k, L))
    ref = R.facility_location_greedy(dist, k, L, lazy=False)
    for lazy in (True, False):
        picks, objective, weights = kern.facility_location_greedy(maybe(dist, nc), k, L, lazy)
        assert picks.tolist() == ref[0].tolist()
        assert objective.dtype == dtype and weights.dtype == dtype
        torch.testing.assert_close(objective, ref[1], **tol(dtype))
        assert torch.equal(weights, ref[2])


@only("cpu")
@given(n=st.integers(2, 40), reps=st.integers(2, 4), seed=st.integers(0, 999), dtype=DTYPES)
def test_facility_location_exact_ties_lowest_index(backend, n, reps, seed, dtype):
    kern = kernels(backend)
    # integer points duplicated `reps` times, L1 distances: exact in floating point, exact ties
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 6, (n, 2), generator=g).double()
    pts = base.repeat(reps, 1)[torch.randperm(n * reps, generator=g)]
    dist = torch.cdist(pts, pts, p=1).to(dtype)
    k = min(len(pts), n)
    ref = R.facility_location_greedy(dist, k, lazy=False)
    for lazy in (True, False):
        picks, objective, weights = kern.facility_location_greedy(dist, k, None, lazy)
        assert picks.tolist() == ref[0].tolist()
        assert torch.equal(weights, ref[2])


@only("cpu")
def test_facility_location_nearly_symmetric_block(backend):
    kern = kernels(backend)
    # entries below the diagonal break the symmetry (candidate 3 covers rows 4-149 at no
    # distance): the check, in tiles of 64, must see them, or column 3 is read as row 3
    dist = random_dist(150, 3, torch.float64, 4)
    broken = dist.clone()
    broken[4:, 3] = 0.0
    for d in (dist, broken):
        ref = R.facility_location_greedy(d, 20, lazy=False)
        picks, objective, weights = kern.facility_location_greedy(d, 20, None, True)
        assert picks.tolist() == ref[0].tolist()
        torch.testing.assert_close(objective, ref[1])
        assert torch.equal(weights, ref[2])
    assert kern.facility_location_greedy(broken, 20)[0][0] == 3 != kern.facility_location_greedy(dist, 20)[0][0]


@only("cpu")
@given(n=st.integers(2, 41), data=st.data(), dtype=DTYPES, seed=st.integers(0, 99))
def test_facility_location_one_broken_mirror_entry_anywhere(backend, n, data, dtype, seed):
    """One entry D_ij != D_ji, in a full 8 x 8 block, a diagonal block or the n mod 8 strip: the
    symmetry check must see it (else column j is read as row j and j's objective is wrong)."""
    kern = kernels(backend)
    i = data.draw(st.integers(0, n - 1))
    j = data.draw(st.integers(0, n - 1).filter(lambda v: v != i))
    dist = random_dist(n, 3, dtype, seed)
    dist[i, j] = 0.0  # j covers i at no distance, i does not cover j
    ref = R.facility_location_greedy(dist, n, lazy=False)
    picks, objective, weights = kern.facility_location_greedy(dist, n, None, True)
    assert picks.tolist() == ref[0].tolist()
    torch.testing.assert_close(objective, ref[1])
    assert torch.equal(weights, ref[2])


@only("cpu")
def test_facility_location_signed_zero_keeps_the_block_symmetric(backend):
    """-0 == +0: a mirror pair (+0, -0) keeps the block symmetric; the reference's result."""
    kern = kernels(backend)
    dist = random_dist(19, 3, torch.float32, 1)
    dist[2, 11], dist[11, 2] = 0.0, -0.0
    ref = R.facility_location_greedy(dist, 6, lazy=False)
    picks, objective, weights = kern.facility_location_greedy(dist, 6, None, True)
    assert picks.tolist() == ref[0].tolist()
    torch.testing.assert_close(objective, ref[1])
    assert torch.equal(weights, ref[2])


@only("cpu")
@pytest.mark.parametrize("n", [5, 21])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_facility_location_largest_entry_anywhere_sets_L(backend, n, dtype):
    """The paper mode's L = max D is read during the symmetry check: a largest mirror pair (or
    diagonal entry) at every position (full 8 x 8 blocks, diagonal blocks, the n mod 8 strip)
    must set it."""
    kern = kernels(backend)
    base = random_dist(n, 3, dtype, n)
    for i in range(n):
        for j in range(i, n):
            dist = base.clone()
            dist[i, j] = dist[j, i] = 3 * float(base.max()) + 1
            ref = R.facility_location_greedy(dist, 4, lazy=False)
            picks, objective, weights = kern.facility_location_greedy(dist, 4, None, True)
            assert picks.tolist() == ref[0].tolist(), (i, j)
            torch.testing.assert_close(objective, ref[1])
            assert torch.equal(weights, ref[2])


@only("cpu")
def test_facility_location_edges(backend):
    kern = kernels(backend)
    dist = random_dist(7, 2, torch.float64, 0)
    picks, objective, weights = kern.facility_location_greedy(dist, 0)
    assert picks.shape == (0,) and objective.shape == (0,) and weights.shape == (0,)
    picks, _, weights = kern.facility_location_greedy(dist, 7, lazy=True)
    assert sorted(picks.tolist()) == list(range(7)) and weights.sum() == 7
    with pytest.raises(ValueError, match="k"):
        kern.facility_location_greedy(dist, 8)
    with pytest.raises(ValueError, match="dist"):
        kern.facility_location_greedy(dist[0], 2)


@only("cpu")
@given(sizes=st.lists(st.integers(0, 70), max_size=7), frac=st.floats(0, 1), dtype=DTYPES,
       givenL=st.booleans(), lazy=st.booleans(), threads=st.sampled_from([1, 2, 3]), seed=st.integers(0, 999))
def test_facility_location_batch_matches_the_reference_per_block(backend, sizes, frac, dtype, givenL, lazy, threads, seed):
    """Blocks of very different sizes (empty, one sample, many): with more blocks than threads
    they run in parallel, one thread each; with fewer, in turn. Each block gets the reference's
    picks, and exactly what the one-block op gives it (the same code on one thread)."""
    kern = kernels(backend)
    dists = [random_dist(n, 3, dtype, seed + b) for b, n in enumerate(sizes)]
    ks = [round(frac * n) for n in sizes]
    L = 2.0 if givenL else None
    assume(not any(has_near_tie(d, k, L) for d, k in zip(dists, ks) if k > 0))
    with num_threads(threads):
        out = kern.facility_location_greedy_batch(dists, ks, L, lazy)
    assert len(out) == len(sizes)
    for d, k, (picks, objective, weights) in zip(dists, ks, out):
        ref = R.facility_location_greedy(d, k, L, lazy=False)
        assert picks.tolist() == ref[0].tolist()
        assert objective.dtype == dtype and weights.dtype == dtype
        torch.testing.assert_close(objective, ref[1], **tol(dtype))
        assert torch.equal(weights, ref[2])
        single = kern.facility_location_greedy(d, k, L, lazy)
        assert torch.equal(objective, single[1])


@only("cpu")
def test_facility_location_batch_many_blocks_in_parallel_equal_one_by_one(backend):
    """Twelve blocks on two threads (the parallel path), largest first, non-contiguous ones among
    them, ties included: bit for bit what one call per block gives."""
    kern = kernels(backend)
    sizes = [1, 300, 2, 57, 0, 140, 5, 300, 33, 1, 64, 9]
    dists = [random_dist(n, 2, torch.float32, n) for n in sizes]
    pts = torch.randint(0, 4, (20, 2)).double().repeat(3, 1)
    dists[3] = torch.cdist(pts[:57], pts[:57], p=1).float()  # exact ties
    dists[5] = noncontig(dists[5])
    ks = [1, 30, 2, 20, 0, 14, 3, 300, 10, 0, 64, 9]
    with num_threads(2):
        out = kern.facility_location_greedy_batch(dists, ks, None, True)
    for d, k, got in zip(dists, ks, out):
        single = kern.facility_location_greedy(d, k, None, True)
        for a, b in zip(got, single):
            assert torch.equal(a, b)
        assert got[0].tolist() == R.facility_location_greedy(d, k)[0].tolist()


@only("cpu")
def test_facility_location_batch_arguments(backend):
    kern = kernels(backend)
    d = random_dist(6, 2, torch.float64, 0)
    assert kern.facility_location_greedy_batch([], []) == []
    with pytest.raises(ValueError, match="ks"):
        kern.facility_location_greedy_batch([d, d], [1])
    with pytest.raises(ValueError, match="ks: block 1"):
        kern.facility_location_greedy_batch([d, d], [1, 7])
    with pytest.raises(ValueError, match="ks"):
        kern.facility_location_greedy_batch([d], [-1])
    with pytest.raises(ValueError, match="dists: block 1"):
        kern.facility_location_greedy_batch([d, d.float()], [1, 1])
    with pytest.raises(ValueError, match="dists: block 0"):
        kern.facility_location_greedy_batch([d[0]], [1])
    with pytest.raises(RuntimeError, match="dists"):
        torch.ops.lcmat.facility_location_greedy_batch([d.int()], [1], None, True)
    with pytest.raises(RuntimeError, match="ks"):
        torch.ops.lcmat.facility_location_greedy_batch([d], [1, 2], None, True)


@only("cpu")
def test_ops_facility_location_batch_dispatch(backend):
    from lcmat import ops
    dists = [random_dist(n, 3, torch.float32, n) for n in (40, 9, 25)]
    ks = [4, 2, 5]
    auto = ops.facility_location_greedy_batch(dists, ks)
    ref = ops.facility_location_greedy_batch(dists, ks, backend="reference")
    assert [p.tolist() for p, _, _ in auto] == [p.tolist() for p, _, _ in ref]
    assert ops.resolve("facility_location_greedy_batch", None, dists[0])[0] == "cpu"
    assert ops.facility_location_greedy_batch([], []) == []
    assert ops.parallel_blocks("cpu") == torch.get_num_threads()


# Triton (interpreted on the CPU, compiled on a GPU): 8 examples; these small cases run on the
# compiled cpu backend too.
def _dist(n, dim, dtype, seed, device):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    return torch.cdist(x, x).to(dtype).to(device)


def _assert_same(backend, dist, k, L, lazy=False):
    picks, objective, weights = kernels(backend).facility_location_greedy(dist, k, L, lazy)
    rp, ro, rw = R.facility_location_greedy(dist, k, L)
    assert picks.tolist() == rp.tolist()
    tol = 1e-5 if dist.dtype == torch.float32 else 1e-12
    torch.testing.assert_close(objective, ro, rtol=tol, atol=tol)
    assert torch.equal(weights, rw)
    assert objective.dtype == dist.dtype and picks.dtype == torch.long


@only("triton")
@settings(max_examples=8)
@given(n=st.integers(1, 35), frac=st.floats(0, 1), use_L=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 99))
def test_picks_match_reference(backend, device, n, frac, use_L, dtype, seed):
    k = min(n, round(frac * min(n, 6)))
    dist = _dist(n, 3, dtype, seed, device)
    _assert_same(backend, dist, k, 1.5 if use_L else None)


# Triton only: its fixed-point gains make these Euclidean near-ties exact; the compiled cpu kernel
# sums in floating point, where rounding may flip a near tie (its tests skip near ties instead).
@only("triton")
def test_exact_ties_lowest_index_wins(backend, device):
    # Every point twice: duplicates have equal gains, the lower index must win each time.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 2, generator=g, dtype=torch.float64)
    x = torch.cat([x, x])
    dist = torch.cdist(x, x).to(device)
    _assert_same(backend, dist, 12, None)
    _assert_same(backend, dist, 5, 0.7)


@only("cpu", "triton")
def test_all_columns_and_lazy_flag(backend, device):
    dist = _dist(20, 4, torch.float64, 1, device)
    _assert_same(backend, dist, 20, None, lazy=True)  # the last picks have zero gain: ties at 0


@only("cpu", "triton")
def test_noncontiguous_asymmetric_block(backend, device):
    g = torch.Generator().manual_seed(2)
    base = torch.rand(23, 23, generator=g, dtype=torch.float64).to(device)
    dist = base.t()  # a transposed view of an asymmetric matrix
    assert not dist.is_contiguous()
    _assert_same(backend, dist, 6, None)


def test_k_zero_and_bad_arguments(backend, device):
    kern = kernels(backend)
    dist = _dist(5, 2, torch.float32, 0, device)
    picks, objective, weights = kern.facility_location_greedy(dist, 0)
    assert picks.numel() == objective.numel() == weights.numel() == 0
    with pytest.raises(ValueError, match="k"):
        kern.facility_location_greedy(dist, 6)
    with pytest.raises(ValueError, match="dist"):
        kern.facility_location_greedy(dist[:, :4], 2)
    with pytest.raises(ValueError, match="square"):  # every backend, through the dispatch point
        ops.facility_location_greedy(dist[:, :4], 2, backend=backend)
    if backend != "triton":  # the op itself (what torch.ops.lcmat callers reach) refuses it too
        with pytest.raises(RuntimeError, match="square"):
            torch.ops.lcmat.facility_location_greedy(dist[:, :4].contiguous(), 2, None, False)


@only("triton")
@pytest.mark.gpu
def test_gpu_class_sized_block(backend, device):
    dist = _dist(1300, 16, torch.float64, 0, device)
    _assert_same(backend, dist, 130, None)


@only("cpu", "triton")
def test_integer_distances_tie_exactly(backend, device):
    # Cityblock distances between integer grid points are small integers: every gain is exact in
    # any summation order, so the many ties must all go to the lowest index, as in the reference.
    g = torch.Generator().manual_seed(4)
    pts = torch.randint(0, 4, (26, 2), generator=g).double()
    dist = torch.cdist(pts, pts, p=1).to(device)
    _assert_same(backend, dist, 10, None)
    _assert_same(backend, dist, 8, 2.0)


@only("cpu", "triton")
def test_negative_distances_do_not_overflow(backend, device):
    # Similarities above L (negative entries) must not overflow the fixed-point gains.
    g = torch.Generator().manual_seed(5)
    dist = (torch.rand(19, 19, generator=g, dtype=torch.float64) * 2 - 1.5).to(device)
    _assert_same(backend, dist, 6, None)
    _assert_same(backend, dist, 6, 0.1)


@only("cpu", "triton")
def test_batch_matches_reference_per_block(backend, device):
    kern = kernels(backend)
    dists = [_dist(n, 3, torch.float32, n, device) for n in (33, 1, 0, 70)]
    ks = [5, 1, 0, 12]
    out = kern.facility_location_greedy_batch(dists, ks, None, True)
    assert len(out) == 4
    for d, k, (picks, objective, weights) in zip(dists, ks, out):
        rp, ro, rw = R.facility_location_greedy(d, k)
        assert picks.tolist() == rp.tolist()
        torch.testing.assert_close(objective, ro, rtol=1e-5, atol=1e-5)
        assert torch.equal(weights, rw)
    with pytest.raises(ValueError, match="ks"):
        kern.facility_location_greedy_batch(dists, ks[:2])


@only("cuda")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_class_sized_block_and_ties(backend, device, dtype):
    kern = kernels(backend)
    dist = random_dist(700, 3, dtype, 4)
    ref = R.facility_location_greedy(dist, 60, lazy=False)
    picks, objective, weights = kern.facility_location_greedy(dist.to(device), 60)
    assert picks.cpu().tolist() == ref[0].tolist()
    torch.testing.assert_close(objective.cpu(), ref[1], **tol(dtype))
    assert torch.equal(weights.cpu(), ref[2])
    pts = torch.randint(0, 5, (40, 2)).double().repeat(3, 1)
    dist = torch.cdist(pts, pts, p=1).to(dtype)
    assert kern.facility_location_greedy(dist.to(device), 30)[0].cpu().tolist() == \
        R.facility_location_greedy(dist, 30)[0].tolist()


@only("cuda")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_of_very_different_blocks(backend, device, dtype):
    dists = [random_dist(n, 3, dtype, n) for n in (700, 1, 0, 90)]
    ks = [60, 1, 0, 9]
    out = kernels(backend).facility_location_greedy_batch([d.to(device) for d in dists], ks)
    for d, k, (picks, objective, weights) in zip(dists, ks, out):
        ref = R.facility_location_greedy(d, k, lazy=False)
        assert picks.cpu().tolist() == ref[0].tolist()
        torch.testing.assert_close(objective.cpu(), ref[1], **tol(dtype))
        assert torch.equal(weights.cpu(), ref[2])
