"""Entropic OT as a service of the package (docs/design.md, "Log-domain Sinkhorn"): a POT-style functional API and the
per-class diagnostic of how far a coreset's feature distribution is from its class's."""
import warnings

import numpy as np
import torch

from . import algorithms, ops, reference
from .validation import as_features, as_labels, as_tensor, check_positive


def sinkhorn(cost, a, b, reg, max_iter=1000, tol=1e-6, backend=None):
    """The entropic OT plan for a dense cost (n, m) or a batch (B, n, m), POT's convention:
    argmin <P, M> - reg H(P) with P 1 = a and P^T 1 = b (a and b must have equal sums).
    Log-domain, so reg may go down to about 1e-3 of the cost scale."""
    cost = as_tensor("cost", cost, cost.ndim if hasattr(cost, "ndim") else 2)
    if cost.dim() not in (2, 3):
        raise ValueError(f"cost: expected (n, m) or (B, n, m), got shape {tuple(cost.shape)}")
    if not cost.is_floating_point():
        cost = cost.double()
    a = as_tensor("a", a, cost.dim() - 1, dtype=cost.dtype, device=cost.device)
    b = as_tensor("b", b, cost.dim() - 1, dtype=cost.dtype, device=cost.device)
    if a.shape != cost.shape[:-1] or b.shape != cost.shape[:-2] + cost.shape[-1:]:
        raise ValueError(f"a, b: shapes {tuple(a.shape)} and {tuple(b.shape)} do not match "
                         f"cost {tuple(cost.shape)}")
    for name, t in (("cost", cost), ("a", a), ("b", b)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name}: contains NaN or Inf")
    if (a < 0).any() or (b < 0).any():
        raise ValueError("a, b: masses must be non-negative")
    total_a, total_b = a.sum(-1), b.sum(-1)
    if not torch.allclose(total_a, total_b, rtol=1e-6):
        raise ValueError(f"a, b: must have equal total mass, got {total_a.tolist()} and {total_b.tolist()}")
    check_positive("reg", reg)
    f, g, _, _ = ops.sinkhorn_log(a, b, cost, reg, max_iter, tol, backend=backend)
    return algorithms.sinkhorn_plan(f, g, cost, reg)


def coreset_ot_distance(embeddings, labels, indices, weights=None, reg=0.05, max_iter=1000,
                        tol=1e-6, backend=None):
    """Per class, the entropic OT cost <P, M> between the class's samples (uniform mass) and
    its selected samples (uniform mass, or `weights`), on squared Euclidean distances of the
    L2-normalised embeddings; all classes solved in one ragged batch. np.float64 [C], NaN for
    a class with no selected sample; warns when a class did not converge."""
    y, num_classes = as_labels(labels)
    x = as_features("embeddings", embeddings, len(y), dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 1 or len(indices) == 0 or indices.min() < 0 or indices.max() >= len(y):
        raise ValueError(f"indices: must be a non-empty 1-D array of positions in [0, {len(y)})")
    w = np.ones(len(indices)) if weights is None else np.asarray(weights, dtype=np.float64)
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
    slow = [c for c in range(num_classes) if col_off[c + 1] > col_off[c] and float(err[c]) > tol]
    if slow:
        warnings.warn(f"coreset_ot_distance: Sinkhorn did not reach tol={tol} in max_iter={max_iter} "
                      f"for classes {slow[:10]} (worst marginal error {float(err.max()):.2g}); "
                      f"raise max_iter or reg", RuntimeWarning)
    empty = [c for c in range(num_classes) if col_off[c + 1] == col_off[c]]
    if empty:
        warnings.warn(f"coreset_ot_distance: classes {empty[:10]} have no selected sample; their "
                      f"distance is NaN", RuntimeWarning)
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        r0, r1, c0, c1 = row_off[c], row_off[c + 1], col_off[c], col_off[c + 1]
        if c1 > c0:
            M = reference.squared_euclidean_cost(xr[r0:r1], xc[c0:c1])
            out[c] = float((algorithms.sinkhorn_plan(f[r0:r1], g[c0:c1], M, reg) * M).sum())
    return out
