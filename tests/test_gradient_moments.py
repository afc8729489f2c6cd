"""gradient_moments: the reference against per-sample autograd (the definition), its closed-form
backward against autograd, gradcheck in float64, and every backend (the `backend` fixture: cpu,
triton, cuda) against the reference in float64 on the CPU, forward and backward."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from backends import only
from lcmat import ops
from lcmat import reference as R

TOL = {torch.float32: dict(atol=2e-5, rtol=2e-4), torch.float64: dict(atol=1e-11, rtol=1e-9)}


def problem(n, C, D, dtype=torch.float64, seed=0, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, D, generator=g, dtype=torch.float64).to(dtype)
    z = (spread * torch.randn(n, C, generator=g, dtype=torch.float64)).to(dtype)
    y = torch.randint(0, C, (n,), generator=g)
    return h, z, y


def per_sample_moments(h, z, y):
    """The definition: each sample's last-layer gradient by autograd of its own cross-entropy
    through an nn.Linear-shaped (W, b), then the class-wise mean and population variance."""
    n, C = z.shape
    D = h.shape[1]
    W = torch.zeros(C, D, dtype=z.dtype, requires_grad=True)
    b = torch.zeros(C, dtype=z.dtype, requires_grad=True)
    grads = []
    for i in range(n):
        # logits z_i = W h_i + b + z_i(given): the gradient wrt (b, W) at W = 0, b = 0
        loss = F.cross_entropy((h[i] @ W.t() + b + z[i])[None], y[i:i + 1])
        gb, gW = torch.autograd.grad(loss, (b, W))
        grads.append(torch.cat([gb, gW.reshape(-1)]))
    G = torch.stack(grads) if grads else torch.zeros(0, C * (D + 1), dtype=z.dtype)
    mean = torch.zeros(C, C * (D + 1), dtype=z.dtype)
    var = torch.zeros_like(mean)
    for k in range(C):
        Gk = G[y == k]
        if len(Gk):
            mean[k] = Gk.mean(0)
            var[k] = Gk.var(0, unbiased=False)
    return mean, var


@pytest.mark.parametrize("n,C,D", [(1, 1, 1), (5, 3, 4), (17, 4, 7), (9, 6, 2), (0, 3, 2)])
def test_reference_is_the_per_sample_definition(n, C, D):
    h, z, y = problem(n, C, D, seed=n + C + D)
    mean, var = R.gradient_moments(h, z, y)
    m_ref, v_ref = per_sample_moments(h, z, y)
    torch.testing.assert_close(mean, m_ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(var, v_ref, atol=1e-12, rtol=1e-10)


def test_empty_class_rows_are_zero_and_singletons_have_zero_variance():
    h, z, _ = problem(4, 5, 3)
    y = torch.tensor([0, 0, 2, 4])
    mean, var = R.gradient_moments(h, z, y)
    assert mean[1].abs().sum() == 0 and mean[3].abs().sum() == 0
    assert var[2].abs().max() < 1e-14 and var[4].abs().max() < 1e-14
    assert mean[0].abs().sum() > 0 and var[0].abs().sum() > 0


@pytest.mark.parametrize("n,C,D", [(6, 3, 4), (11, 5, 3), (1, 2, 2)])
def test_closed_form_backward_is_autograd_of_the_reference(n, C, D):
    h, z, y = problem(n, C, D, seed=3)
    h.requires_grad_(True)
    z.requires_grad_(True)
    mean, var = R.gradient_moments(h, z, y)
    g = torch.Generator().manual_seed(1)
    gm = torch.randn(mean.shape, generator=g, dtype=mean.dtype)
    gv = torch.randn(var.shape, generator=g, dtype=var.dtype)
    auto = torch.autograd.grad((mean * gm).sum() + (var * gv).sum(), (h, z))
    closed = R.gradient_moments_backward(gm, gv, h.detach(), z.detach(), y, mean.detach())
    for a, c in zip(auto, closed):
        torch.testing.assert_close(c, a, atol=1e-12, rtol=1e-10)


# ---- every backend against the reference -----------------------------------------------------

@only("reference", "cpu", "triton")
def test_gradcheck_float64(backend, device):
    # the interpreter runs each program in Python: the smallest problem with two members per class
    h, z, y = problem(4, 2, 2, seed=5) if backend == "triton" else problem(7, 3, 4, seed=5)
    h, z, y = h.to(device).requires_grad_(True), z.to(device).requires_grad_(True), y.to(device)
    fn = lambda hh, zz: ops.gradient_moments(hh, zz, y, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h, z), eps=1e-6, atol=1e-7)


def _check_backend(backend, device, n, C, D, dtype, seed):
    """Forward and backward on the backend's device against the float64 reference on the CPU."""
    h, z, y = problem(n, C, D, dtype, seed)
    hd = h.to(device).requires_grad_(True)
    zd = z.to(device).requires_grad_(True)
    mean, var = ops.gradient_moments(hd, zd, y.to(device), backend=backend)
    m_ref, v_ref = R.gradient_moments(h.double(), z.double(), y)
    assert mean.device.type == device and mean.dtype == dtype and mean.shape == (C, C * (D + 1))
    torch.testing.assert_close(mean.double().cpu(), m_ref, **TOL[dtype])
    torch.testing.assert_close(var.double().cpu(), v_ref, **TOL[dtype])
    g = torch.Generator().manual_seed(seed + 1)
    gm = torch.randn(mean.shape, generator=g, dtype=torch.float64)
    gv = torch.randn(var.shape, generator=g, dtype=torch.float64)
    if n:
        loss = (mean * gm.to(device, dtype)).sum() + (var * gv.to(device, dtype)).sum()
        gh, gz = torch.autograd.grad(loss, (hd, zd))
        rh, rz = R.gradient_moments_backward(gm, gv, h.double(), z.double(), y, m_ref)
        assert gh.dtype == dtype and gz.dtype == dtype
        torch.testing.assert_close(gh.double().cpu(), rh, **TOL[dtype])
        torch.testing.assert_close(gz.double().cpu(), rz, **TOL[dtype])


SHAPES = dict(n=st.integers(0, 40), C=st.integers(1, 9), D=st.integers(1, 40),
              dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 1000))
# the Triton interpreter runs one program at a time: smaller shapes, fewer examples
SMALL = dict(SHAPES, n=st.integers(0, 12), C=st.integers(1, 4), D=st.integers(1, 20))


@only("cpu")
@settings(max_examples=25)
@given(**SHAPES)
def test_cpu_matches_reference(backend, device, n, C, D, dtype, seed):
    _check_backend(backend, device, n, C, D, dtype, seed)


@only("triton")
@settings(max_examples=6)
@given(**SMALL)
def test_triton_matches_reference(backend, device, n, C, D, dtype, seed):
    _check_backend(backend, device, n, C, D, dtype, seed)


# On CUDA tensors (the compiled CUDA kernels, and Triton compiled for the GPU): fixed shapes from
# empty to a class of 300 with 130 embedding dimensions.
GPU_SHAPES = [(0, 3, 2), (1, 1, 1), (5, 3, 4), (17, 4, 7), (64, 10, 33), (300, 7, 130)]


@only("cuda", "triton")
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,C,D", GPU_SHAPES)
def test_gpu_shapes_match_reference(backend, device, n, C, D, dtype):
    _check_backend(backend, device, n, C, D, dtype, seed=n + C + D)


@only("cpu", "triton")
def test_backend_backward_function_matches_reference(backend, device):
    h, z, y = problem(13, 4, 9, seed=7)
    mean, _ = R.gradient_moments(h, z, y)
    g = torch.Generator().manual_seed(2)
    gm, gv = torch.randn(mean.shape, generator=g, dtype=h.dtype), torch.randn(mean.shape, generator=g, dtype=h.dtype)
    on = [t.to(device) for t in (gm, gv, h, z, y, mean)]
    fn = ops.resolve("gradient_moments_backward", backend, on[2])[1]
    for a, b in zip(fn(*on), R.gradient_moments_backward(gm, gv, h, z, y, mean)):
        torch.testing.assert_close(a.cpu(), b, atol=1e-12, rtol=1e-10)


@only("cpu", "triton")
def test_half_inputs_and_grad_of_only_the_mean(backend, device):
    h, z, y = problem(12, 3, 5, torch.float32, seed=9)
    h, z, yd = h.to(device), z.to(device), y.to(device)
    m16, _ = ops.gradient_moments(h.to(torch.bfloat16), z.to(torch.bfloat16), yd, backend=backend)
    assert m16.dtype == torch.bfloat16
    h.requires_grad_(True)
    mean, _ = ops.gradient_moments(h, z, yd, backend=backend)
    (gh,) = torch.autograd.grad(mean.sum(), (h,))
    h2 = h.detach().cpu().double().requires_grad_(True)
    (rh,) = torch.autograd.grad(R.gradient_moments(h2, z.cpu().double(), y)[0].sum(), (h2,))
    torch.testing.assert_close(gh.double().cpu(), rh, atol=1e-5, rtol=1e-4)


@only("reference", "cpu", "triton", "cuda")
def test_bad_labels_raise(backend, device):
    h, z, _ = (t.to(device) for t in problem(4, 3, 2))
    with pytest.raises((ValueError, RuntimeError), match="labels"):
        ops.gradient_moments(h, z, torch.tensor([0, 1, 3, 0], device=device), backend=backend)
    with pytest.raises((ValueError, RuntimeError), match="embeddings"):
        ops.gradient_moments(h[:3], z, torch.tensor([0, 1, 2, 0], device=device), backend=backend)
