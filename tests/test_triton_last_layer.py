"""Triton last-layer kernels against lcmat.reference (CPU interpreter here, CUDA where present)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

pytest.importorskip("triton")
from lcmat import algorithms, ops  # noqa: E402
from lcmat import reference as R  # noqa: E402
from lcmat import triton_kernels as T  # noqa: E402

if not T.available("triton"):
    pytest.skip("triton backend unavailable (no CUDA and TRITON_INTERPRET unset)", allow_module_level=True)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float64]
ATOL = {torch.float32: 2e-6, torch.float64: 1e-13}


def _problem(n, c, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    z = (3 * torch.randn(n, c, generator=g, dtype=torch.float64)).to(dtype)
    y = torch.randint(0, c, (n,), generator=g)
    h = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    s = (0.5 + torch.rand(n, generator=g, dtype=torch.float64)).to(dtype)
    return z.to(DEV), y.to(DEV), h.to(DEV), s.to(DEV)


@settings(max_examples=8)
@given(n=st.integers(1, 40), c=st.integers(1, 37), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 99))
def test_factors_match_reference(n, c, dtype, seed):
    z, y, _, _ = _problem(n, c, 1, dtype, seed)
    e, q = T.last_layer_factors(z, y)
    er, qr = R.last_layer_factors(z.double(), y)
    assert e.dtype == dtype and q.dtype == dtype and e.shape == (n, c)
    torch.testing.assert_close(e.double(), er, atol=ATOL[dtype], rtol=1e-5)
    torch.testing.assert_close(q.double(), qr, atol=ATOL[dtype], rtol=1e-5)


def test_factors_noncontiguous_and_int32_labels():
    z, y, _, _ = _problem(33, 21, 1, torch.float32, 1)
    zt = z.t().contiguous().t()  # column-major view
    assert not zt.is_contiguous()
    e, q = T.last_layer_factors(zt, y.to(torch.int32))
    er, qr = R.last_layer_factors(z, y)
    torch.testing.assert_close(e, er, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(q, qr, atol=2e-6, rtol=1e-5)


def test_confident_sample_error_is_accurate():
    # p_y ~ 1 - 1e-9: the error norm must come out to ~eps relative, not ~eps absolute.
    z = torch.tensor([[25.0, 3.0, -1.0, 4.0], [0.0, 0.0, 0.0, 40.0]], device=DEV)
    y = torch.tensor([0, 3], device=DEV)
    _, err = T.last_layer_grad_norms(torch.zeros(2, 3, device=DEV), z, y)
    p = torch.softmax(z.double(), 1)
    others = p.clone()
    others[torch.arange(2), y] = 0.0
    exact = (others.square().sum(1) + others.sum(1).square()).sqrt()  # 1 - p_y = sum_{j != y} p_j
    torch.testing.assert_close(err.double(), exact, rtol=1e-5, atol=0.0)


@settings(max_examples=8)
@given(n=st.integers(1, 40), c=st.integers(1, 20), d=st.integers(0, 37),
       dtype=st.sampled_from(DTYPES), scaled=st.booleans(), seed=st.integers(0, 99))
def test_grad_norms_match_reference(n, c, d, dtype, scaled, seed):
    z, y, h, s = _problem(n, c, d, dtype, seed)
    s = -s if scaled and seed % 2 else s  # the scale enters through |s|
    grad, err = T.last_layer_grad_norms(h, z, y, s if scaled else None)
    gr, er = R.last_layer_grad_norms(h.double(), z.double(), y, s.double() if scaled else None)
    torch.testing.assert_close(err.double(), er, atol=ATOL[dtype], rtol=1e-5)
    torch.testing.assert_close(grad.double(), gr, atol=10 * ATOL[dtype], rtol=1e-5)


@settings(max_examples=8)
@given(n=st.integers(1, 37), c=st.integers(1, 19), d=st.integers(0, 35),
       dtype=st.sampled_from(DTYPES), scaled=st.booleans(), seed=st.integers(0, 99))
def test_curvature_moments_match_reference(n, c, d, dtype, scaled, seed):
    z, y, h, s = _problem(n, c, d, dtype, seed)
    _, q = R.last_layer_factors(z, y)
    scale = s if scaled else None
    mean, second = T.curvature_moments(h, q, scale)
    mr, sr = R.curvature_moments(h, q, scale)
    assert mean.dtype == torch.float64 and mean.shape == (c * (d + 1),)
    torch.testing.assert_close(mean, mr, atol=1e-15, rtol=1e-12)
    torch.testing.assert_close(second, sr, atol=1e-15, rtol=1e-12)


@settings(max_examples=6)
@given(n=st.integers(2, 30), c=st.integers(1, 9), d=st.integers(1, 20), k=st.integers(0, 50),
       seed=st.integers(0, 99))
def test_top_variance_coords_match_reference(n, c, d, k, seed):
    z, y, h, s = _problem(n, c, d, torch.float32, seed)
    _, q = R.last_layer_factors(z, y)
    assert torch.equal(algorithms.top_variance_coords(h, q, k, s, backend="triton"), R.top_variance_coords(h, q, k, s))


def test_top_variance_coords_ties_and_cancellation():
    # A zero embedding column gives weight coordinates of exactly zero variance: ties, broken
    # by the lowest index. A large offset with tiny spread is where float32 m2 - m1^2 fails.
    z, y, h, _ = _problem(25, 4, 6, torch.float32, 3)
    h[:, 2] = 0.0
    h[:, 4] = 100.0 + 1e-3 * h[:, 4]
    _, q = R.last_layer_factors(z, y)
    ours = algorithms.top_variance_coords(h, q, 28, backend="triton")
    assert torch.equal(ours, R.top_variance_coords(h, q, 28))
    zero_var = [4 + c * 6 + 2 for c in range(4)]
    assert ours[-4:].tolist() == zero_var


def test_bad_arguments_raise():
    z, y, h, _ = _problem(5, 3, 2, torch.float32, 0)
    with pytest.raises(ValueError, match="labels"):
        T.last_layer_factors(z, y + 3)
    with pytest.raises(ValueError, match="embeddings"):
        T.last_layer_grad_norms(h[:4], z, y)
    with pytest.raises(ValueError, match="scale"):
        T.last_layer_grad_norms(h, z, y, torch.ones(4, device=DEV))


def test_empty_rows():
    e, q = T.last_layer_factors(torch.zeros(0, 4, device=DEV), torch.zeros(0, dtype=torch.long, device=DEV))
    assert e.shape == (0, 4) and q.shape == (0, 4)
    grad, err = T.last_layer_grad_norms(torch.zeros(0, 2, device=DEV), torch.zeros(0, 4, device=DEV),
                                        torch.zeros(0, dtype=torch.long, device=DEV))
    assert grad.shape == (0,) and err.shape == (0,)


@pytest.mark.gpu
def test_gpu_large_shapes():
    z, y, h, s = _problem(5000, 1000, 512, torch.float32, 0)
    e, q = T.last_layer_factors(z, y)
    er, qr = R.last_layer_factors(z, y)
    torch.testing.assert_close(e, er, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(q, qr, atol=1e-6, rtol=1e-5)
    grad, err = T.last_layer_grad_norms(h, z, y, s)
    gr, err_r = R.last_layer_grad_norms(h.double(), z.double(), y, s.double())
    torch.testing.assert_close(grad.double(), gr, atol=1e-5, rtol=1e-5)
    mean, second = T.curvature_moments(h[:1300], q[:1300], s[:1300])
    mr, sr = R.curvature_moments(h[:1300], q[:1300], s[:1300])
    torch.testing.assert_close(mean, mr, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(second, sr, rtol=1e-12, atol=1e-15)
    assert torch.equal(algorithms.top_variance_coords(h[:1300], q[:1300], 100, backend="triton"),
                       R.top_variance_coords(h[:1300], q[:1300], 100))
