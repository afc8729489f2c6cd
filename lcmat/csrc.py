"""The compiled backend ("cpu" and "cuda"): the kernels of `lcmat._C`, registered as torch custom
ops under `torch.ops.lcmat`, behind functions with the names and signatures of `lcmat.reference`.

Importing `lcmat._C` loads the library, whose static initialisers register the ops; the tensors'
device picks the CPU or CUDA kernel. When the extension is missing or fails to load, importing
this module warns once and `available()` is False, so `lcmat.ops` uses the reference.

Conversions done here: python numbers and None stay python (the schemas take `float?`), `scale`
takes the dtype of the main input, labels and coords become int64, ragged offsets become lists of
ints. float16/bfloat16 inputs run in float32 and the results are cast back.
"""
import warnings

import torch

from . import reference
from .reference.submodular import check_similarity
from .reference.linear_grad_norms import as_sequences, collect_linear_grad_norms

try:
    from . import _C  # noqa: F401  (registers torch.ops.lcmat.*)
    _LOAD_ERROR = None
except Exception as exc:  # ImportError, or an undefined symbol from a stale build
    _C = None
    _LOAD_ERROR = exc
    warnings.warn(f"lcmat.csrc: the compiled extension lcmat._C did not load ({exc}); "
                  "lcmat.ops will use the reference backend", RuntimeWarning, stacklevel=2)

_FLOAT = (torch.float32, torch.float64)


def available(backend="cpu"):
    """Whether this backend can run here: "cpu" once the extension loaded, "cuda" when it was
    also built with CUDA and a device exists."""
    if _C is None:
        return False
    if backend == "cpu":
        return True
    if backend == "cuda":
        return bool(getattr(_C, "WITH_CUDA", 0)) and torch.cuda.is_available()
    return False


def _ops():
    if _C is None:
        raise RuntimeError(f"lcmat.csrc: the compiled extension is not available ({_LOAD_ERROR})")
    return torch.ops.lcmat


def _compute_dtype(t):
    """The dtype the kernels run in for a floating tensor of this dtype."""
    return t.dtype if t.dtype in _FLOAT else torch.float32


def _as(t, dtype):
    return None if t is None else t.to(dtype)


def _back(out, dtype):
    """Cast floating outputs (a tensor or a tuple of them) back to `dtype`."""
    if isinstance(out, tuple):
        return tuple(_back(o, dtype) for o in out)
    return out.to(dtype) if out.is_floating_point() and out.dtype != dtype else out


# ---- last_layer -------------------------------------------------------------------------------

def last_layer_factors(logits, labels):
    dt = _compute_dtype(logits)
    return _back(_ops().last_layer_factors(logits.to(dt), labels), logits.dtype)


def last_layer_grad_norms(embeddings, logits, labels, scale=None):
    dt = _compute_dtype(logits)
    out = _ops().last_layer_grad_norms(embeddings.to(dt), logits.to(dt), labels, _as(scale, dt))
    return _back(out, logits.dtype)


# ---- lcmat_distance ---------------------------------------------------------------------------

def curvature_moments(embeddings, q, scale=None):
    return _ops().curvature_moments(embeddings, q, _as(scale, torch.float64))


def gradient_distance(embeddings, e, scale=None):
    dt = _compute_dtype(e)
    return _back(_ops().gradient_distance(embeddings.to(dt), e.to(dt), _as(scale, dt)), e.dtype)


def hessian_diag_coords(embeddings, q, coords, scale=None):
    dt = _compute_dtype(q)
    return _back(_ops().hessian_diag_coords(embeddings.to(dt), q.to(dt), coords, _as(scale, dt)), q.dtype)


def pairwise_l1(a, b=None, tile=256):
    """|| a_i - b_j ||_1, [n, m]; `tile` is accepted for the reference's signature (the kernel
    picks its own tiles)."""
    dt = _compute_dtype(a)
    return _back(_ops().pairwise_l1(a.to(dt), _as(b, dt)), a.dtype)


def lcmat_distance(embeddings, e, q, coords, rho, scale=None):
    dt = _compute_dtype(e)
    coords = torch.as_tensor(coords, dtype=torch.long)
    out = _ops().lcmat_distance(embeddings.to(dt), e.to(dt), q.to(dt), coords, float(rho), _as(scale, dt))
    return _back(out, e.dtype)


# ---- facility_location ------------------------------------------------------------------------

def facility_location_greedy(dist, k, L=None, lazy=False):
    """Greedy facility location; lazy and naive make the same picks (see csrc/cpu/facility_location.cpp)."""
    n = dist.shape[0]
    if dist.dim() != 2 or dist.shape[1] != n:
        raise ValueError(f"dist: expected a square n x n distance block, got shape {tuple(dist.shape)}")
    if not 0 <= k <= n:
        raise ValueError(f"k: must lie in [0, {n}], got {k}")
    dt = _compute_dtype(dist)
    L = None if L is None else float(L)
    return _back(_ops().facility_location_greedy(dist.to(dt), int(k), L, bool(lazy)), dist.dtype)


def facility_location_greedy_batch(dists, ks, L=None, lazy=False):
    """The greedy on many blocks in one call (on the CPU, blocks in parallel over the threads)."""
    dists, ks = reference.check_greedy_batch(dists, ks)
    if not dists:
        return []
    dt = _compute_dtype(dists[0])
    L = None if L is None else float(L)
    picks, objective, weights = _ops().facility_location_greedy_batch([d.to(dt) for d in dists], ks, L, bool(lazy))
    return [_back(out, dists[0].dtype) for out in zip(picks, objective, weights)]


# ---- sinkhorn ---------------------------------------------------------------------------------

def sinkhorn_log(a, b, M, reg, max_iter=1000, tol=1e-6, check_every=1):
    dt = _compute_dtype(M)
    f, g, n_iter, err = _back(_ops().sinkhorn_log(a.to(dt), b.to(dt), M.to(dt), float(reg), int(max_iter),
                                                  float(tol), int(check_every)), M.dtype)
    if M.dim() == 2:
        return f[0], g[0], n_iter[0], err[0]
    return f, g, n_iter, err


def sinkhorn_plan(f, g, M, reg):
    """The plan exp((f_i + g_j - M_ij) / reg) in one fused pass (csrc/sinkhorn_plan.cpp). The CUDA
    build has no kernel of its own for it: on CUDA tensors this is the reference's elementwise
    PyTorch, already memory-bound there."""
    if M.is_cuda:
        return reference.sinkhorn_plan(f, g, M, reg)
    dt = _compute_dtype(M)
    return _back(_ops().sinkhorn_plan(f.to(dt), g.to(dt), M.to(dt), float(reg)), M.dtype)


def _offsets(offsets, name):
    if isinstance(offsets, torch.Tensor):
        if offsets.is_floating_point():
            raise ValueError(f"{name}: must hold integers, got {offsets.dtype}")
        return [int(o) for o in offsets.tolist()]
    return [int(o) for o in offsets]


def sinkhorn_log_ragged(a, b, row_offsets, col_offsets, reg, cost=None, x=None, y=None,
                        max_iter=1000, tol=1e-6, check_every=1):
    if (cost is None) == (x is None or y is None):
        raise ValueError("cost, x, y: give either a stored `cost` or both features `x` and `y`")
    dt = _compute_dtype(a)
    row_offsets = reference.check_offsets("row_offsets", row_offsets, a.numel())
    col_offsets = reference.check_offsets("col_offsets", col_offsets, b.numel())
    out = _ops().sinkhorn_log_ragged(a.to(dt), b.to(dt), _offsets(row_offsets, "row_offsets"),
                                     _offsets(col_offsets, "col_offsets"), float(reg), _as(cost, dt),
                                     _as(x, dt), _as(y, dt), int(max_iter), float(tol), int(check_every))
    return _back(out, a.dtype)


# ---- fdmat ------------------------------------------------------------------------------------

def fdmat_transform(features, beta=0.5, eps=1e-6):
    if features.device.type != "cpu":  # no CUDA kernel: ATen on the device, as the reference
        return reference.fdmat_transform(features, beta, eps)
    dt = _compute_dtype(features)
    return _back(_ops().fdmat_transform(features.to(dt), float(beta), float(eps)), features.dtype)


def prototype_cost(x, prototypes):
    dt = _compute_dtype(x)
    return _back(_ops().prototype_cost(x.to(dt), prototypes.to(dt)), x.dtype)


def fdmat_scores(M, f, g, reg):
    dt = _compute_dtype(M)
    return _back(_ops().fdmat_scores(M.to(dt), f.to(dt), g.to(dt), float(reg)), M.dtype)


# ---- submodular -------------------------------------------------------------------------------

def graph_cut_greedy(sim, k, lam=1.0, lazy=False):
    """Greedy graph cut; lazy and naive make the same picks (see csrc/cpu/submodular.cpp)."""
    k = check_similarity(sim, k)
    if not lam >= 0:
        raise ValueError(f"lam: must be >= 0, got {lam}")
    dt = _compute_dtype(sim)
    return _back(_ops().graph_cut_greedy(sim.to(dt), k, float(lam), bool(lazy)), sim.dtype)


def log_determinant_greedy(sim, k, reg=1.0, lazy=False):
    """Greedy log det(S_AA + reg I) by incremental Cholesky; lazy and naive make the same picks."""
    k = check_similarity(sim, k)
    if not reg > 0:
        raise ValueError(f"reg: must be > 0, got {reg}")
    dt = _compute_dtype(sim)
    try:
        out = _ops().log_determinant_greedy(sim.to(dt), k, float(reg), bool(lazy))
    except RuntimeError as err:
        if "not positive definite" not in str(err):
            raise
        raise ValueError(str(err).split("\n")[0]) from None
    return _back(out, sim.dtype)


# ---- gradient_moments -------------------------------------------------------------------------

def _gradient_moments_forward(embeddings, logits, labels):
    return _ops().gradient_moments(embeddings, logits, labels)


def _gradient_moments_backward(grad_mean, grad_var, embeddings, logits, labels, mean):
    return _ops().gradient_moments_backward(grad_mean, grad_var, embeddings, logits, labels, mean)


# The forward and backward ops (csrc/gradient_moments.cpp) as one differentiable function.
_GradientMoments = reference.differentiable_moments(_gradient_moments_forward, _gradient_moments_backward)


def gradient_moments(embeddings, logits, labels):
    dt = _compute_dtype(logits)
    mean, var = _GradientMoments.apply(embeddings.to(dt), logits.to(dt), labels)
    return _back((mean, var), logits.dtype)


def gradient_moments_backward(grad_mean, grad_var, embeddings, logits, labels, mean):
    dt = _compute_dtype(logits)
    out = _ops().gradient_moments_backward(grad_mean.to(dt), grad_var.to(dt), embeddings.to(dt), logits.to(dt),
                                           labels, mean.to(dt))
    return _back(out[0], embeddings.dtype), _back(out[1], logits.dtype)


# ---- shapes for torch.compile -----------------------------------------------------------------
# torch.compile and torch.export trace the ops with fake tensors: each op's output shapes and
# dtypes, as the bindings csrc/<family>.cpp allocate them (checked against the real kernels by
# torch.library.opcheck in tests/test_ops_registration.py).

def _register_fakes():
    fake = lambda name: torch.library.register_fake(f"lcmat::{name}")  # noqa: E731

    @fake("last_layer_factors")
    def _(logits, labels):
        return logits.new_empty(logits.shape), logits.new_empty(logits.shape)

    @fake("last_layer_grad_norms")
    def _(embeddings, logits, labels, scale):
        return logits.new_empty(logits.shape[0]), logits.new_empty(logits.shape[0])

    @fake("curvature_moments")
    def _(embeddings, q, scale):
        P = q.shape[1] * (embeddings.shape[1] + 1)
        return q.new_empty(P, dtype=torch.float64), q.new_empty(P, dtype=torch.float64)

    @fake("gradient_distance")
    def _(embeddings, e, scale):
        return e.new_empty(e.shape[0], e.shape[0])

    @fake("pairwise_l1")
    def _(a, b):
        return a.new_empty(a.shape[0], (a if b is None else b).shape[0])

    @fake("hessian_diag_coords")
    def _(embeddings, q, coords, scale):
        return q.new_empty(q.shape[0], coords.numel())

    @fake("lcmat_distance")
    def _(embeddings, e, q, coords, rho, scale):
        return e.new_empty(e.shape[0], e.shape[0])

    @fake("facility_location_greedy")
    def _(dist, k, L, lazy):
        return dist.new_empty(k, dtype=torch.long), dist.new_empty(k), dist.new_empty(k)

    @fake("facility_location_greedy_batch")
    def _(dists, ks, L, lazy):
        return ([d.new_empty(k, dtype=torch.long) for d, k in zip(dists, ks)],
                [d.new_empty(k) for d, k in zip(dists, ks)], [d.new_empty(k) for d, k in zip(dists, ks)])

    @fake("sinkhorn_log")
    def _(a, b, M, reg, max_iter, tol, check_every):
        B, n, m = (M.shape if M.dim() == 3 else (1, *M.shape))
        return M.new_empty(B, n), M.new_empty(B, m), M.new_empty(B, dtype=torch.long), M.new_empty(B)

    @fake("sinkhorn_log_ragged")
    def _(a, b, row_offsets, col_offsets, reg, cost, x, y, max_iter, tol, check_every):
        P = len(row_offsets) - 1
        return a.new_empty(a.shape), a.new_empty(b.shape), a.new_empty(P, dtype=torch.long), a.new_empty(P)

    @fake("sinkhorn_plan")
    def _(f, g, M, reg):
        return M.new_empty(M.shape)

    @fake("linear_grad_norms")
    def _(activations, grad_outputs):
        return activations.new_empty(activations.shape[0])

    @fake("fdmat_transform")
    def _(features, beta, eps):
        return features.new_empty(features.shape)

    @fake("prototype_cost")
    def _(x, prototypes):
        return x.new_empty(x.shape[0], prototypes.shape[0])

    @fake("fdmat_scores")
    def _(M, f, g, reg):
        return M.new_empty(M.shape[0])

    @fake("graph_cut_greedy")
    def _(sim, k, lam, lazy):
        return sim.new_empty(k, dtype=torch.long), sim.new_empty(k)

    @fake("log_determinant_greedy")
    def _(sim, k, reg, lazy):
        return sim.new_empty(k, dtype=torch.long), sim.new_empty(k)
    @fake("gradient_moments")
    def _(embeddings, logits, labels):
        P = logits.shape[1] * (embeddings.shape[1] + 1)
        return logits.new_empty(logits.shape[1], P), logits.new_empty(logits.shape[1], P)

    @fake("gradient_moments_backward")
    def _(grad_mean, grad_var, embeddings, logits, labels, mean):
        return logits.new_empty(embeddings.shape), logits.new_empty(logits.shape)


if _C is not None:
    _register_fakes()


# ---- linear_grad_norms ------------------------------------------------------------------------

def linear_grad_norms(activations, grad_outputs):
    """Squared per-sample gradient norms of one nn.Linear (csrc/linear_grad_norms.cpp): per layer
    the cheaper exact form, ghost norm <A A^T, G G^T> when T (d_in + d_out) <= d_in d_out, else
    the materialised A^T G chunk by chunk. The CUDA build has no kernel of its own: CUDA tensors
    take the reference (the triton backend has the GPU kernels)."""
    A, G = as_sequences(activations, grad_outputs)
    if A.is_cuda:
        return reference.linear_grad_norms(A, G)
    dt = _compute_dtype(A)
    return _back(_ops().linear_grad_norms(A.to(dt), G.to(dt)), A.dtype)


def per_sample_grad_norms(model, inputs, targets, loss_fn):
    return collect_linear_grad_norms(model, inputs, targets, loss_fn, linear_grad_norms)
