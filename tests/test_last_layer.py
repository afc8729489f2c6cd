"""The last-layer kernels (last_layer_factors, last_layer_grad_norms).

First the reference (lcmat.reference.last_layer) against per-sample gradients and Hessian
diagonals from autograd; then every backend (the `backend` fixture: cpu, triton, cuda) against
the reference.

The reference never forms g or d; its tests materialise both with torch.func over the flattened
last-layer parameters [bias (C); weight (C x D) row-major] and check that the factors e, q
reproduce them exactly:  g_i = s_i [e_i ; vec(e_i h_i^T)],  d_i = s_i [q_i ; vec(q_i (h_i^2)^T)].
The compiled backend in float64 is compared with the float64 reference at tight tolerances, in
float32 with the float64 reference at tolerances derived from float32's epsilon.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import brute
import lcmat.reference as R
from backends import kernels, last_layer_inputs, maybe, only, tol, triton_problem
from lcmat.reference import last_layer_factors, last_layer_grad_norms

DTYPES = st.sampled_from([torch.float32, torch.float64])
F64 = dict(rtol=1e-10, atol=1e-13)
F32 = dict(rtol=1e-5, atol=1e-6)

# ---- the reference against autograd ----------------------------------------------------------

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


# ---- every backend against the reference -----------------------------------------------------

# The compiled backend on CPU: every shape from empty up, non-contiguous inputs, with and without
# the scale, 25 examples (the profile's); tolerances tol(dtype).
@only("cpu")
@given(n=st.integers(0, 40), C=st.integers(1, 12), D=st.integers(1, 9), dtype=DTYPES,
       nc=st.booleans(), scaled=st.booleans(), seed=st.integers(0, 99))
def test_factors_and_grad_norms_match_reference(backend, n, C, D, dtype, nc, scaled, seed):
    kern = kernels(backend)
    H, Z, y, s = last_layer_inputs(n, C, D, dtype, seed)
    e, q = kern.last_layer_factors(maybe(Z, nc), y)
    e_ref, q_ref = R.last_layer_factors(Z.double(), y)
    assert e.dtype == dtype and q.dtype == dtype and e.shape == (n, C)
    torch.testing.assert_close(e.double(), e_ref, **tol(dtype))
    torch.testing.assert_close(q.double(), q_ref, **tol(dtype))
    scale = s if scaled else None
    gn, en = kern.last_layer_grad_norms(maybe(H, nc), Z, y, scale)
    gn_ref, en_ref = R.last_layer_grad_norms(H.double(), Z.double(), y, None if scale is None else s.double())
    torch.testing.assert_close(gn.double(), gn_ref, **tol(dtype))
    torch.testing.assert_close(en.double(), en_ref, **tol(dtype))


# Triton (interpreted on the CPU, compiled on a GPU): more classes, fewer examples (8), its own
# tolerances (float32 atol 2e-6, float64 1e-13), and a negative scale (it enters through |s|).
TRITON_ATOL = {torch.float32: 2e-6, torch.float64: 1e-13}


@only("triton")
@settings(max_examples=8)
@given(n=st.integers(1, 40), c=st.integers(1, 37), dtype=DTYPES, seed=st.integers(0, 99))
def test_factors_match_reference(backend, device, n, c, dtype, seed):
    z, y, _, _ = triton_problem(n, c, 1, dtype, seed, device)
    e, q = kernels(backend).last_layer_factors(z, y)
    er, qr = R.last_layer_factors(z.double(), y)
    assert e.dtype == dtype and q.dtype == dtype and e.shape == (n, c)
    torch.testing.assert_close(e.double(), er, atol=TRITON_ATOL[dtype], rtol=1e-5)
    torch.testing.assert_close(q.double(), qr, atol=TRITON_ATOL[dtype], rtol=1e-5)


@only("triton")
@settings(max_examples=8)
@given(n=st.integers(1, 40), c=st.integers(1, 20), d=st.integers(0, 37),
       dtype=DTYPES, scaled=st.booleans(), seed=st.integers(0, 99))
def test_grad_norms_match_reference(backend, device, n, c, d, dtype, scaled, seed):
    z, y, h, s = triton_problem(n, c, d, dtype, seed, device)
    s = -s if scaled and seed % 2 else s  # the scale enters through |s|
    grad, err = kernels(backend).last_layer_grad_norms(h, z, y, s if scaled else None)
    gr, er = R.last_layer_grad_norms(h.double(), z.double(), y, s.double() if scaled else None)
    torch.testing.assert_close(err.double(), er, atol=TRITON_ATOL[dtype], rtol=1e-5)
    torch.testing.assert_close(grad.double(), gr, atol=10 * TRITON_ATOL[dtype], rtol=1e-5)


@only("cpu", "triton")
def test_factors_noncontiguous_and_int32_labels(backend, device):
    z, y, _, _ = triton_problem(33, 21, 1, torch.float32, 1, device)
    zt = z.t().contiguous().t()  # column-major view
    assert not zt.is_contiguous()
    e, q = kernels(backend).last_layer_factors(zt, y.to(torch.int32))
    er, qr = R.last_layer_factors(z, y)
    torch.testing.assert_close(e, er, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(q, qr, atol=2e-6, rtol=1e-5)


# Triton only: the compiled cpu kernel gives 1 - p_y to ~eps absolute (relative error 0.5 at
# p_y = 1 - 4e-18 in float32).
@only("triton")
def test_confident_sample_error_is_accurate(backend, device):
    # p_y ~ 1 - 1e-9: the error norm must come out to ~eps relative, not ~eps absolute.
    z = torch.tensor([[25.0, 3.0, -1.0, 4.0], [0.0, 0.0, 0.0, 40.0]], device=device)
    y = torch.tensor([0, 3], device=device)
    _, err = kernels(backend).last_layer_grad_norms(torch.zeros(2, 3, device=device), z, y)
    p = torch.softmax(z.double(), 1)
    others = p.clone()
    others[torch.arange(2), y] = 0.0
    exact = (others.square().sum(1) + others.sum(1).square()).sqrt()  # 1 - p_y = sum_{j != y} p_j
    torch.testing.assert_close(err.double(), exact, rtol=1e-5, atol=0.0)


@only("cpu", "triton")
def test_empty_rows(backend, device):
    kern = kernels(backend)
    e, q = kern.last_layer_factors(torch.zeros(0, 4, device=device), torch.zeros(0, dtype=torch.long, device=device))
    assert e.shape == (0, 4) and q.shape == (0, 4)
    grad, err = kern.last_layer_grad_norms(torch.zeros(0, 2, device=device), torch.zeros(0, 4, device=device),
                                        torch.zeros(0, dtype=torch.long, device=device))
    assert grad.shape == (0,) and err.shape == (0,)


# Bad arguments: the compiled ops raise from their argument checks (RuntimeError), the Triton
# wrappers a ValueError; each names the argument.
BAD_ARGUMENT_ERROR = {"cpu": RuntimeError, "triton": ValueError}


@only("cpu", "triton")
def test_bad_arguments_raise(backend, device):
    kern, error = kernels(backend), BAD_ARGUMENT_ERROR[backend]
    H, Z, y, _ = (t.to(device) for t in last_layer_inputs(6, 3, 2, torch.float64, 0))
    y[4] = 3
    with pytest.raises(error, match="labels"):
        kern.last_layer_factors(Z, y)
    with pytest.raises(error, match="labels"):
        kern.last_layer_grad_norms(H, Z, y)
    y[4] = 0
    with pytest.raises(error, match="embeddings"):
        kern.last_layer_grad_norms(H[:5], Z, y)
    z, y, h, _ = triton_problem(5, 3, 2, torch.float32, 0, device)
    with pytest.raises(error, match="labels"):
        kern.last_layer_factors(z, y + 3)
    with pytest.raises(error, match="embeddings"):
        kern.last_layer_grad_norms(h[:4], z, y)
    with pytest.raises(error, match="scale"):
        kern.last_layer_grad_norms(h, z, y, torch.ones(4, device=device))


@only("triton")
@pytest.mark.gpu
def test_gpu_large_shapes(backend, device):
    kern = kernels(backend)
    z, y, h, s = triton_problem(5000, 1000, 512, torch.float32, 0, device)
    e, q = kern.last_layer_factors(z, y)
    er, qr = R.last_layer_factors(z, y)
    torch.testing.assert_close(e, er, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(q, qr, atol=1e-6, rtol=1e-5)
    grad, err = kern.last_layer_grad_norms(h, z, y, s)
    gr, err_r = R.last_layer_grad_norms(h.double(), z.double(), y, s.double())
    torch.testing.assert_close(grad.double(), gr, atol=1e-5, rtol=1e-5)


@only("cuda")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_class_sized_block_matches_reference(backend, device, dtype):
    kern = kernels(backend)
    H, Z, y, s = last_layer_inputs(301, 10, 37, dtype, 0)
    for got, want in zip(kern.last_layer_factors(Z.to(device), y.to(device)), R.last_layer_factors(Z, y)):
        torch.testing.assert_close(got.cpu(), want, **tol(dtype))
    for got, want in zip(kern.last_layer_grad_norms(H.to(device), Z.to(device), y.to(device), s.to(device)),
                         R.last_layer_grad_norms(H, Z, y, s)):
        torch.testing.assert_close(got.cpu(), want, **tol(dtype))
