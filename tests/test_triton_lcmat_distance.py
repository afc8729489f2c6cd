"""Triton LCMat-S distance kernels against lcmat.reference."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

pytest.importorskip("triton")
from lcmat import reference as R  # noqa: E402
from lcmat import triton_kernels as T  # noqa: E402

if not T.available("triton"):
    pytest.skip("triton backend unavailable (no CUDA and TRITON_INTERPRET unset)", allow_module_level=True)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float64]


def _class_rows(n, c, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    z = 2 * torch.randn(n, c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    e, q = R.last_layer_factors(z, y)
    h = torch.randn(n, d, generator=g, dtype=torch.float64)
    s = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    return [t.to(dtype).to(DEV) for t in (h, e, q, s)]


def _assert_close_gradient_part(out, ref, dtype):
    """Distances come from sqrt(|g_i|^2 + |g_j|^2 - 2 <g_i, g_j>): the squared distances carry an
    error of a few eps times max |g|^2 (the square root of it for near-duplicate rows), so they
    are compared squared."""
    eps = torch.finfo(dtype).eps
    top = float(ref.square().max()) if ref.numel() else 0.0
    torch.testing.assert_close(out.double().square(), ref.square(), rtol=0.0, atol=20 * eps * (1 + top))


@settings(max_examples=8)
@given(n=st.integers(1, 37), c=st.integers(1, 12), d=st.integers(0, 35), scaled=st.booleans(),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 99))
def test_gradient_distance_matches_reference(n, c, d, scaled, dtype, seed):
    h, e, _, s = _class_rows(n, c, d, dtype, seed)
    scale = s if scaled else None
    out = T.gradient_distance(h, e, scale)
    ref = R.gradient_distance(h.double(), e.double(), None if scale is None else scale.double())
    assert out.shape == (n, n) and out.dtype == dtype
    assert torch.all(out.diagonal() == 0)
    _assert_close_gradient_part(out, ref, dtype)


@settings(max_examples=8)
@given(n=st.integers(1, 33), m=st.integers(1, 20), k=st.integers(0, 30),
       same=st.booleans(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 99))
def test_pairwise_l1_matches_reference(n, m, k, same, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, k, generator=g, dtype=torch.float64).to(dtype).to(DEV)
    b = None if same else torch.randn(m, k, generator=g, dtype=torch.float64).to(dtype).to(DEV)
    out = T.pairwise_l1(a, b)
    ref = R.pairwise_l1(a.double(), None if b is None else b.double())
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=rtol)


@settings(max_examples=6)
@given(n=st.integers(1, 30), c=st.integers(1, 8), d=st.integers(1, 20), kc=st.integers(1, 40),
       scaled=st.booleans(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 99))
def test_hessian_diag_coords_match_reference(n, c, d, kc, scaled, dtype, seed):
    h, _, q, s = _class_rows(n, c, d, dtype, seed)
    g = torch.Generator().manual_seed(seed)
    coords = torch.randint(0, c * (d + 1), (kc,), generator=g).to(DEV)
    coords[0] = 0  # always one bias coordinate
    scale = s if scaled else None
    out = T.hessian_diag_coords(h, q, coords, scale)
    ref = R.hessian_diag_coords(h, q, coords, scale)
    torch.testing.assert_close(out, ref, rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=0.0)


@settings(max_examples=8)
@given(n=st.integers(1, 35), c=st.integers(1, 10), d=st.integers(1, 30), k=st.integers(0, 40),
       rho=st.sampled_from([0.0, 0.01, 1.0]), scaled=st.booleans(),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 99))
def test_lcmat_distance_matches_reference(n, c, d, k, rho, scaled, dtype, seed):
    h, e, q, s = _class_rows(n, c, d, dtype, seed)
    scale = s if scaled else None
    coords = R.top_variance_coords(h, q, k, scale)
    out = T.lcmat_distance(h, e, q, coords, rho, scale)
    h64, e64, q64 = (t.double() for t in (h, e, q))
    s64 = None if scale is None else scale.double()
    l1 = R.pairwise_l1(R.hessian_diag_coords(h64, q64, coords, s64))
    ref = R.lcmat_distance(h64, e64, q64, coords, rho, s64)
    torch.testing.assert_close(out.double(), ref, rtol=0.0, atol=10 * float(ref.max()))  # shape, finite
    _assert_close_gradient_part(out.double() - rho * l1, R.gradient_distance(h64, e64, s64), dtype)


def test_noncontiguous_inputs():
    h, e, q, s = _class_rows(29, 7, 18, torch.float64, 5)
    ht, et, qt = (t.t().contiguous().t() for t in (h, e, q))
    coords = R.top_variance_coords(h, q, 17, s)
    ref = R.lcmat_distance(h, e, q, coords, 0.5, s)
    torch.testing.assert_close(T.lcmat_distance(ht, et, qt, coords, 0.5, s[::1]), ref, rtol=1e-9, atol=1e-9)
    a = torch.randn(40, 9, dtype=torch.float64, device=DEV)[::2]
    torch.testing.assert_close(T.pairwise_l1(a), R.pairwise_l1(a))


def test_bad_arguments_raise():
    h, e, q, _ = _class_rows(6, 3, 4, torch.float32, 0)
    with pytest.raises(ValueError, match="coords"):
        T.hessian_diag_coords(h, q, torch.tensor([15], device=DEV))
    with pytest.raises(ValueError, match="e"):
        T.gradient_distance(h, e[:5])
    with pytest.raises(ValueError, match="b"):
        T.pairwise_l1(h, e)


@pytest.mark.gpu
def test_gpu_class_sized_block():
    h, e, q, s = _class_rows(1300, 1000, 512, torch.float64, 0)
    coords = R.top_variance_coords(h, q, 100, s)
    ref = R.lcmat_distance(h, e, q, coords, 0.01, s)
    torch.testing.assert_close(T.lcmat_distance(h, e, q, coords, 0.01, s), ref, rtol=1e-9, atol=1e-7)
    h32, e32, q32, s32 = (t.float() for t in (h, e, q, s))
    l1 = R.pairwise_l1(R.hessian_diag_coords(h, q, coords, s))
    out = T.lcmat_distance(h32, e32, q32, coords, 0.01, s32)
    _assert_close_gradient_part(out.double() - 0.01 * l1, R.gradient_distance(h, e, s), torch.float32)


def test_ops_top_variance_coords_prunes_rows_on_triton_like_the_full_reference():
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
    for dtype in DTYPES:
        hd, qd = h.to(dtype).to(DEV), q.to(dtype).to(DEV)
        for k in (1, 10, 30):
            expected = R.top_variance_coords(hd, qd, k).tolist()
            assert algorithms.top_variance_coords(hd, qd, k, backend="triton").tolist() == expected
