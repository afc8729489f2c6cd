"""The one dispatch point: every kernel by name, on the backend that fits the tensors.

Backends are modules exposing functions with the same names and signatures as
`lcmat.reference`:
    reference  lcmat.reference          (always there)
    cpu, cuda  lcmat.csrc               (the compiled extension; the tensors' device picks the key)
    triton     lcmat.triton_kernels     (CUDA tensors; CPU tensors too under TRITON_INTERPRET=1,
                                         but only when asked for by name)
A backend that lacks a function falls back to the reference when chosen automatically, and
raises when it was asked for by name. `backend=None` means: LCMAT_BACKEND if set, else the
first available for the device: cpu tensors cpu, then reference; cuda tensors cuda, then triton,
then reference. Only dispatch lives here: algorithms composed of kernels are
lcmat.algorithms.

On CUDA tensors the compiled CUDA kernels come first because their float64 paths compute in
float64 throughout (the reference's arithmetic); triton serves what the cuda backend lacks, and
any kernel can be asked for by name (backend="triton") or through LCMAT_BACKEND (the GPU
comparison of the two belongs in BENCHMARKS.md, section 3).
"""
import importlib
import os

import torch

from . import reference

BACKENDS = ("reference", "cpu", "cuda", "triton")
_MODULES = {"reference": "lcmat.reference", "cpu": "lcmat.csrc", "cuda": "lcmat.csrc",
            "triton": "lcmat.triton_kernels"}
_loaded = {}


def _module(backend):
    """The backend's module, or None when it cannot be used on this machine."""
    if backend not in _loaded:
        try:
            module = importlib.import_module(_MODULES[backend])
            ok = getattr(module, "available", lambda device: True)(backend)
        except Exception:  # a missing build or a missing triton both mean: not available
            module, ok = None, False
        _loaded[backend] = module if ok else None
    return _loaded[backend]


def available_backends():
    """The backends usable on this machine."""
    return [b for b in BACKENDS if _module(b) is not None]


def _device_of(args):
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return arg.device
    return torch.device("cpu")


def _auto_order(device):
    if device.type == "cuda":
        return ("cuda", "triton", "reference")
    return ("cpu", "reference")


def resolve(name, backend, *args):
    """(backend name, function) that will run kernel `name` on these arguments."""
    backend = backend or os.environ.get("LCMAT_BACKEND") or None
    device = _device_of(args)
    if backend is None:
        for candidate in _auto_order(device):
            fn = getattr(_module(candidate), name, None)
            if fn is not None:
                return candidate, fn
    if backend not in BACKENDS:
        raise ValueError(f"backend: must be one of {BACKENDS} or None, got {backend!r}")
    if backend in ("cpu", "cuda") and device.type != backend:
        raise ValueError(f"backend: {backend!r} needs {backend} tensors, got {device.type} ones")
    module = _module(backend)
    if module is None:
        raise RuntimeError(f"backend: {backend!r} is not available on this machine "
                           f"(available: {available_backends()})")
    fn = getattr(module, name, None)
    if fn is None:
        raise NotImplementedError(f"backend: {backend!r} has no kernel {name!r}")
    return backend, fn


def _call(name, backend, *args, **kwargs):
    return resolve(name, backend, *args)[1](*args, **kwargs)


def last_layer_factors(logits, labels, backend=None):
    return _call("last_layer_factors", backend, logits, labels)


def last_layer_grad_norms(embeddings, logits, labels, scale=None, backend=None):
    return _call("last_layer_grad_norms", backend, embeddings, logits, labels, scale)


def curvature_moments(embeddings, q, scale=None, backend=None):
    return _call("curvature_moments", backend, embeddings, q, scale)


def hessian_diag_coords(embeddings, q, coords, scale=None, backend=None):
    return _call("hessian_diag_coords", backend, embeddings, q, coords, scale)


def gradient_distance(embeddings, e, scale=None, backend=None):
    return _call("gradient_distance", backend, embeddings, e, scale)


def pairwise_l1(a, b=None, backend=None):
    return _call("pairwise_l1", backend, a, b)


def lcmat_distance(embeddings, e, q, coords, rho, scale=None, backend=None):
    return _call("lcmat_distance", backend, embeddings, e, q, coords, rho, scale)


def facility_location_greedy(dist, k, L=None, lazy=True, backend=None):
    reference.check_distance_block(dist, L)  # every backend refuses what the greedy cannot rank
    return _call("facility_location_greedy", backend, dist, k, L, lazy)


def facility_location_greedy_batch(dists, ks, L=None, lazy=True, backend=None):
    """The greedy on many blocks (one per class) in one call: [(picks, objective, weights)]."""
    dists = list(dists)
    for dist in dists:
        if isinstance(dist, torch.Tensor):
            reference.check_distance_block(dist, L)
    return resolve("facility_location_greedy_batch", backend, *dists[:1])[1](dists, ks, L, lazy)


def parallel_blocks(device):
    """How many blocks facility_location_greedy_batch runs at once on this device (the CPU
    backend: one per thread), so that callers can hand it that many."""
    return torch.get_num_threads() if torch.device(device).type == "cpu" else 1


def sinkhorn_log(a, b, M, reg, max_iter=1000, tol=1e-6, check_every=1, backend=None):
    return _call("sinkhorn_log", backend, a, b, M, reg, max_iter, tol, check_every)


def sinkhorn_log_ragged(a, b, row_offsets, col_offsets, reg, cost=None, x=None, y=None,
                        max_iter=1000, tol=1e-6, check_every=1, backend=None):
    return _call("sinkhorn_log_ragged", backend, a, b, row_offsets, col_offsets, reg,
                 cost, x, y, max_iter, tol, check_every)


def sinkhorn_plan(f, g, M, reg, backend=None):
    """The plan P_ij = exp((f_i + g_j - M_ij) / reg) from Sinkhorn potentials (dense or batched)."""
    return _call("sinkhorn_plan", backend, f, g, M, reg)


def fdmat_transform(features, beta=0.5, eps=1e-6, backend=None):
    return _call("fdmat_transform", backend, features, beta, eps)


def prototype_cost(x, prototypes, backend=None):
    return _call("prototype_cost", backend, x, prototypes)


def fdmat_scores(M, f, g, reg, backend=None):
    return _call("fdmat_scores", backend, M, f, g, reg)


def gradient_moments(embeddings, logits, labels, backend=None):
    """Per-class (mean, variance) of last-layer per-sample gradients, [C, C (D + 1)] each,
    differentiable with respect to the embeddings and the logits on every backend."""
    return _call("gradient_moments", backend, embeddings, logits, labels)


def linear_grad_norms(activations, grad_outputs, backend=None):
    """Squared per-sample gradient norms of one nn.Linear on sequence inputs, [N].

    The compiled backends take per layer the cheaper exact form: the ghost norm
    <A_i A_i^T, G_i G_i^T> (T^2 (d_in + d_out) work) when T (d_in + d_out) <= d_in d_out, i.e.
    wide layers and short sequences, else the per-sample gradient A_i^T G_i (T d_in d_out), a
    chunk of samples at a time; T = 1 is the rank-one ||a_i||^2 ||g_i||^2. The reference always
    materialises N x d_in x d_out."""
    return _call("linear_grad_norms", backend, activations, grad_outputs)


def per_sample_grad_norms(model, inputs, targets, loss_fn, backend=None):
    """Per-sample gradient norms ||grad_theta loss_i||, [N], where theta is every weight and bias
    of an nn.Linear of `model` that requires grad (loss_fn with reduction='none').

    One forward pass, and one backward pass of the summed loss that asks autograd only for the
    gradients G at the layers' outputs, so no parameter gradient is formed (docs/design.md,
    Whole-network per-sample gradient norms); then `linear_grad_norms` per layer from its inputs
    A and G, in the cheapest exact form: rank one at T = 1, the ghost norm where
    T (d_in + d_out) <= d_in d_out, else the per-sample gradients a chunk of samples at a time.
    A layer called several times counts the sum of its calls; in-place activations after a layer
    are fine (G is taken before them); a frozen weight or bias is left out.

    Against the per-sample-gradient libraries (Opacus, BackPACK's BatchL2Grad, torch.func), which
    form the N x d_in x d_out gradients and, in their backward pass, the batch weight gradients
    too, it wins where the norms cost less than those: T = 1 layers (MLPs, rank one: the
    gradients are never formed), wide layers on short and medium sequences (the ghost norm), and
    long sequences on narrow layers, where every exact method forms the per-sample gradients
    (T d_in d_out each) and this one saves the batch weight gradients of the same cost. The margin
    is small there and on small networks, where the forward and backward passes and their
    elementwise work dominate (BENCHMARKS.md, Whole-network per-sample gradient norms).

    Memory beyond what autograd keeps anyway (every layer's input): each layer's output gradients
    for the batch (N T d_out) and the kernels' temporaries (at most 16 MB a chunk); never
    N x d_in x d_out. The batch size bounds it (GraNd: `select(..., batch_size=...)`).

    Samples must not interact: with BatchNorm in train mode the result is the norm of each
    sample's part of the summed loss's gradient, not of its own loss's; use eval mode (GraNd
    does). Only nn.Linear modules called as modules count: convolutions, normalisation layers
    and weights used through F.linear (e.g. nn.MultiheadAttention's projections) do not. An
    in-place change of a layer's input after the layer read it raises a ValueError."""
    return _call("per_sample_grad_norms", backend, model, inputs, targets, loss_fn)


# The comparison set's kernels (GradMatch, Glister, AdaCore) have only the reference: their cost is
# GEMMs and matrix-vector products that ATen already runs at speed (see bench/bench_matching.py), so
# every backend runs these, and a backend asked for by name runs the shared kernels it has.
def gradient_target_dot(embeddings, e, target_embeddings, target_e, scale=1.0, backend=None):
    """g_i . (scale * sum_v g_v) over the target rows, [n]."""
    return reference.gradient_target_dot(embeddings, e, target_embeddings, target_e, scale)


def omp_last_layer(embeddings, e, b, k, lam=0.0, deepcore=False, backend=None):
    """Non-negative OMP on last-layer gradients: (picks [k], weights [k]); deepcore=True runs
    DeepCore's variant (reference.omp_last_layer_deepcore)."""
    if deepcore:
        return reference.omp_last_layer_deepcore(embeddings, e, b, k, lam)
    return reference.omp_last_layer(embeddings, e, b, k, lam)


def glister_greedy(embeddings, e, val_embeddings, val_logits, val_labels, k, eta, backend=None):
    """Glister's greedy with the model update step: (picks [k], gains [k])."""
    return reference.glister_greedy(embeddings, e, val_embeddings, val_logits, val_labels, k, eta)


def adacore_distance(embeddings, e, q, eps, backend=None):
    """|| H_i^{-1} g_i - H_j^{-1} g_j ||_2 with the last layer's diagonal Hessians, [n, n]."""
    return reference.adacore_distance(embeddings, e, q, eps)


# Most kernels of the comparison set (Contextual Diversity, Cal) have only their reference
# implementation: each is torch on whole vectors per greedy step (or a chunked GEMM), and it runs
# on whatever device the tensors are on. Like the quota greedy above they take no backend
# argument. The graph-cut and log-determinant greedies dispatch (a cpu twin).

def gradient_gram(embeddings, e, scale=None):
    """<g_i, g_j> of last-layer gradients, [n, n], from the Gram identity."""
    return reference.gradient_gram(embeddings, e, scale)


def symmetric_kl(log_p, log_q=None):
    """1/2 KL(p_i || q_j) + 1/2 KL(q_j || p_i) for every pair, [n, m], from log-probabilities."""
    return reference.symmetric_kl(log_p, log_q)


def kcenter_symmetric_kl(log_p, k, first):
    """k-center greedy under the symmetric KL divergence (Contextual Diversity): picks [k]."""
    return reference.kcenter_symmetric_kl(log_p, k, first)


def knn_indices(x, k):
    """The k nearest other rows of each row (squared Euclidean, lower index on ties), [n, k]."""
    return reference.knn_indices(x, k)


def neighbour_kl(log_p, neighbours, symmetric=False):
    """Mean KL divergence between each row's prediction and its neighbours' (Cal), [n]."""
    return reference.neighbour_kl(log_p, neighbours, symmetric)


def graph_cut_greedy(sim, k, lam=1.0, lazy=False, backend=None):
    """Greedy graph cut on a similarity block: (picks [k], objective [k]). Backends: reference,
    cpu, cuda, triton (the device ones run the naive greedy for lazy=True: the same picks)."""
    return _call("graph_cut_greedy", backend, sim, k, lam, lazy)


def log_determinant_greedy(sim, k, reg=1.0, lazy=False, backend=None):
    """Greedy log det(S_AA + reg I) by incremental Cholesky: (picks [k], objective [k]). Backends:
    reference, cpu, cuda, triton (the device ones run the naive greedy for lazy=True)."""
    return _call("log_determinant_greedy", backend, sim, k, reg, lazy)


def log_determinant_deepcore_greedy(sim, k):
    """DeepCore's LogDeterminant gain (for comparison only)."""
    return reference.log_determinant_deepcore_greedy(sim, k)
