"""Entropic OT as a service of the package (docs/design.md, "Log-domain Sinkhorn"): a POT-style functional API and the
per-class diagnostic of how far a coreset's feature distribution is from its class's."""
import warnings

import numpy as np
import torch

from . import ops, reference
from .validation import as_features, as_labels, as_tensor, check_positive


class ConvergenceWarning(RuntimeWarning):
    """An iterative solver stopped (max_iter) before its error reached tol."""


def _ndim(name, x):
    """Dimensions of an array-like, or ValueError naming it when it is ragged."""
    if isinstance(x, torch.Tensor):
        return x.dim()
    try:
        return np.asarray(x).ndim
    except ValueError:
        raise ValueError(f"{name}: must be a rectangular array, got a ragged nested sequence") from None


def _sinkhorn_inputs(a, b, M):
    """(a, b, M) as tensors of one float dtype and device, validated; refuses the pre-POT order
    (cost first), which the shapes give away."""
    M = as_tensor("M", M, _ndim("M", M))
    a_dim = _ndim("a", a)
    if M.dim() < 2 and a_dim >= 2:
        raise ValueError(f"M: expected the cost (n, m) or (B, n, m) as the third argument, got {M.dim()} "
                         f"dimension(s) while a has {a_dim}; lcmat.sinkhorn takes POT's order "
                         f"sinkhorn(a, b, M, reg)")
    if M.dim() not in (2, 3):
        raise ValueError(f"M: expected (n, m) or (B, n, m), got shape {tuple(M.shape)}")
    if not M.is_floating_point():
        M = M.double()
    a = as_tensor("a", a, M.dim() - 1, dtype=M.dtype, device=M.device)
    b = as_tensor("b", b, M.dim() - 1, dtype=M.dtype, device=M.device)
    if a.shape != M.shape[:-1] or b.shape != M.shape[:-2] + M.shape[-1:]:
        raise ValueError(f"a, b: shapes {tuple(a.shape)} and {tuple(b.shape)} do not match M {tuple(M.shape)}")
    for name, t in (("M", M), ("a", a), ("b", b)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name}: contains NaN or Inf")
    if (a < 0).any() or (b < 0).any():
        raise ValueError("a, b: masses must be non-negative")
    total_a, total_b = a.sum(-1), b.sum(-1)
    if not bool((total_a > 0).all()):
        raise ValueError("a, b: total mass is zero (every problem needs some mass)")
    if not torch.allclose(total_a, total_b, rtol=1e-6, atol=0):
        raise ValueError(f"a, b: must have equal total mass, got {total_a.tolist()} and {total_b.tolist()}")
    return a, b, M


def check_reg(reg, M, name="reg"):
    """reg > 0, finite, and large enough for the dtype of the costs to resolve the plan."""
    reg = float(check_positive(name, reg))
    low = reference.smallest_reg(M)
    if reg < low:
        raise ValueError(f"{name}: {reg:g} is below what {M.dtype} costs up to {float(M.abs().max()):.3g} resolve "
                         f"(reg >= 10 eps max|M| = {low:.3g}): the plan would be rounding noise; raise reg, "
                         f"rescale M, or compute in float64")
    return reg


def sinkhorn(a, b, M, reg, max_iter=1000, tol=1e-6, log=False, warn=True, backend=None):
    """The entropic OT plan, POT's order and convention (ot.sinkhorn(a, b, M, reg)):
    argmin <P, M> - reg H(P) with P 1 = a and P^T 1 = b, for a dense cost M (n, m) or a batch
    (B, n, m); a and b need equal total masses. Log-domain, so reg may go down to about 1e-3 of
    the cost scale (and is refused below the dtype's resolution, 10 eps max|M|).

    log=True returns (plan, log) with log = {"err": the final relative row-marginal error of each
    problem (computed in float64 from the potentials, the same way on every backend), "niter":
    iterations run, "f", "g": the potentials}. A ConvergenceWarning is raised (warn=True) when a
    problem's error is above tol."""
    a, b, M = _sinkhorn_inputs(a, b, M)
    reg = check_reg(reg, M)
    max_iter = check_positive("max_iter", max_iter, integer=True)
    tol = check_positive("tol", tol)
    f, g, n_iter, _ = ops.sinkhorn_log(a, b, M, reg, max_iter, tol, backend=backend)
    err = reference.marginal_error(a, f, g, M, reg)
    if warn:
        warn_unconverged("sinkhorn", err, tol, max_iter, M.dtype)
    plan = ops.sinkhorn_plan(f, g, M, reg)  # the fastest plan kernel for the device
    if log:
        return plan, {"err": err, "niter": n_iter, "f": f, "g": g}
    return plan


def converged(err, tol, dtype):
    """Per problem: did it reach tol? The float64 re-evaluation of a float32 solution differs from
    the solver's own estimate by rounding, so tol is read as at least a few eps of the dtype."""
    err = torch.as_tensor(err, dtype=torch.float64)
    return err <= 1.01 * max(float(tol), 64 * torch.finfo(dtype).eps)


def warn_unconverged(what, err, tol, max_iter, dtype, labels=None, stacklevel=3):
    """ConvergenceWarning naming the problems whose marginal error is above tol."""
    err = torch.as_tensor(err, dtype=torch.float64).reshape(-1)
    bad = (~converged(err, tol, dtype)).nonzero().flatten().tolist()
    if not bad:
        return bad
    names = bad if labels is None else [labels[i] for i in bad]
    worst = float(err[bad].nan_to_num(nan=float("inf")).max())
    warnings.warn(f"{what}: Sinkhorn did not reach tol={tol:g} within max_iter={max_iter} for "
                  f"{'problem(s)' if labels is None else 'class(es)'} {names[:10]} (worst relative marginal "
                  f"error {worst:.2g}); raise max_iter or reg", ConvergenceWarning, stacklevel=stacklevel)
    return bad


def coreset_ot_distance(embeddings, labels, indices, weights=None, reg=0.05, max_iter=1000,
                        tol=1e-6, backend=None):
    """Per class, the entropic OT cost <P, M> between the class's samples (uniform mass) and
    its selected samples (uniform mass, or `weights`), on squared Euclidean distances of the
    L2-normalised embeddings; all classes solved in one ragged batch. np.float64 [C], NaN for
    a class with no selected sample; warns when a class did not converge."""
    y, num_classes = as_labels(labels)
    x = as_features("embeddings", embeddings, len(y), dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    reg = check_positive("reg", reg)
    max_iter = check_positive("max_iter", max_iter, integer=True)
    tol = check_positive("tol", tol)
    indices = as_tensor("indices", indices, 1).cpu().numpy()
    if indices.dtype.kind not in "iu":
        raise ValueError(f"indices: must be integers, got {indices.dtype}")
    indices = indices.astype(np.int64)
    if len(indices) == 0 or indices.min() < 0 or indices.max() >= len(y):
        raise ValueError(f"indices: must be a non-empty 1-D array of positions in [0, {len(y)})")
    if len(np.unique(indices)) != len(indices):
        raise ValueError("indices: contains duplicates")
    if weights is None:
        w = np.ones(len(indices))
    else:
        w = as_tensor("weights", weights, 1).double().cpu().numpy()
        if w.shape != indices.shape or not np.isfinite(w).all() or (w <= 0).any():
            raise ValueError(f"weights: expected {len(indices)} finite positive values (one per index)")
    y_np = y.cpu().numpy()
    rows, cols, a, b, row_off, col_off = [], [], [], [], [0], [0]
    for c in range(num_classes):
        members = np.flatnonzero(y_np == c)
        chosen = indices[y_np[indices] == c]
        wc = w[y_np[indices] == c]
        rows.append(members)
        cols.append(chosen)
        a.append(np.full(len(members), 1.0 / len(members)))
        b.append(wc / wc.sum() if len(chosen) else wc)
        row_off.append(row_off[-1] + len(members))
        col_off.append(col_off[-1] + len(chosen))
    xr, xc = x[torch.from_numpy(np.concatenate(rows))], x[torch.from_numpy(np.concatenate(cols))]
    a, b = torch.from_numpy(np.concatenate(a)), torch.from_numpy(np.concatenate(b))
    row_off, col_off = torch.tensor(row_off), torch.tensor(col_off)
    f, g, _, err = ops.sinkhorn_log_ragged(a, b, row_off, col_off, reg, x=xr, y=xc, max_iter=max_iter,
                                           tol=tol, backend=backend)
    empty = [c for c in range(num_classes) if col_off[c + 1] == col_off[c]]
    if empty:
        warnings.warn(f"coreset_ot_distance: classes {empty[:10]} have no selected sample; their "
                      f"distance is NaN", RuntimeWarning)
    out = np.full(num_classes, np.nan)
    errors, solved = [], []
    for c in range(num_classes):
        r0, r1, c0, c1 = row_off[c], row_off[c + 1], col_off[c], col_off[c + 1]
        if c1 > c0:
            M = reference.squared_euclidean_cost(xr[r0:r1], xc[c0:c1])
            out[c] = float((ops.sinkhorn_plan(f[r0:r1], g[c0:c1], M, reg) * M).sum())
            errors.append(float(reference.marginal_error(a[r0:r1], f[r0:r1], g[c0:c1], M, reg)))
            solved.append(c)
    warn_unconverged("coreset_ot_distance", errors, tol, max_iter, x.dtype, labels=solved)
    return out
