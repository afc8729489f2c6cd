"""lcmat.reference.last_layer against per-sample gradients and Hessian diagonals from autograd.

The reference never forms g or d; these tests materialise both with torch.func over the flattened
last-layer parameters [bias (C); weight (C x D) row-major] and check that the factors e, q
reproduce them exactly:  g_i = s_i [e_i ; vec(e_i h_i^T)],  d_i = s_i [q_i ; vec(q_i (h_i^2)^T)].
"""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import brute
from lcmat.reference import last_layer_factors, last_layer_grad_norms

F64 = dict(rtol=1e-10, atol=1e-13)
F32 = dict(rtol=1e-5, atol=1e-6)

shapes = dict(n=st.integers(1, 6), C=st.integers(1, 5), D=st.integers(1, 5),
              seed=st.integers(0, 2**31 - 1))


def split(theta_rows, C, D):
    """[n, C (D + 1)] -> bias part [n, C] and weight part [n, C, D] (row-major weight)."""
    return theta_rows[:, :C], theta_rows[:, C:].reshape(-1, C, D)


@given(**shapes)
def test_factors_give_autograd_gradient(n, C, D, seed):
    h, z, y, _ = brute.random_class(n, C, D, seed)
    e, _ = last_layer_factors(z, y)
    bias, weight = split(brute.per_sample_gradients(h, z, y), C, D)
    torch.testing.assert_close(e, bias, **F64)
    torch.testing.assert_close(e[:, :, None] * h[:, None, :], weight, **F64)


@given(**shapes)
def test_factors_give_autograd_hessian_diagonal(n, C, D, seed):
    h, z, y, _ = brute.random_class(n, C, D, seed)
    _, q = last_layer_factors(z, y)
    bias, weight = split(brute.per_sample_hessian_diagonals(h, z, y), C, D)
    torch.testing.assert_close(q, bias, **F64)
    torch.testing.assert_close(q[:, :, None] * (h * h)[:, None, :], weight, **F64)


def test_factors_definition_and_dtype():
    h, z, y, _ = brute.random_class(7, 4, 3, seed=1)
    p = torch.exp(z) / torch.exp(z).sum(1, keepdim=True)
    onehot = torch.nn.functional.one_hot(y, 4).double()
    for dtype, tol in ((torch.float64, F64), (torch.float32, F32)):
        e, q = last_layer_factors(z.to(dtype), y)
        assert e.dtype == q.dtype == dtype and e.shape == q.shape == (7, 4)
        torch.testing.assert_close(e.double(), p - onehot, **tol)
        torch.testing.assert_close(q.double(), p * (1 - p), **tol)


def test_factors_large_logits_stay_finite():
    z = torch.tensor([[1000.0, 0.0, -1000.0], [-800.0, 800.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    e, q = last_layer_factors(z, y)
    expected_e = torch.tensor([[0.0, 0.0, 0.0], [-1.0, 1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(e, expected_e, rtol=0, atol=1e-300)
    torch.testing.assert_close(q, torch.zeros_like(q), rtol=0, atol=1e-300)


def test_factors_non_contiguous_logits():
    h, z, y, _ = brute.random_class(6, 5, 2, seed=3)
    zt = z.T.contiguous().T  # same values, column-major
    assert not zt.is_contiguous()
    e, q = last_layer_factors(zt, y)
    e0, q0 = last_layer_factors(z, y)
    torch.testing.assert_close(e, e0, rtol=0, atol=0)
    torch.testing.assert_close(q, q0, rtol=0, atol=0)


@pytest.mark.parametrize("use_scale", [False, True])
@given(**shapes)
def test_grad_norms_against_autograd(use_scale, n, C, D, seed):
    h, z, y, s = brute.random_class(n, C, D, seed)
    scale = s if use_scale else None
    grad_norm, error_norm = last_layer_grad_norms(h, z, y, scale=scale)
    g = brute.per_sample_gradients(h, z, y, scale)
    torch.testing.assert_close(grad_norm, g.norm(dim=1), **F64)
    # The error norm is ||p - onehot||, the unscaled bias gradient (EL2N), whatever the scale.
    unscaled = brute.per_sample_gradients(h, z, y)
    torch.testing.assert_close(error_norm, unscaled[:, :C].norm(dim=1), **F64)


def test_scaled_gradient_and_hessian_scale_by_s():
    """The loss of sample i is scaled by s_i, so g_i and d_i scale by s_i (not s_i^2)."""
    h, z, y, s = brute.random_class(5, 3, 4, seed=11)
    g = brute.per_sample_gradients(h, z, y)
    d = brute.per_sample_hessian_diagonals(h, z, y)
    torch.testing.assert_close(brute.per_sample_gradients(h, z, y, s), s[:, None] * g, **F64)
    torch.testing.assert_close(brute.per_sample_hessian_diagonals(h, z, y, s), s[:, None] * d,
                               **F64)
    grad_norm, _ = last_layer_grad_norms(h, z, y, scale=s)
    torch.testing.assert_close(grad_norm, s * g.norm(dim=1), **F64)


def test_grad_norms_float32_and_non_contiguous():
    h, z, y, s = brute.random_class(9, 4, 6, seed=5)
    g = brute.per_sample_gradients(h, z, y, s)
    h32 = h.float().T.contiguous().T
    z32 = z.float()[:, [3, 2, 1, 0]][:, [3, 2, 1, 0]]
    assert not h32.is_contiguous()
    grad_norm, error_norm = last_layer_grad_norms(h32, z32, y, scale=s.float())
    assert grad_norm.dtype == error_norm.dtype == torch.float32
    torch.testing.assert_close(grad_norm.double(), g.norm(dim=1), **F32)
    e = brute.per_sample_gradients(h, z, y)[:, :4]
    torch.testing.assert_close(error_norm.double(), e.norm(dim=1), **F32)


def test_grad_norms_empty():
    h = torch.zeros(0, 3, dtype=torch.float64)
    z = torch.zeros(0, 4, dtype=torch.float64)
    y = torch.zeros(0, dtype=torch.long)
    grad_norm, error_norm = last_layer_grad_norms(h, z, y)
    assert grad_norm.shape == error_norm.shape == (0,)
