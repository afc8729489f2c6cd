"""Triton FDMat prototype cost and transport scores against lcmat.reference."""
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


def _features(n, c, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(n, d, generator=g, dtype=torch.float64)  # non-negative, post-ReLU like
    labels = torch.arange(n) % c
    x = R.fdmat_transform(feats)
    mu = R.class_prototypes(x, labels, c)
    return x.to(dtype).to(DEV), mu.to(dtype).to(DEV)


@settings(max_examples=8)
@given(n=st.integers(1, 40), c=st.integers(1, 20), d=st.integers(1, 37),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 99))
def test_prototype_cost_matches_reference(n, c, d, dtype, seed):
    x, mu = _features(n, c, d, dtype, seed)
    out = T.prototype_cost(x, mu)
    ref = R.prototype_cost(x.double(), mu.double())
    assert out.shape == (n, c) and out.dtype == dtype and bool((out >= 0).all())
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out.double(), ref, rtol=0.0, atol=20 * eps * (1 + float(ref.max())))


def test_prototype_cost_noncontiguous():
    x, mu = _features(30, 6, 17, torch.float64, 1)
    xt = x.t().contiguous().t()
    torch.testing.assert_close(T.prototype_cost(xt, mu[::1]), R.prototype_cost(x, mu), rtol=1e-12, atol=1e-12)


@settings(max_examples=8)
@given(n=st.integers(1, 40), c=st.integers(1, 20), reg=st.sampled_from([0.05, 1.0, 10.0]),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 99))
def test_scores_match_reference(n, c, reg, dtype, seed):
    x, mu = _features(n, c, 9, torch.float64, seed)
    M = R.prototype_cost(x, mu)
    labels_mass = torch.bincount(torch.arange(n) % c, minlength=c).double().to(DEV)
    f, g, _, _ = R.sinkhorn_log(torch.ones(n, dtype=torch.float64, device=DEV), labels_mass, M, reg,
                                max_iter=30)
    M, f, g = M.to(dtype), f.to(dtype), g.to(dtype)
    out = T.fdmat_scores(M, f, g, reg)
    ref = R.fdmat_scores(M.double(), f.double(), g.double(), reg)
    rtol = 1e-4 if dtype == torch.float32 else 1e-11
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=rtol * float(ref.max()))


def test_bad_arguments_raise():
    x, mu = _features(5, 2, 3, torch.float32, 0)
    with pytest.raises(ValueError, match="prototypes"):
        T.prototype_cost(x, mu[:, :2])
    M = R.prototype_cost(x, mu)
    with pytest.raises(ValueError, match="g"):
        T.fdmat_scores(M, torch.zeros(5, device=DEV), torch.zeros(3, device=DEV), 1.0)
    with pytest.raises(ValueError, match="reg"):
        T.fdmat_scores(M, torch.zeros(5, device=DEV), torch.zeros(2, device=DEV), -1.0)


@pytest.mark.gpu
def test_gpu_large_shapes():
    x, mu = _features(100_000, 1000, 512, torch.float32, 0)
    ref = R.prototype_cost(x.double(), mu.double())
    out = T.prototype_cost(x, mu)
    torch.testing.assert_close(out.double(), ref, rtol=0.0, atol=1e-5 * (1 + float(ref.max())))
    f = torch.randn(100_000, device=DEV) * 0.01
    g = torch.randn(1000, device=DEV) * 0.01
    torch.testing.assert_close(T.fdmat_scores(out, f, g, 0.5).double(),
                               R.fdmat_scores(out.double(), f.double(), g.double(), 0.5), rtol=1e-4, atol=1e-6)
