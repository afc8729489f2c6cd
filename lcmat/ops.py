"""The one dispatch point: every kernel by name, on the backend that fits the tensors.

Backends are modules exposing functions with the same names and signatures as
`lcmat.reference`:
    reference  lcmat.reference          (always there)
    cpu, cuda  lcmat.csrc               (the compiled extension; the tensors' device picks the key)
    triton     lcmat.triton_kernels     (CUDA tensors; CPU tensors too under TRITON_INTERPRET=1,
                                         but only when asked for by name)
A backend that lacks a function falls back to the reference when chosen automatically, and
raises when it was asked for by name. `backend=None` means: LCMAT_BACKEND if set, else the
fastest available for the device (cuda: triton, then cuda, then reference; cpu: cpu, then
reference).
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
        return ("triton", "cuda", "reference")
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


def top_variance_coords(embeddings, q, num_coords, scale=None, backend=None):
    """The backend computes the moments, of the classes' weight rows that can reach the top only
    (reference.top_variance_coords_pruned); the ordering (reference.coords_by_variance) is shared,
    so every backend picks the same coordinates."""
    def moments(h, q_rows, s):
        return curvature_moments(h, q_rows, s, backend=backend)
    return reference.top_variance_coords_pruned(embeddings, q, num_coords, scale, moments)


def hessian_diag_coords(embeddings, q, coords, scale=None, backend=None):
    return _call("hessian_diag_coords", backend, embeddings, q, coords, scale)


def gradient_distance(embeddings, e, scale=None, backend=None):
    return _call("gradient_distance", backend, embeddings, e, scale)


def pairwise_l1(a, b=None, backend=None):
    return _call("pairwise_l1", backend, a, b)


def lcmat_distance(embeddings, e, q, coords, rho, scale=None, backend=None):
    return _call("lcmat_distance", backend, embeddings, e, q, coords, rho, scale)


def facility_location_greedy(dist, k, L=None, lazy=True, backend=None):
    return _call("facility_location_greedy", backend, dist, k, L, lazy)


def facility_location_greedy_batch(dists, ks, L=None, lazy=True, backend=None):
    """The greedy on many blocks (one per class) in one call: [(picks, objective, weights)]."""
    dists = list(dists)
    return resolve("facility_location_greedy_batch", backend, *dists[:1])[1](dists, ks, L, lazy)


def parallel_blocks(device):
    """How many blocks facility_location_greedy_batch runs at once on this device (the CPU
    backend: one per thread), so that callers can hand it that many."""
    return torch.get_num_threads() if torch.device(device).type == "cpu" else 1


def facility_location_greedy_quotas(dist, groups, quotas, L=None):
    """The greedy under per-group quotas has only the reference implementation: its cost is
    small next to the distance block that any backend computes for it."""
    return reference.facility_location_greedy_quotas(dist, groups, quotas, L)


def sinkhorn_log(a, b, M, reg, max_iter=1000, tol=1e-6, check_every=1, backend=None):
    return _call("sinkhorn_log", backend, a, b, M, reg, max_iter, tol, check_every)


def sinkhorn_log_ragged(a, b, row_offsets, col_offsets, reg, cost=None, x=None, y=None,
                        max_iter=1000, tol=1e-6, check_every=1, backend=None):
    return _call("sinkhorn_log_ragged", backend, a, b, row_offsets, col_offsets, reg,
                 cost, x, y, max_iter, tol, check_every)


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
    """Squared per-sample gradient norms of one nn.Linear on sequence inputs, [N]."""
    return _call("linear_grad_norms", backend, activations, grad_outputs)


def per_sample_grad_norms(model, inputs, targets, loss_fn, backend=None):
    """Per-sample gradient norms over every nn.Linear of `model` (loss_fn with reduction='none')."""
    return _call("per_sample_grad_norms", backend, model, inputs, targets, loss_fn)


# Not kernels, but shared by the selectors; always the reference (cheap, exact).
class_prototypes = reference.class_prototypes
sinkhorn_plan = reference.sinkhorn_plan
