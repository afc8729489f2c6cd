"""The compiled extension as a PyTorch op library, across families: every op of torch.ops.lcmat
registered with a schema and a fake kernel (opcheck, static and dynamic shapes), a selection step
under torch.compile, dispatch to the cpu backend, bfloat16 inputs, a missing extension, and CUDA
ops refusing a CPU tensor beside CUDA ones. Each family's values are checked in its own file."""
import pytest
import torch

import lcmat.reference as R
from backends import kernels, last_layer_inputs, only

csrc = pytest.importorskip("lcmat.csrc")
if not csrc.available("cpu"):
    pytest.skip("the compiled extension lcmat._C is not built", allow_module_level=True)


def random_dist(n, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    return torch.cdist(x, x).to(dtype)


def distance_inputs(n, C, D, dtype, seed):
    H, Z, y, s = last_layer_inputs(n, C, D, torch.float64, seed)
    e, q = R.last_layer_factors(Z, y)
    return H.to(dtype), e.to(dtype), q.to(dtype), s.to(dtype)


def _op_samples():
    """(op name, arguments) for every op of torch.ops.lcmat, small float32 and float64 inputs."""
    samples = []
    for dtype in (torch.float32, torch.float64):
        H, Z, y, s = last_layer_inputs(13, 4, 6, dtype, 0)
        e, q = R.last_layer_factors(Z, y)
        coords = torch.tensor([0, 5, 11, 27])
        dist = random_dist(13, 3, dtype, 0)
        a, b, M = torch.ones(13, dtype=dtype), torch.full((5,), 13 / 5, dtype=dtype), torch.rand(13, 5, dtype=dtype)
        x, mu = torch.rand(13, 6, dtype=dtype), torch.rand(5, 6, dtype=dtype)
        samples += [
            ("last_layer_factors", (Z, y)),
            ("last_layer_grad_norms", (H, Z, y, s)),
            ("curvature_moments", (H, q, s.double())),
            ("gradient_distance", (H, e, None)),
            ("pairwise_l1", (H, None)),
            ("pairwise_l1", (H, H[:4])),
            ("hessian_diag_coords", (H, q, coords, s)),
            ("lcmat_distance", (H, e, q, coords, 0.5, None)),
            ("facility_location_greedy", (dist, 4, None, True)),
            ("facility_location_greedy_batch", ([dist, dist[:6, :6]], [4, 2], None, True)),
            ("sinkhorn_log", (a, b, M, 0.5, 50, 1e-6, 1)),
            ("sinkhorn_log", (a.repeat(2, 1), b.repeat(2, 1), M.repeat(2, 1, 1), 0.5, 50, 1e-6, 1)),
            ("sinkhorn_log_ragged", (a, b, [0, 6, 13], [0, 2, 5], 0.5, torch.rand(6 * 2 + 7 * 3, dtype=dtype),
                                     None, None, 50, 1e-6, 1)),
            ("sinkhorn_log_ragged", (a, b, [0, 6, 13], [0, 2, 5], 0.5, None, x, mu, 50, 1e-6, 1)),
            ("fdmat_transform", (x, 0.5, 1e-6)),
            ("prototype_cost", (x, mu)),
            ("fdmat_scores", (M, torch.rand(13, dtype=dtype), torch.rand(5, dtype=dtype), 0.5)),
            ("graph_cut_greedy", (x @ x.T, 4, 1.0, True)),
            ("log_determinant_greedy", (x @ x.T, 4, 1.0, False)),
            ("sinkhorn_plan", (torch.rand(13, dtype=dtype), torch.rand(5, dtype=dtype), M, 0.5)),
            ("sinkhorn_plan", (torch.rand(2, 13, dtype=dtype), torch.rand(2, 5, dtype=dtype), M.repeat(2, 1, 1), 0.5)),
            ("linear_grad_norms", (torch.rand(3, 4, 6, dtype=dtype), torch.rand(3, 4, 5, dtype=dtype))),
            ("linear_grad_norms", (torch.rand(3, 40, 2, dtype=dtype), torch.rand(3, 40, 3, dtype=dtype))),
            ("gradient_moments", (H, Z, y)),
            ("gradient_moments_backward", (torch.rand(4, 28, dtype=dtype), torch.rand(4, 28, dtype=dtype), H, Z, y,
                                           R.gradient_moments(H, Z, y)[0])),
        ]
    return samples


def test_every_op_has_a_sample_for_opcheck():
    registered = {op.split("::")[1] for op in torch._C._dispatch_get_all_op_names() if op.startswith("lcmat::")}
    assert {name for name, _ in _op_samples()} == registered


@pytest.mark.parametrize("name,args", _op_samples(), ids=lambda v: v if isinstance(v, str) else "")
def test_op_registration_and_fake_shapes(name, args):
    """torch.library.opcheck: the schema, and the fake kernel (what torch.compile traces with)
    gives the real kernel's shapes and dtypes, static and dynamic."""
    torch.library.opcheck(getattr(torch.ops.lcmat, name).default, args)


def test_torch_compile_fullgraph_matches_eager():
    """A selection step under torch.compile (no graph break): factors, distances, greedy."""
    def step(h, z, y):
        e, q = csrc.last_layer_factors(z, y)
        dist = csrc.lcmat_distance(h, e, q, torch.tensor([1, 3, 8]), 0.5)
        picks, objective, _ = csrc.facility_location_greedy(dist, 5, None, True)
        return dist, picks, objective
    H, Z, y, _ = last_layer_inputs(40, 3, 7, torch.float32, 1)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    for got, want in zip(compiled(H, Z, y), step(H, Z, y)):
        assert torch.equal(got, want)


def test_ops_selects_cpu_backend():
    import lcmat.ops as ops
    a = torch.randn(4, 3)
    assert ops.resolve("pairwise_l1", None, a)[0] == "cpu"
    torch.testing.assert_close(ops.pairwise_l1(a, backend="cpu"), R.pairwise_l1(a))


def test_bfloat16_runs_in_float32():
    H, e, q, _ = distance_inputs(9, 3, 4, torch.float64, 2)
    out = csrc.gradient_distance(H.bfloat16(), e.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), R.gradient_distance(H, e), rtol=0.05, atol=0.05)


def test_missing_extension_warns_once_and_ops_fall_back():
    import subprocess
    import sys
    code = ("import sys, warnings; sys.modules['lcmat._C'] = None; warnings.simplefilter('always')\n"
            "import torch, lcmat.csrc as C, lcmat.ops as ops\n"
            "print(C.available('cpu'), ops.resolve('pairwise_l1', None, torch.zeros(2, 2))[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "reference"]
    assert out.stderr.count("did not load") == 1


@only("cuda")
def test_cuda_ops_reject_a_cpu_tensor_beside_cuda_ones(backend):
    """The dispatcher sends an op with any CUDA argument to its CUDA kernel: a CPU tensor beside
    CUDA ones is a ValueError naming it, never a host pointer handed to a kernel."""
    csrc = kernels(backend)
    H, Z, y, s = last_layer_inputs(20, 3, 5, torch.float32, 0)
    e, q = R.last_layer_factors(Z, y)
    dev = torch.device("cuda")
    with pytest.raises(ValueError, match="embeddings: must be on cuda"):
        csrc.last_layer_grad_norms(H, Z.to(dev), y.to(dev))
    with pytest.raises(ValueError, match="scale: must be on cuda"):
        csrc.last_layer_grad_norms(H.to(dev), Z.to(dev), y.to(dev), s)
    with pytest.raises(ValueError, match="embeddings: must be on cuda"):
        csrc.gradient_distance(H, e.to(dev))
    with pytest.raises(ValueError, match="q: must be on cuda"):
        csrc.lcmat_distance(H.to(dev), e.to(dev), q, torch.tensor([0, 4]), 0.5)
    with pytest.raises(ValueError, match="b: must be on cuda"):
        csrc.pairwise_l1(H.to(dev), H)
    with pytest.raises(ValueError, match="prototypes: must be on cuda"):
        csrc.prototype_cost(H.to(dev), H[:3])
    with pytest.raises(ValueError, match="f: must be on cuda"):
        csrc.fdmat_scores(Z.abs().to(dev), torch.zeros(20), torch.zeros(3, device=dev), 0.5)
    a, b = torch.full((20,), 0.05), torch.full((3,), 1 / 3)
    with pytest.raises(ValueError, match="a: must be on cuda"):
        csrc.sinkhorn_log(a, b.to(dev), Z.abs().to(dev), 0.5)


