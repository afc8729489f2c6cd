"""Per-sample nn.Linear gradient norms: reference against torch.func, Triton against the reference."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.func import functional_call, grad, vmap

import lcmat.reference as R  # the functions of lcmat/reference/linear_grad_norms.py

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _vmap_norms(model, inputs, targets, loss_fn):
    """||per-sample gradient|| over the nn.Linear parameters, by torch.func (vmap of grad)."""
    names = {f"{prefix}.{name}" if prefix else name
             for prefix, m in model.named_modules() if isinstance(m, nn.Linear)
             for name, p in m.named_parameters(recurse=False) if p.requires_grad}
    params = {k: v.detach() for k, v in model.named_parameters() if k in names}
    frozen = {k: v.detach() for k, v in model.named_parameters() if k not in names}

    def one(p, xi, yi):
        return loss_fn(functional_call(model, {**p, **frozen}, (xi[None],)), yi[None]).sum()
    grads = vmap(grad(one), in_dims=(None, 0, 0))(params, inputs, targets)
    return sum(v.reshape(len(inputs), -1).square().sum(1) for v in grads.values()).sqrt()


class _SequenceNet(nn.Module):
    """Linear layers on [N, T, d] inputs, one of them applied twice (weight sharing), one frozen,
    one without bias, and a non-Linear parameter that must not count."""

    def __init__(self, d_in=5, width=7, classes=3):
        super().__init__()
        self.embed = nn.Linear(d_in, width)
        self.shared = nn.Linear(width, width)
        self.frozen = nn.Linear(width, width)
        self.frozen.requires_grad_(False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes, bias=False)

    def forward(self, x):
        h = torch.tanh(self.embed(x))
        h = torch.tanh(self.shared(torch.tanh(self.shared(h))))
        h = self.norm(self.frozen(h))
        return self.head(h).mean(dim=1)


def _loss(out, y):
    return nn.functional.cross_entropy(out, y, reduction="none")


def test_reference_matches_torch_func():
    torch.manual_seed(0)
    model = _SequenceNet().double().to(DEV)
    x = torch.randn(6, 4, 5, dtype=torch.float64, device=DEV)
    y = torch.randint(0, 3, (6,), device=DEV)
    torch.testing.assert_close(R.per_sample_grad_norms(model, x, y, _loss),
                               _vmap_norms(model, x, y, _loss), rtol=1e-10, atol=1e-12)


def test_reference_loss_must_be_per_sample():
    model = nn.Linear(3, 2).to(DEV)
    x, y = torch.randn(4, 3, device=DEV), torch.randint(0, 2, (4,), device=DEV)
    with pytest.raises(ValueError, match="loss_fn"):
        R.per_sample_grad_norms(model, x, y, nn.CrossEntropyLoss())


def test_reference_layer_norms_definition():
    A = torch.randn(3, 4, 5, dtype=torch.float64)
    G = torch.randn(3, 4, 2, dtype=torch.float64)
    expected = torch.stack([(A[i].T @ G[i]).square().sum() for i in range(3)])
    torch.testing.assert_close(R.linear_grad_norms(A, G), expected)
    torch.testing.assert_close(R.linear_grad_norms(A[:, 0], G[:, 0]), R.linear_grad_norms(A[:, :1], G[:, :1]))


try:  # the reference tests above run without triton; the kernel tests below need it
    from lcmat import triton_kernels as T
    from lcmat.triton_kernels.linear_grad_norms import linear_grad_norms_with, use_ghost
    HAVE_TRITON = T.available("triton")
except ImportError:
    HAVE_TRITON = False

needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton backend unavailable")


@needs_triton
@settings(max_examples=8)
@given(n=st.integers(1, 4), t=st.integers(1, 37), d_in=st.integers(1, 35), d_out=st.integers(1, 35),
       ghost=st.sampled_from([True, False, None]), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 99))
def test_kernels_match_reference(n, t, d_in, d_out, ghost, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, t, d_in, generator=g, dtype=torch.float64).to(dtype).to(DEV)
    G = torch.randn(n, t, d_out, generator=g, dtype=torch.float64).to(dtype).to(DEV)
    out = linear_grad_norms_with(A, G, ghost)
    ref = R.linear_grad_norms(A.double(), G.double())
    assert out.dtype == dtype and out.shape == (n,)
    # The ghost form sums signed products: its error scales with sum |AA^T| |GG^T|.
    bound = torch.einsum("nts,nts->n", (A @ A.transpose(1, 2)).abs().double(),
                         (G @ G.transpose(1, 2)).abs().double())
    eps = torch.finfo(dtype).eps
    assert bool(((out.double() - ref).abs() <= 50 * eps * (bound + ref)).all())


@needs_triton
def test_kernel_choice_and_layouts():
    assert use_ghost(4, 64, 64) and not use_ghost(256, 16, 16)
    A = torch.randn(3, 40, 6, dtype=torch.float64, device=DEV).transpose(1, 2)  # [3, 6, 40] view
    G = torch.randn(3, 6, 9, dtype=torch.float64, device=DEV)
    ref = R.linear_grad_norms(A, G)
    for ghost in (True, False):
        torch.testing.assert_close(linear_grad_norms_with(A, G, ghost), ref, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(T.linear_grad_norms(A[:, 0], G[:, 0]), R.linear_grad_norms(A[:, 0], G[:, 0]))


@needs_triton
def test_per_sample_grad_norms_match_torch_func():
    torch.manual_seed(1)
    model = _SequenceNet().double().to(DEV)
    x = torch.randn(5, 18, 5, dtype=torch.float64, device=DEV)
    y = torch.randint(0, 3, (5,), device=DEV)
    torch.testing.assert_close(T.per_sample_grad_norms(model, x, y, _loss),
                               _vmap_norms(model, x, y, _loss), rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
@needs_triton
def test_gpu_transformer_sized_layers():
    for t, d_in, d_out in ((128, 768, 3072), (2048, 64, 64)):
        A = torch.randn(8, t, d_in, device=DEV)
        G = torch.randn(8, t, d_out, device=DEV)
        torch.testing.assert_close(T.linear_grad_norms(A, G), R.linear_grad_norms(A.double(), G.double()).float(),
                                   rtol=1e-4, atol=0.0)
