"""gradient_moments on CUDA tensors: the compiled CUDA kernels (backend "cuda") and the Triton
kernels compiled for the GPU, forward and backward, against the reference in float64 on the CPU.
Skipped without a CUDA device (bench/gpu_check.sh runs them)."""
import pytest
import torch

from lcmat import ops
from lcmat import reference as R

TOL = {torch.float32: dict(atol=2e-5, rtol=2e-4), torch.float64: dict(atol=1e-11, rtol=1e-9)}
SHAPES = [(0, 3, 2), (1, 1, 1), (5, 3, 4), (17, 4, 7), (64, 10, 33), (300, 7, 130)]


def _problem(n, C, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, D, generator=g, dtype=torch.float64)
    z = 2.0 * torch.randn(n, C, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (n,), generator=g)
    return h, z, y


def _check_on_cuda(backend, n, C, D, dtype, seed):
    if backend not in ops.available_backends():
        pytest.skip(f"backend {backend!r} is not available")
    h, z, y = _problem(n, C, D, dtype, seed)
    dev = torch.device("cuda")
    hc = h.to(dev, dtype).requires_grad_(True)
    zc = z.to(dev, dtype).requires_grad_(True)
    mean, var = ops.gradient_moments(hc, zc, y.to(dev), backend=backend)
    m_ref, v_ref = R.gradient_moments(h, z, y)
    assert mean.device.type == "cuda" and mean.dtype == dtype and mean.shape == (C, C * (D + 1))
    torch.testing.assert_close(mean.double().cpu(), m_ref, **TOL[dtype])
    torch.testing.assert_close(var.double().cpu(), v_ref, **TOL[dtype])
    if n == 0:
        return
    g = torch.Generator().manual_seed(seed + 1)
    gm = torch.randn(mean.shape, generator=g, dtype=torch.float64)
    gv = torch.randn(var.shape, generator=g, dtype=torch.float64)
    loss = (mean * gm.to(dev, dtype)).sum() + (var * gv.to(dev, dtype)).sum()
    gh, gz = torch.autograd.grad(loss, (hc, zc))
    rh, rz = R.gradient_moments_backward(gm, gv, h, z, y, m_ref)
    torch.testing.assert_close(gh.double().cpu(), rh, **TOL[dtype])
    torch.testing.assert_close(gz.double().cpu(), rz, **TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,C,D", SHAPES)
def test_cuda_matches_reference(n, C, D, dtype):
    _check_on_cuda("cuda", n, C, D, dtype, seed=n + C + D)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,C,D", SHAPES)
def test_triton_matches_reference(n, C, D, dtype):
    _check_on_cuda("triton", n, C, D, dtype, seed=n + C + D)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_bad_labels_raise(backend):
    if backend not in ops.available_backends():
        pytest.skip(f"backend {backend!r} is not available")
    h, z, _ = _problem(4, 3, 2, torch.float64, 0)
    h, z = h.cuda(), z.cuda()
    with pytest.raises((ValueError, RuntimeError), match="labels"):
        ops.gradient_moments(h, z, torch.tensor([0, 1, 3, 0], device="cuda"), backend=backend)
    with pytest.raises((ValueError, RuntimeError), match="embeddings"):
        ops.gradient_moments(h[:3], z, torch.tensor([0, 1, 2, 0], device="cuda"), backend=backend)
