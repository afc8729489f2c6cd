"""Matching losses of the condensation methods.

LCMat-C (LCMat paper, Sec. 3.3, Eq. 15), on the last layer (P = C (D + 1) coordinates, bias
then weight, lcmat/reference/gradient_moments.py). For every class c present in both batches,
with g_i the per-sample last-layer gradient of the cross-entropy:

    L_c = dist(mean_{i in T_c} g_i, mean_{j in S_c} g_j)
          + rho / 2 * || var_{i in T_c} g_i - var_{j in S_c} g_j ||_1

T_c the real images of class c, S_c the (decoded, augmented) synthetic ones, var the
per-coordinate population variance (the diagonal of the empirical Fisher minus the squared
mean). The first term is gradient matching: the mean per-sample gradient is the gradient of the
batch's mean loss. ``dist`` is IDC's choice per dataset ("mse": squared L2, "l1"), or "cos", DC's
distance for a weight matrix (the sum over output rows of 1 - cosine, bias not matched). Both
moments come from the closed forms through `lcmat.ops.gradient_moments` (no per-sample autograd,
nothing N x P), differentiable in the synthetic embeddings and logits. rho = 0 is last-layer
gradient matching. The total is the sum of L_c over classes.

DC / DSA (Zhao et al., ICLR 2021; Zhao and Bilen, ICML 2021): gradient matching over every
weight tensor of the network (convolutions and linear layers reshaped to [out, -1]; biases and
normalisation parameters not matched), distance sum_rows (1 - cos), per class, via autograd.

DM (Zhao and Bilen, WACV 2023): || mean_{T_c} phi(x) - mean_{S_c} phi(x) ||^2 summed over
classes, phi the embedding of a randomly initialised network.
"""
import torch
import torch.nn.functional as F

from .. import ops

METRICS = ("mse", "l1", "cos")
_EPS = 1e-6


def check_metric(metric):
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    return metric


def _rows_cosine_distance(a, b):
    """sum over rows of 1 - cos(a_r, b_r) for [R, K] matrices (DC's distance; eps as DC's)."""
    dot = (a * b).sum(1)
    return (1.0 - dot / (a.norm(dim=1) * b.norm(dim=1) + _EPS)).sum()


def gradient_distance(real, syn, metric, num_classes):
    """dist of one class's last-layer gradients, both [P] = [bias (C); weight (C x D)]."""
    if metric == "mse":
        return ((real - syn) ** 2).sum()
    if metric == "l1":
        return (real - syn).abs().sum()
    C = num_classes
    return _rows_cosine_distance(real[C:].reshape(C, -1), syn[C:].reshape(C, -1))


def lcmat_c_loss(h_real, z_real, y_real, h_syn, z_syn, y_syn, rho, metric="mse", backend=None):
    """Sum over the classes present in both batches of L_c (module docstring). The real side is
    a constant (detached)."""
    check_metric(metric)
    rho = float(rho)
    if not rho >= 0:
        raise ValueError(f"rho: expected a non-negative number, got {rho!r}")
    C = z_syn.shape[1]
    with torch.no_grad():
        mean_r, var_r = ops.gradient_moments(h_real.detach(), z_real.detach(), y_real, backend=backend)
    mean_s, var_s = ops.gradient_moments(h_syn, z_syn, y_syn, backend=backend)
    present = (torch.bincount(y_real, minlength=C) > 0) & (torch.bincount(y_syn, minlength=C) > 0)
    loss = z_syn.new_zeros(())
    for c in present.nonzero().flatten().tolist():
        loss = loss + gradient_distance(mean_r[c], mean_s[c], metric, C)
        if rho > 0:
            loss = loss + 0.5 * rho * (var_r[c] - var_s[c]).abs().sum()
    return loss


def dm_loss(emb_real, y_real, emb_syn, y_syn):
    """DM: sum over classes present in both of || mean real embedding - mean synthetic ||^2."""
    loss = emb_syn.new_zeros(())
    for c in torch.unique(y_syn).tolist():
        r, s = emb_real[y_real == c], emb_syn[y_syn == c]
        if len(r) and len(s):
            loss = loss + ((r.detach().mean(0) - s.mean(0)) ** 2).sum()
    return loss


def _weight_distance(g_real, g_syn):
    if g_real.dim() == 1:  # biases and normalisation parameters: not matched (as DC)
        return g_syn.new_zeros(())
    return _rows_cosine_distance(g_real.reshape(g_real.shape[0], -1), g_syn.reshape(g_syn.shape[0], -1))


def network_gradient_matching_loss(model, x_real, y_real, x_syn, y_syn):
    """DC's loss: per class, sum over weight tensors of the row-cosine distance between the
    gradients of the mean cross-entropy on the real and on the synthetic images (second order
    through autograd: create_graph on the synthetic side)."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = x_syn.new_zeros(())
    for c in torch.unique(y_syn).tolist():
        rm, sm = y_real == c, y_syn == c
        if not rm.any():
            continue
        g_real = torch.autograd.grad(F.cross_entropy(model(x_real[rm]), y_real[rm]), params)
        g_syn = torch.autograd.grad(F.cross_entropy(model(x_syn[sm]), y_syn[sm]), params, create_graph=True)
        for gr, gs in zip(g_real, g_syn):
            loss = loss + _weight_distance(gr.detach(), gs)
    return loss
