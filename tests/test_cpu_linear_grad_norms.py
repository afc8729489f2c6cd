"""The compiled per-sample nn.Linear gradient norms (csrc/linear_grad_norms.cpp) against the
reference, on both of its forms (ghost norm, materialised) and the rank-one case; and GraNd with
layers="all" against per-sample autograd on a tiny network (the paper's definition)."""
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from torch import nn

import lcmat
import lcmat.reference as R
from lcmat import csrc, ops

pytestmark = pytest.mark.skipif(not csrc.available("cpu"), reason="lcmat._C is not built")


@given(N=st.integers(0, 9), T=st.integers(1, 40), d_in=st.integers(1, 24), d_out=st.integers(1, 24),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_linear_grad_norms_matches_reference(N, T, d_in, d_out, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(N, T, d_in, generator=gen, dtype=torch.float64).to(dtype)
    G = torch.randn(N, T, d_out, generator=gen, dtype=torch.float64).to(dtype)
    got = ops.linear_grad_norms(A, G, backend="cpu")
    assert got.shape == (N,) and got.dtype == dtype
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got, R.linear_grad_norms(A, G), rtol=rtol, atol=1e-5 * T)


@pytest.mark.parametrize("T,d_in,d_out", [(2, 300, 300), (600, 3, 4), (1, 50, 70), (70, 40, 40)])
def test_both_forms_and_chunks(T, d_in, d_out):
    """Ghost (T (d_in + d_out) <= d_in d_out), materialised, rank one, and several chunks."""
    N = 3 if T == 600 else 40
    gen = torch.Generator().manual_seed(T)
    A = torch.randn(N, T, d_in, generator=gen, dtype=torch.float64)
    G = torch.randn(N, T, d_out, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(ops.linear_grad_norms(A, G, backend="cpu"), R.linear_grad_norms(A, G), rtol=1e-10, atol=0.0)


def test_two_dimensional_inputs_and_bad_shapes():
    A, G = torch.randn(5, 3), torch.randn(5, 4)
    torch.testing.assert_close(ops.linear_grad_norms(A, G, backend="cpu"),
                               A.square().sum(1) * G.square().sum(1), rtol=1e-5, atol=0.0)
    with pytest.raises(ValueError, match="activations, grad_outputs"):
        ops.linear_grad_norms(torch.randn(5, 2, 3), torch.randn(5, 3, 4), backend="cpu")


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


def test_per_sample_grad_norms_cpu_matches_autograd():
    torch.manual_seed(0)
    model = _Seq().double()
    x, y = torch.randn(7, 5, 6, dtype=torch.float64), torch.randint(0, 3, (7,))
    got = ops.per_sample_grad_norms(model, x, y, nn.CrossEntropyLoss(reduction="none"), backend="cpu")
    torch.testing.assert_close(got, _autograd_norms(model, x, y), rtol=1e-10, atol=0.0)


class _Data(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_grand_all_layers_picks_largest_whole_network_norms():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(60, 8), torch.arange(60) % 4
    selector = lcmat.GraNd(fraction=0.25, layers="all", backend="cpu", progress=False)
    coreset = selector.select(model, _Data(x, y), batch_size=16)
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
