"""Whole-network per-sample gradient norms (`ops.per_sample_grad_norms`) against their definition,
one backward pass per sample over the parameters of every nn.Linear that require grad, in
float64, on every kind of network the op meets: MLP, sequence model, conv net with a linear head,
in-place activations after a layer, a layer called several times, layers without bias, frozen
layers, BatchNorm in eval and in train mode. Also: the backward pass forms no parameter
gradients, and the cpu kernel takes the cheaper exact form per layer."""
import copy

import pytest
import torch
from torch import nn
from torch.profiler import profile

from lcmat import csrc, ops
import lcmat.reference as R

LOSS = nn.CrossEntropyLoss(reduction="none")
BACKENDS = [b for b in ops.available_backends() if b in ("reference", "cpu", "triton")]
C = 3


def linear_params(model):
    """The parameters the op counts: those of nn.Linear modules that require grad."""
    return [p for m in model.modules() if isinstance(m, nn.Linear)
            for p in m.parameters(recurse=False) if p.requires_grad]


def definition_norms(model, x, y):
    """||grad_theta loss_i|| per sample: one forward and one backward pass per sample."""
    params = linear_params(model)
    out = []
    for i in range(len(y)):
        loss = nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out.append(sum(g.square().sum() for g in grads if g is not None))
    return torch.stack(out).sqrt()


class MeanOverPositions(nn.Module):
    def forward(self, x):
        return x.mean(dim=1)


class Recurrent(nn.Module):
    """h_t = tanh(W_h h_{t-1} + W_x x_t): both layers called T times, their per-sample gradients
    the sums over the calls."""
    def __init__(self, d=4, width=6):
        super().__init__()
        self.inp, self.hidden, self.head = nn.Linear(d, width), nn.Linear(width, width), nn.Linear(width, C)

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden.in_features, dtype=x.dtype)
        for t in range(x.shape[1]):
            h = torch.tanh(self.hidden(h) + self.inp(x[:, t]))
        return self.head(h)


class InPlaceChain(nn.Module):
    """In-place ops of several kinds straight after a layer, on 2-D and 3-D outputs."""
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 7), nn.Linear(7, 7), nn.Linear(7, C)

    def forward(self, x):
        h = self.a(x)
        h.mul_(1.5).add_(0.25).relu_()
        h = self.b(h)
        h.tanh_()
        return self.head(h.mean(dim=1))


class UnusedBranch(nn.Module):
    """A layer whose output does not reach the loss: its per-sample gradients are zero."""
    def __init__(self):
        super().__init__()
        self.a, self.aux, self.head = nn.Linear(5, 6), nn.Linear(6, 2), nn.Linear(6, C)

    def forward(self, x):
        h = torch.relu(self.a(x))
        self.aux(h)
        return self.head(h)


def frozen_mlp():
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6),
                          nn.Tanh(), nn.Linear(6, C))
    model[2].requires_grad_(False)     # a whole layer frozen: not counted, gradients flow through
    model[4].bias.requires_grad_(False)  # only the weight counts
    model[6].weight.requires_grad_(False)  # only the bias counts
    return model


# name: (model factory, input shape without N)
MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, C)), (5,)),
    "sequence": (lambda: nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(),
                                       MeanOverPositions(), nn.Linear(5, C)), (7, 4)),
    "conv-linear-head": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(),
                                               nn.Linear(3 * 3 * 3, 5), nn.ReLU(), nn.Linear(5, C)), (2, 5, 5)),
    "inplace-relu": (lambda: nn.Sequential(nn.Linear(5, 8), nn.ReLU(inplace=True), nn.Linear(8, 8),
                                           nn.ReLU(inplace=True), nn.Linear(8, C)), (5,)),
    "inplace-chain": (InPlaceChain, (6, 4)),
    "shared-recurrent": (Recurrent, (5, 4)),
    "shared-sequential": (lambda: (lambda shared: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), shared, nn.Tanh(),
                                                                shared, nn.Tanh(), nn.Linear(6, C)))(nn.Linear(6, 6)), (4,)),
    "no-bias": (lambda: nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 6, bias=False),
                                      nn.ReLU(), MeanOverPositions(), nn.Linear(6, C)), (5, 4)),
    "frozen": (frozen_mlp, (5,)),
    "unused-branch": (UnusedBranch, (5,)),
    "batchnorm-eval": (lambda: nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, C)), (5,)),
}


def make(name, n=6, seed=0):
    factory, shape = MODELS[name]
    torch.manual_seed(seed)
    model = factory().double().eval()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(n, *shape, dtype=torch.float64)
    y = torch.randint(0, C, (n,))
    return model, x, y


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(MODELS))
def test_matches_the_definition(name, backend):
    model, x, y = make(name)
    expected = definition_norms(model, x, y)
    got = ops.per_sample_grad_norms(model, x, y, LOSS, backend=backend)
    assert got.shape == (len(y),) and got.dtype == torch.float64
    assert (expected > 0).all()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_in_place_after_a_layer_is_not_the_same_as_out_of_place_by_accident():
    """The in-place models differ from their out-of-place twins only in the op's bookkeeping: the
    same weights give the same norms, so a gradient taken after the in-place op (at the
    activation instead of the layer output) would show here."""
    model, x, y = make("inplace-relu")
    twin = copy.deepcopy(model)
    twin[1].inplace = twin[3].inplace = False
    got = ops.per_sample_grad_norms(model, x, y, LOSS, backend=BACKENDS[-1])
    torch.testing.assert_close(got, ops.per_sample_grad_norms(twin, x, y, LOSS, backend=BACKENDS[-1]),
                               rtol=1e-12, atol=0.0)


def test_unused_layer_counts_zero_and_frozen_layers_are_skipped():
    model, x, y = make("unused-branch")
    without_aux = copy.deepcopy(model)
    without_aux.aux.requires_grad_(False)
    torch.testing.assert_close(ops.per_sample_grad_norms(model, x, y, LOSS),
                               ops.per_sample_grad_norms(without_aux, x, y, LOSS), rtol=1e-12, atol=0.0)
    model, x, y = make("mlp")
    model.requires_grad_(False)
    torch.testing.assert_close(ops.per_sample_grad_norms(model, x, y, LOSS), torch.zeros(len(y), dtype=torch.float64))


def per_sample_part_norms_batchnorm_train(model, x, y):
    """The train-mode definition: sample i's part of the batch gradient, i.e. the gradient of the
    summed loss with respect to a copy W + E_i of each linear layer's weights used by sample i
    alone (E_i = 0), for Linear -> BatchNorm1d (batch statistics) -> ReLU -> Linear."""
    lin1, bn, _, lin2 = model
    n = len(y)
    E = [torch.zeros(n, *lin.weight.shape, dtype=x.dtype, requires_grad=True) for lin in (lin1, lin2)]
    e = [torch.zeros(n, lin.out_features, dtype=x.dtype, requires_grad=True) for lin in (lin1, lin2)]
    h = torch.einsum("ni,noi->no", x, lin1.weight + E[0]) + lin1.bias + e[0]
    h = nn.functional.batch_norm(h, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    z = torch.einsum("ni,noi->no", torch.relu(h), lin2.weight + E[1]) + lin2.bias + e[1]
    grads = torch.autograd.grad(LOSS(z, y).sum(), E + e)
    return sum(g.flatten(1).square().sum(1) for g in grads).sqrt()


@pytest.mark.parametrize("backend", BACKENDS)
def test_batchnorm_train_mode_gives_each_samples_part_of_the_batch_gradient(backend):
    """In train mode BatchNorm mixes the samples: there is no per-sample gradient, and the op
    returns the norm of each sample's part of the summed loss's gradient (what it documents)."""
    model, x, y = make("batchnorm-eval")
    model.train()
    expected = per_sample_part_norms_batchnorm_train(model, x, y)
    torch.testing.assert_close(ops.per_sample_grad_norms(model, x, y, LOSS, backend=backend), expected,
                               rtol=1e-10, atol=1e-12)
    assert not torch.allclose(expected, definition_norms(model.eval(), x, y))


def count_ops(fn, names):
    with profile(record_shapes=True) as prof:
        fn()
    return [(e.name, e.input_shapes) for e in prof.events() if e.name in names]


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_forms_no_parameter_gradients(backend):
    """Three layers at T = 1: three forward GEMMs, two backward GEMMs (the input gradients of the
    second and third layers), and no d_out x d_in weight-gradient product."""
    model, x, y = make("mlp", n=5)
    gemms = count_ops(lambda: ops.per_sample_grad_norms(model, x, y, LOSS, backend=backend),
                      ("aten::mm", "aten::addmm", "aten::bmm"))
    assert sorted(name for name, _ in gemms) == ["aten::addmm"] * 3 + ["aten::mm"] * 2
    weight_shapes = {tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Linear)}
    for name, shapes in gemms:
        if name == "aten::mm":  # grad [N, d_out] @ W [d_out, d_in]: no [d_out, d_in] output
            assert shapes[0][0] == len(y)
    assert all(p.grad is None for p in model.parameters())
    assert weight_shapes  # the check above looked at real layers


@pytest.mark.skipif(not csrc.available("cpu"), reason="lcmat._C is not built")
@pytest.mark.parametrize("T,d_in,d_out,form", [
    (1, 6, 5, "rank-one"),
    (4, 8, 8, "ghost"),          # T (d_in + d_out) = 64 = d_in d_out: the boundary is ghost
    (5, 8, 8, "materialised"),
    (3, 40, 2, "materialised"),  # 126 > 80
    (2, 40, 3, "ghost"),         # 86 <= 120
])
def test_cpu_kernel_takes_the_cheaper_exact_form(T, d_in, d_out, form):
    """Per layer the cheaper of T^2 (d_in + d_out) (ghost) and T d_in d_out (materialised), read
    off the GEMMs the kernel runs; the value is the reference's either way."""
    n = 3
    A = torch.randn(n, T, d_in, dtype=torch.float64)
    G = torch.randn(n, T, d_out, dtype=torch.float64)
    got = []
    bmms = count_ops(lambda: got.append(ops.linear_grad_norms(A, G, backend="cpu")), ("aten::bmm",))
    torch.testing.assert_close(got[0], R.linear_grad_norms(A, G), rtol=1e-10, atol=0.0)
    shapes = [shape[0] for _, shape in bmms]
    expected = {"rank-one": [], "ghost": [[n, T, d_in], [n, T, d_out]],
                "materialised": [[n, d_in, T]]}[form]
    assert shapes == expected


def test_input_modified_in_place_after_the_layer_raises():
    """The first layer's backward node never runs (nothing below it is asked for), so autograd
    does not see its saved input change; the op does."""
    class Overwrites(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 5), nn.Linear(5, C)

        def forward(self, x):
            x = x * 1.0
            z = self.a(x)
            x.zero_()  # a's input changes after a read it
            return self.b(torch.tanh(z))
    torch.manual_seed(0)
    model = Overwrites().double()
    x, y = torch.randn(4, 4, dtype=torch.float64), torch.randint(0, C, (4,))
    with pytest.raises(ValueError, match="input of .* modified in place"):
        ops.per_sample_grad_norms(model, x, y, LOSS)


def test_without_gradient_edges_exact_out_of_place_and_refuses_in_place(monkeypatch):
    """torch without autograd.graph.get_gradient_edge: the outputs themselves are asked for,
    exact unless an in-place op rewrote one, which then raises instead of a wrong norm."""
    monkeypatch.delattr(torch.autograd.graph, "get_gradient_edge")
    model, x, y = make("sequence")
    torch.testing.assert_close(ops.per_sample_grad_norms(model, x, y, LOSS), definition_norms(model, x, y),
                               rtol=1e-10, atol=1e-12)
    model, x, y = make("inplace-relu")
    with pytest.raises(ValueError, match="modified in place"):
        ops.per_sample_grad_norms(model, x, y, LOSS)


def test_float32_matches_float64():
    model, x, y = make("sequence", n=9, seed=3)
    expected = ops.per_sample_grad_norms(model, x, y, LOSS, backend="reference")
    for backend in BACKENDS:
        got = ops.per_sample_grad_norms(copy.deepcopy(model).float(), x.float(), y, LOSS, backend=backend)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)
