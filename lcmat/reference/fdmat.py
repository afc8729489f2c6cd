"""FDMat's feature transform, prototype cost and transport score (docs/design.md, "FDMat")."""
import torch


def fdmat_transform(features, beta=0.5, eps=1e-6):
    """x <- (x + eps)^beta, then x~_i = (x_i - m) / ||x_i|| with m the mean of the transformed x.

    Features must be non-negative (post-ReLU); callers validate that. The mean is accumulated
    in float64; besides the result, no input-sized temporary is made.
    """
    x = (features + eps).pow_(beta)
    mean = x.sum(0, dtype=torch.float64).div_(len(x)).to(x.dtype)
    norm = x.norm(dim=1, keepdim=True)
    return x.sub_(mean).div_(norm)


def class_prototypes(x, labels, num_classes):
    """mu_c = mean of x over class c, [C, D] (a class with no sample gets a zero prototype)."""
    sums = x.new_zeros(num_classes, x.shape[1]).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).to(x.dtype)
    return sums / counts[:, None]


def prototype_cost(x, prototypes):
    """M_ic = ||x_i - mu_c||^2 = ||x_i||^2 - 2 <x_i, mu_c> + ||mu_c||^2, [N, C], one GEMM."""
    sq = (x * x).sum(1)[:, None] + (prototypes * prototypes).sum(1)[None, :]
    return (sq - 2.0 * x @ prototypes.T).clamp_min_(0.0)


def fdmat_scores(M, f, g, reg):
    """s_i = sum_c (P_ic M_ic)^2 with P_ic = exp((f_i + g_c - M_ic) / reg), P never stored whole
    by the kernels (here it is formed for clarity)."""
    plan = torch.exp((f[:, None] + g[None, :] - M) / reg)
    return (plan * M).square().sum(1)
