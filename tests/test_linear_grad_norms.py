"""Per-sample nn.Linear gradient norms (linear_grad_norms, per_sample_grad_norms).

First the reference (lcmat.reference.linear_grad_norms) against torch.func (vmap of grad) and the
definition; then every backend (the `backend` fixture: cpu, triton, cuda) against the reference,
on both of the kernel's forms (ghost norm, materialised) and the rank-one case; and GraNd with
layers="all" against per-sample autograd on a tiny network (the paper's definition).
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, grad, vmap

import lcmat
import lcmat.reference as R  # the functions of lcmat/reference/linear_grad_norms.py
from backends import kernels, only
from lcmat import ops
from helpers import PairDataset

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the reference runs on either

# ---- the reference against torch.func and the definition -------------------------------------

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



# ---- every backend against the reference -----------------------------------------------------

@only("cpu")
@given(N=st.integers(0, 9), T=st.integers(1, 40), d_in=st.integers(1, 24), d_out=st.integers(1, 24),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_linear_grad_norms_matches_reference(backend, N, T, d_in, d_out, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(N, T, d_in, generator=gen, dtype=torch.float64).to(dtype)
    G = torch.randn(N, T, d_out, generator=gen, dtype=torch.float64).to(dtype)
    got = ops.linear_grad_norms(A, G, backend=backend)
    assert got.shape == (N,) and got.dtype == dtype
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got, R.linear_grad_norms(A, G), rtol=rtol, atol=1e-5 * T)


@only("cpu")
@pytest.mark.parametrize("T,d_in,d_out", [(2, 300, 300), (600, 3, 4), (1, 50, 70), (70, 40, 40)])
def test_both_forms_and_chunks(backend, T, d_in, d_out):
    """Ghost (T (d_in + d_out) <= d_in d_out), materialised, rank one, and several chunks."""
    N = 3 if T == 600 else 40
    gen = torch.Generator().manual_seed(T)
    A = torch.randn(N, T, d_in, generator=gen, dtype=torch.float64)
    G = torch.randn(N, T, d_out, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(ops.linear_grad_norms(A, G, backend=backend), R.linear_grad_norms(A, G), rtol=1e-10, atol=0.0)


@only("cpu", "triton")
def test_two_dimensional_inputs_and_bad_shapes(backend, device):
    A, G = torch.randn(5, 3, device=device), torch.randn(5, 4, device=device)
    torch.testing.assert_close(ops.linear_grad_norms(A, G, backend=backend),
                               A.square().sum(1) * G.square().sum(1), rtol=1e-5, atol=0.0)
    with pytest.raises(ValueError, match="activations, grad_outputs"):
        ops.linear_grad_norms(torch.randn(5, 2, 3, device=device), torch.randn(5, 3, 4, device=device),
                              backend=backend)


class _Seq(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 9)
        self.b = nn.Linear(9, 9)
        self.head = nn.Linear(9, 3)

    def forward(self, x):
        h = torch.relu(self.b(torch.relu(self.a(x))))
        h = torch.relu(self.b(h))  # b applied twice: its per-sample gradient is the sum
        return self.head(h.mean(1))


def _autograd_norms(model, x, y):
    """The definition: one backward pass per sample, every parameter."""
    out = []
    for i in range(len(x)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1], reduction="sum").backward()
        out.append(sum(p.grad.square().sum() for p in model.parameters()).sqrt())
    return torch.stack(out)


@only("cpu", "triton")
def test_per_sample_grad_norms_match_autograd(backend, device):
    torch.manual_seed(0)
    model = _Seq().double().to(device)
    x = torch.randn(7, 5, 6, dtype=torch.float64, device=device)
    y = torch.randint(0, 3, (7,), device=device)
    got = ops.per_sample_grad_norms(model, x, y, nn.CrossEntropyLoss(reduction="none"), backend=backend)
    torch.testing.assert_close(got, _autograd_norms(model, x, y), rtol=1e-10, atol=0.0)


# Triton (interpreted on the CPU, compiled on a GPU): 8 examples, both forms forced.
def triton_forms():
    from lcmat.triton_kernels.linear_grad_norms import linear_grad_norms_with, use_ghost
    return linear_grad_norms_with, use_ghost


@only("triton")
@settings(max_examples=8)
@given(n=st.integers(1, 4), t=st.integers(1, 37), d_in=st.integers(1, 35), d_out=st.integers(1, 35),
       ghost=st.sampled_from([True, False, None]), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 99))
def test_kernels_match_reference(backend, device, n, t, d_in, d_out, ghost, dtype, seed):
    linear_grad_norms_with, _ = triton_forms()
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, t, d_in, generator=g, dtype=torch.float64).to(dtype).to(device)
    G = torch.randn(n, t, d_out, generator=g, dtype=torch.float64).to(dtype).to(device)
    out = linear_grad_norms_with(A, G, ghost)
    ref = R.linear_grad_norms(A.double(), G.double())
    assert out.dtype == dtype and out.shape == (n,)
    # The ghost form sums signed products: its error scales with sum |AA^T| |GG^T|.
    bound = torch.einsum("nts,nts->n", (A @ A.transpose(1, 2)).abs().double(),
                         (G @ G.transpose(1, 2)).abs().double())
    eps = torch.finfo(dtype).eps
    assert bool(((out.double() - ref).abs() <= 50 * eps * (bound + ref)).all())


@only("triton")
def test_kernel_choice_and_layouts(backend, device):
    kern = kernels(backend)
    linear_grad_norms_with, use_ghost = triton_forms()
    assert use_ghost(4, 64, 64) and not use_ghost(256, 16, 16)
    A = torch.randn(3, 40, 6, dtype=torch.float64, device=device).transpose(1, 2)  # [3, 6, 40] view
    G = torch.randn(3, 6, 9, dtype=torch.float64, device=device)
    ref = R.linear_grad_norms(A, G)
    for ghost in (True, False):
        torch.testing.assert_close(linear_grad_norms_with(A, G, ghost), ref, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(kern.linear_grad_norms(A[:, 0], G[:, 0]), R.linear_grad_norms(A[:, 0], G[:, 0]))


@only("triton")
def test_per_sample_grad_norms_match_torch_func(backend, device):
    kern = kernels(backend)
    torch.manual_seed(1)
    model = _SequenceNet().double().to(device)
    x = torch.randn(5, 18, 5, dtype=torch.float64, device=device)
    y = torch.randint(0, 3, (5,), device=device)
    torch.testing.assert_close(kern.per_sample_grad_norms(model, x, y, _loss),
                               _vmap_norms(model, x, y, _loss), rtol=1e-10, atol=1e-12)


@only("triton")
@pytest.mark.gpu
def test_gpu_transformer_sized_layers(backend, device):
    kern = kernels(backend)
    for t, d_in, d_out in ((128, 768, 3072), (2048, 64, 64)):
        A = torch.randn(8, t, d_in, device=device)
        G = torch.randn(8, t, d_out, device=device)
        torch.testing.assert_close(kern.linear_grad_norms(A, G), R.linear_grad_norms(A.double(), G.double()).float(),
                                   rtol=1e-4, atol=0.0)


# ---- GraNd on whole networks (the selector these kernels serve) -------------------------------



@only("cpu")
def test_grand_all_layers_picks_largest_whole_network_norms(backend):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(60, 8), torch.arange(60) % 4
    selector = lcmat.GraNd(fraction=0.25, layers="all", backend=backend, progress=False)
    coreset = selector.select(model, PairDataset(x, y), batch_size=16)
    norms = _autograd_norms(model, x, y).numpy()
    np.testing.assert_allclose(coreset.scores, norms, rtol=1e-4)
    expected = np.concatenate([np.flatnonzero(y.numpy() == c)[np.argsort(-norms[y.numpy() == c], kind="stable")[:4]]
                               for c in range(4)])
    np.testing.assert_array_equal(coreset.indices, np.sort(expected))
    assert model.training  # the model's mode is restored


def test_grand_layers_validation():
    with pytest.raises(ValueError, match="layers"):
        lcmat.GraNd(layers="some")
    with pytest.raises(ValueError, match="layers"):
        lcmat.GraNd(fraction=0.5, layers="all").select_features(embeddings=np.zeros((4, 2)), logits=np.zeros((4, 2)),
                                                  labels=np.array([0, 1, 0, 1]))


