"""The per-class LCMat-S distance block (docs/design.md, "The LCMat-S distance").

    D_ij = || g_i - g_j ||_2 + rho * || d_i[K] - d_j[K] ||_1

with g and d the last-layer gradient and Hessian diagonal (see `last_layer`), and K the
coordinates of largest variance of d over the class. All functions take one class's rows.
"""
import torch


def gradient_gram(embeddings, e, scale=None):
    """<g_i, g_j> = s_i s_j <e_i, e_j> (1 + <h_i, h_j>), [n, n], from two small GEMMs."""
    se = e if scale is None else e * scale[:, None]
    return (se @ se.T) * (1.0 + embeddings @ embeddings.T)


def gradient_distance(embeddings, e, scale=None):
    """|| g_i - g_j ||_2, [n, n], from the Gram identity (never forms the n x C(D+1) gradients)."""
    gram = gradient_gram(embeddings, e, scale)
    sq = gram.diagonal()
    dist2 = (sq[:, None] + sq[None, :] - 2.0 * gram).clamp_min_(0.0)
    dist2.fill_diagonal_(0.0)
    return dist2.sqrt_()


def curvature_moments(embeddings, q, scale=None):
    """Mean and second moment over the rows of every Hessian-diagonal coordinate, two [P] vectors.

    Weight coordinate (c, d): mean (1/n) (s q)^T (h^2), second moment (1/n) ((s q)^2)^T (h^4),
    two C x D GEMMs; bias coordinate c: the moments of s_i q_ic. Computed in float64 because the
    variances m2 - m1^2 are tiny and cancellation bites in float32.
    """
    n = embeddings.shape[0]
    h2 = embeddings.double().square()
    sq = q.double() if scale is None else q.double() * scale.double()[:, None]
    mean = torch.cat([sq.sum(0), (sq.T @ h2).flatten()]) / n
    second = torch.cat([sq.square().sum(0), (sq.square().T @ h2.square()).flatten()]) / n
    return mean, second


def ordered_variance(mean, second):
    """The variances as `coords_by_variance` orders them: float32, cancellation noise as zero."""
    var = second - mean.square()
    return torch.where(var <= 1e-12 * second.abs(), torch.zeros_like(var), var).float()


def coords_by_variance(mean, second, num_coords):
    """The `num_coords` coordinates of largest population variance second - mean^2, in
    decreasing variance, lowest coordinate index first among equal variances. LongTensor [K].

    Two guards make the order depend on the mathematics, not on rounding: a variance below
    1e-12 of its second moment is cancellation noise and counts as zero (a one-sample class or
    identical samples), and variances are rounded to float32 before sorting, so that values
    equal up to the GEMMs' summation order (duplicated features, other backends) tie and are
    broken by index.
    """
    var = ordered_variance(mean, second)
    if bool(var.isnan().any()):
        raise ValueError("embeddings, q: the coordinate variances contain NaN (NaN or Inf in the embeddings or q)")
    k = min(num_coords, var.numel())
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=var.device)
    # Only coordinates at least as large as the k-th largest variance can be among the first k; a
    # stable descending sort of those (in index order) keeps the lowest index first among ties.
    # Same result as sorting all P = C (D + 1) variances, without the full sort (P is 513,000 at
    # ImageNet shape).
    candidates = torch.nonzero(var >= torch.topk(var, k).values[-1]).squeeze(1)
    order = torch.sort(var[candidates], descending=True, stable=True).indices[:k]
    return candidates[order]


def top_variance_coords(embeddings, q, num_coords, scale=None):
    """The `num_coords` coordinates of d_i with the largest variance over the rows (the class):
    `coords_by_variance` of `curvature_moments`."""
    return coords_by_variance(*curvature_moments(embeddings, q, scale), num_coords)


def hessian_diag_coords(embeddings, q, coords, scale=None):
    """d_i restricted to `coords`, [n, K], gathered without forming d_i:
    coordinate j < C is s_i q_ij; coordinate C + c D + d is s_i q_ic h_id^2."""
    C, D = q.shape[1], embeddings.shape[1]
    is_bias = coords < C
    w = (coords - C).clamp_min(0)
    cls = torch.where(is_bias, coords, w // D)
    dim = w % D
    h2 = embeddings[:, dim].square()
    h2[:, is_bias] = 1.0
    out = q[:, cls] * h2
    return out if scale is None else out * scale[:, None]


def pairwise_l1(a, b=None, tile=256):
    """|| a_i - b_j ||_1, [n, m], tile by tile so that at most tile x m x K is live at once."""
    b = a if b is None else b
    out = a.new_empty(a.shape[0], b.shape[0])
    for start in range(0, a.shape[0], tile):
        stop = min(start + tile, a.shape[0])
        out[start:stop] = torch.cdist(a[start:stop], b, p=1)
    return out


def lcmat_distance(embeddings, e, q, coords, rho, scale=None):
    """The full per-class block D_ij = ||g_i - g_j||_2 + rho ||d_i[K] - d_j[K]||_1, [n, n]."""
    dist = gradient_distance(embeddings, e, scale)
    if rho != 0 and len(coords) > 0:
        dist = dist + rho * pairwise_l1(hessian_diag_coords(embeddings, q, coords, scale))
    return dist
