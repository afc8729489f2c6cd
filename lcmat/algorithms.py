"""Algorithms composed of kernels: what the selectors and lcmat.ot run on top of lcmat.ops.

lcmat.reference defines each kernel (the oracle) and lcmat.ops runs a kernel on a backend; the
functions here combine them, and are the same whatever the backend:

- top_variance_coords: the K Hessian-diagonal coordinates of largest variance, the moments computed
  by the chosen backend only for the classes' weight rows that can reach the top K (the pruning
  bound of docs/design.md, "Top-K variance coordinates"), the ordering always the reference's.
- facility_location_greedy_quotas: the lazy greedy under per-group quotas (coverage strata).
- class_prototypes: the class means, the reference definition.
"""
import torch

from . import ops, reference

__all__ = [
    "top_variance_coords",
    "top_variance_coords_pruned",
    "weight_row_bounds",
    "facility_location_greedy_quotas",
    "class_prototypes",
]


# ---- top-K variance coordinates ----------------------------------------------------------------

def top_variance_coords(embeddings, q, num_coords, scale=None, backend=None):
    """The `num_coords` coordinates of d_i of largest variance over the class (as
    reference.top_variance_coords): the backend computes the moments, of the classes' weight rows
    that can reach the top only (top_variance_coords_pruned); the ordering
    (reference.coords_by_variance) is shared, so every backend picks the same coordinates."""
    def moments(h, q_rows, s):
        return ops.curvature_moments(h, q_rows, s, backend=backend)
    return top_variance_coords_pruned(embeddings, q, num_coords, scale, moments)


def _scaled_q(q, scale=None):
    """s_i q_ic in float64, [n, C], always a new tensor (callers square it in place)."""
    sq = q.to(torch.float64, copy=True)
    return sq if scale is None else sq.mul_(scale.double()[:, None])


def _fourth_power(embeddings):
    """h^4 in float64, a new tensor."""
    return embeddings.to(torch.float64, copy=True).square_().square_()


def weight_row_bounds(embeddings, q, scale=None):
    """[C] float64: for every class c, an upper bound on the variance of its weight coordinates.

    var_cd <= m2_cd = (1/n) sum_i sq_ic^2 h_id^4, and by Hoelder and Cauchy-Schwarz
    m2_cd <= (1/n) min(max_i sq_ic^2 * max_d sum_i h_id^4,  ||sq_c^2||_2 * max_d ||h_d^4||_2).
    Costs O(n (C + D)), against the O(n C D) of the moment GEMMs.
    """
    h4 = _fourth_power(embeddings)
    return _row_bounds(h4, _scaled_q(q, scale).square_())


def _row_bounds(h4, sq2):
    """weight_row_bounds from h^4 [n, D] and (s q)^2 [n, C] in float64; overwrites both (in
    place: fresh n x C temporaries cost more in page faults than in arithmetic)."""
    by_max = sq2.amax(0) * h4.sum(0).max()
    # column norms as sums of squares: vector_norm(dim=0) is several times slower here
    by_norm = (sq2.square_().sum(0) * h4.square_().sum(0).max()).sqrt_()
    return torch.minimum(by_max, by_norm) / h4.shape[0]


def top_variance_coords_pruned(embeddings, q, num_coords, scale=None, moments=reference.curvature_moments,
                               first_rows=16):
    """Same coordinates as `top_variance_coords`, with the moment GEMMs run only on the weight rows
    (classes) that can reach the top `num_coords`; `moments` is any backend's `curvature_moments`.

    Rows go in decreasing `weight_row_bounds`, in chunks that double from `first_rows`, until the
    next row's bound lies below the K-th largest (ordered) variance known so far: no coordinate of
    that row or the rows after it can then enter the top K, nor tie with it, so they keep
    moments (0, 0). The bias coordinates (the moments of s_i q_ic) are always computed. With a
    confident model most of ImageNet's 1,000 rows per class are skipped; with a flat softmax every
    row is computed, as without pruning.
    """
    n, C = q.shape
    D = embeddings.shape[1]
    if num_coords <= 0 or n == 0 or C <= first_rows:
        return reference.coords_by_variance(*moments(embeddings, q, scale), num_coords)
    sq = _scaled_q(q, scale)
    # The coordinates whose moments are known, their moments: the biases first.
    known = [torch.arange(C, device=q.device)]
    means = [sq.sum(0) / n]
    sq2 = sq.square_()
    seconds = [sq2.sum(0) / n]
    # The 1e-6 margin covers the rounding of the bound and of the GEMMs (n u < 1e-6 for any n here);
    # a NaN bound never lets a row be skipped.
    bound = _row_bounds(_fourth_power(embeddings), sq2)
    bound = (bound * (1.0 + 1e-6)).nan_to_num(nan=float("inf"))
    order = torch.sort(bound, descending=True, stable=True).indices
    bound = bound[order].float().tolist()
    done, num_known, chunk = 0, C, first_rows
    while done < C:
        if num_known >= num_coords:
            var = reference.ordered_variance(torch.cat(means), torch.cat(seconds))
            if bound[done] < float(torch.topk(var, num_coords).values[-1]):
                break
        rows = order[done:done + chunk]
        m, s = moments(embeddings, q[:, rows], scale)
        known.append((C + rows[:, None] * D + torch.arange(D, device=q.device)).flatten())
        means.append(m[len(rows):])
        seconds.append(s[len(rows):])
        done, num_known, chunk = done + len(rows), num_known + len(rows) * D, 2 * chunk
    # In increasing coordinate order, so that coords_by_variance breaks ties by the lowest index.
    known = torch.cat(known)
    by_index = torch.argsort(known)
    local = reference.coords_by_variance(torch.cat(means)[by_index], torch.cat(seconds)[by_index], num_coords)
    return known[by_index][local]


# ---- facility location under quotas -------------------------------------------------------------

def facility_location_greedy_quotas(dist, groups, quotas, L=None):
    """Greedy facility location under a partition constraint (quotas per group of columns).

    groups [n]: the group of each column, in [0, len(quotas)); quotas[g]: how many picks group g
    gets, k = sum(quotas). Each step adds the eligible column of largest gain over all n rows
    (lowest index wins ties); a column is eligible while its group has fewer than quotas[g]
    picks. Lazy evaluation stays exact: the constraint only removes candidates. Returns (picks
    [k] in pick order, objective [k], weights [k]) as facility_location_greedy.
    """
    n = dist.shape[0]
    groups = torch.as_tensor(groups, dtype=torch.long).cpu()
    quotas = [int(q) for q in quotas]
    if groups.shape != (n,):
        raise ValueError(f"groups: expected {n} group ids, got shape {tuple(groups.shape)}")
    if n and (int(groups.min()) < 0 or int(groups.max()) >= len(quotas)):
        raise ValueError(f"groups: ids must lie in [0, {len(quotas)})")
    sizes = torch.bincount(groups, minlength=len(quotas)).tolist()
    for g, (q, size) in enumerate(zip(quotas, sizes)):
        if not 0 <= q <= size:
            raise ValueError(f"quotas: group {g} has {size} columns, quota {q}")
    sim_t = reference.similarity_columns(dist, L)
    return reference.greedy_result(dist, sim_t, reference.lazy_greedy_picks(sim_t, groups.tolist(), quotas))


# ---- class means --------------------------------------------------------------------------------

def class_prototypes(x, labels, num_classes):
    """The class means of x (reference.class_prototypes), FDMat's prototypes."""
    return reference.class_prototypes(x, labels, num_classes)
