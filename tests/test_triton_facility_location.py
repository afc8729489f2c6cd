"""Triton greedy facility location against lcmat.reference: the same picks, exactly."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

pytest.importorskip("triton")
from lcmat import reference as R  # noqa: E402
from lcmat import triton_kernels as T  # noqa: E402

if not T.available("triton"):
    pytest.skip("triton backend unavailable (no CUDA and TRITON_INTERPRET unset)", allow_module_level=True)

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _dist(n, dim, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    return torch.cdist(x, x).to(dtype).to(DEV)


def _assert_same(dist, k, L, lazy=False):
    picks, objective, weights = T.facility_location_greedy(dist, k, L, lazy)
    rp, ro, rw = R.facility_location_greedy(dist, k, L)
    assert picks.tolist() == rp.tolist()
    tol = 1e-5 if dist.dtype == torch.float32 else 1e-12
    torch.testing.assert_close(objective, ro, rtol=tol, atol=tol)
    assert torch.equal(weights, rw)
    assert objective.dtype == dist.dtype and picks.dtype == torch.long


@settings(max_examples=8)
@given(n=st.integers(1, 35), frac=st.floats(0, 1), use_L=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 99))
def test_picks_match_reference(n, frac, use_L, dtype, seed):
    k = min(n, round(frac * min(n, 6)))
    dist = _dist(n, 3, dtype, seed)
    _assert_same(dist, k, 1.5 if use_L else None)


def test_exact_ties_lowest_index_wins():
    # Every point twice: duplicates have equal gains, the lower index must win each time.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 2, generator=g, dtype=torch.float64)
    x = torch.cat([x, x])
    dist = torch.cdist(x, x).to(DEV)
    _assert_same(dist, 12, None)
    _assert_same(dist, 5, 0.7)


def test_all_columns_and_lazy_flag():
    dist = _dist(20, 4, torch.float64, 1)
    _assert_same(dist, 20, None, lazy=True)  # the last picks have zero gain: ties at 0


def test_noncontiguous_asymmetric_block():
    g = torch.Generator().manual_seed(2)
    base = torch.rand(23, 23, generator=g, dtype=torch.float64).to(DEV)
    dist = base.t()  # a transposed view of an asymmetric matrix
    assert not dist.is_contiguous()
    _assert_same(dist, 6, None)


def test_k_zero_and_bad_arguments():
    dist = _dist(5, 2, torch.float32, 0)
    picks, objective, weights = T.facility_location_greedy(dist, 0)
    assert picks.numel() == objective.numel() == weights.numel() == 0
    with pytest.raises(ValueError, match="k"):
        T.facility_location_greedy(dist, 6)
    with pytest.raises(ValueError, match="dist"):
        T.facility_location_greedy(dist[:, :4], 2)


@pytest.mark.gpu
def test_gpu_class_sized_block():
    dist = _dist(1300, 16, torch.float64, 0)
    _assert_same(dist, 130, None)


def test_integer_distances_tie_exactly():
    # Cityblock distances between integer grid points are small integers: every gain is exact in
    # any summation order, so the many ties must all go to the lowest index, as in the reference.
    g = torch.Generator().manual_seed(4)
    pts = torch.randint(0, 4, (26, 2), generator=g).double()
    dist = torch.cdist(pts, pts, p=1).to(DEV)
    _assert_same(dist, 10, None)
    _assert_same(dist, 8, 2.0)


def test_negative_distances_do_not_overflow():
    # Similarities above L (negative entries) must not overflow the fixed-point gains.
    g = torch.Generator().manual_seed(5)
    dist = (torch.rand(19, 19, generator=g, dtype=torch.float64) * 2 - 1.5).to(DEV)
    _assert_same(dist, 6, None)
    _assert_same(dist, 6, 0.1)


def test_batch_matches_reference_per_block():
    dists = [_dist(n, 3, torch.float32, n) for n in (33, 1, 0, 70)]
    ks = [5, 1, 0, 12]
    out = T.facility_location_greedy_batch(dists, ks, None, True)
    assert len(out) == 4
    for d, k, (picks, objective, weights) in zip(dists, ks, out):
        rp, ro, rw = R.facility_location_greedy(d, k)
        assert picks.tolist() == rp.tolist()
        torch.testing.assert_close(objective, ro, rtol=1e-5, atol=1e-5)
        assert torch.equal(weights, rw)
    with pytest.raises(ValueError, match="ks"):
        T.facility_location_greedy_batch(dists, ks[:2])
