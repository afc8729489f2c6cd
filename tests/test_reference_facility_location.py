"""lcmat.reference.facility_location against a greedy written from the objective itself,

    F(S) = sum_i max(0, max_{j in S} (L - D_ij)),

and against the exhaustive optimum over all subsets of size k. Integer-valued distance blocks make
every sum exact in float64 (and float32) so that ties are exact and the tie rule (lowest index
first) is tested strictly; asymmetric blocks catch a row/column mix-up (rows are covered,
columns are candidates).
"""
import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import brute
from lcmat.reference import facility_location_greedy, nearest_pick_counts

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
