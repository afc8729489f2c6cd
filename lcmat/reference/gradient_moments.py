"""Per-class mean and variance of last-layer per-sample gradients (softmax cross-entropy).

Notation as in last_layer.py: p = softmax(z), e = p - onehot(y), h the embedding. The last layer's
P = C (D + 1) coordinates are [bias (C); weight (C x D) row-major], and the per-sample gradient
is g_i = [ e_i ; vec(e_i h_i^T) ].

For each class k with members I_k (labels == k, n_k of them):

    mean_k = (1 / n_k) sum_{i in I_k} g_i
           = (1 / n_k) [ sum e_i ; vec(E_k^T H_k) ]
    var_k  = (1 / n_k) sum_{i in I_k} g_i * g_i  -  mean_k * mean_k
           = (1 / n_k) [ sum e_i^2 ; vec((E_k * E_k)^T (H_k * H_k)) ]  -  mean_k^2

(the population variance, elementwise over the P coordinates: the diagonal of the empirical
Fisher minus the outer product of the mean). A class with no member gets zeros. Both are [C, P].
Nothing here forms an N x P tensor: the moments are C x C x D contractions of N x C and N x D.

`gradient_moments` is written with differentiable torch ops, so autograd gives its backward;
`gradient_moments_backward` is the same backward in closed form (what the kernels implement):
with A = dL/dmean - 2 mean * dL/dvar and B = dL/dvar (both [C, P], split into bias a, b and
weight parts A_w, B_w of class k = y_i),

    dL/dh_i = (1 / n_k) [ A_w^T e_i + 2 h_i * (B_w^T (e_i * e_i)) ]
    dL/de_i = (1 / n_k) [ a + A_w h_i + 2 e_i * (b + B_w (h_i * h_i)) ]
    dL/dz_i = p_i * (dL/de_i - <dL/de_i, p_i>)            (softmax backward)
"""
import torch

from .last_layer import last_layer_factors


def _check(embeddings, logits, labels):
    if logits.dim() != 2:
        raise ValueError(f"logits: must be [N, C], got shape {tuple(logits.shape)}")
    n, C = logits.shape
    if embeddings.dim() != 2 or embeddings.shape[0] != n:
        raise ValueError(f"embeddings: must be [{n}, D], got shape {tuple(embeddings.shape)}")
    if labels.dim() != 1 or labels.shape[0] != n or labels.is_floating_point():
        raise ValueError(f"labels: must be {n} integers, got shape {tuple(labels.shape)} {labels.dtype}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= C):
        raise ValueError(f"labels: must lie in [0, {C}), got values in [{int(labels.min())}, {int(labels.max())}]")
    return n, C, embeddings.shape[1]


def _class_sums(onehot, a, b):
    """[C, C, D]: entry [k, c, d] = sum over members i of class k of a[i, c] b[i, d]."""
    n, C = a.shape
    pairs = (onehot[:, :, None] * a[:, None, :]).reshape(n, C * C)  # [N, C*C], no N x D x C
    return (pairs.t() @ b).reshape(C, C, -1)


def gradient_moments(embeddings, logits, labels):
    """(mean, var), both [C, C (D + 1)] in the dtype of `logits`: row k holds the mean and the
    variance of the last-layer per-sample gradients of the samples labelled k."""
    n, C, D = _check(embeddings, logits, labels)
    labels = labels.long()
    h = embeddings.to(logits.dtype)
    e, _ = last_layer_factors(logits, labels)
    onehot = torch.nn.functional.one_hot(labels, C).to(logits.dtype)
    inv = 1.0 / onehot.sum(0).clamp_min(1.0)                     # [C]; empty classes give zeros
    mean_b = (onehot.t() @ e) * inv[:, None]                     # [C, C]
    second_b = (onehot.t() @ (e * e)) * inv[:, None]
    mean_w = _class_sums(onehot, e, h) * inv[:, None, None]      # [C, C, D]
    second_w = _class_sums(onehot, e * e, h * h) * inv[:, None, None]
    mean = torch.cat([mean_b, mean_w.reshape(C, C * D)], dim=1)
    second = torch.cat([second_b, second_w.reshape(C, C * D)], dim=1)
    return mean, second - mean * mean


def gradient_moments_backward(grad_mean, grad_var, embeddings, logits, labels, mean):
    """(dL/dembeddings [N, D], dL/dlogits [N, C]) from dL/dmean and dL/dvar ([C, P] each);
    `mean` is the forward's first output."""
    n, C, D = _check(embeddings, logits, labels)
    labels = labels.long()
    h = embeddings.to(logits.dtype)
    e, _ = last_layer_factors(logits, labels)
    p = e + torch.nn.functional.one_hot(labels, C).to(e.dtype)
    counts = torch.bincount(labels, minlength=C).to(e.dtype).clamp_min(1.0)
    A = grad_mean - 2.0 * mean * grad_var
    B = grad_var
    inv = (1.0 / counts)[labels][:, None]                        # [N, 1]
    a, b = A[labels, :C], B[labels, :C]                          # [N, C]
    A_w = A[:, C:].reshape(C, C, D)
    B_w = B[:, C:].reshape(C, C, D)
    # Per-sample products with the class's own [C, D] block, one class at a time (no N x C x D).
    grad_h = torch.zeros_like(h)
    grad_e = torch.zeros_like(e)
    for k in range(C):
        rows = (labels == k).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        ek, hk = e[rows], h[rows]
        grad_h[rows] = ek @ A_w[k] + 2.0 * hk * ((ek * ek) @ B_w[k])
        grad_e[rows] = hk @ A_w[k].t() + 2.0 * ek * ((hk * hk) @ B_w[k].t())
    grad_h = grad_h * inv
    grad_e = (grad_e + a + 2.0 * e * b) * inv
    grad_z = p * (grad_e - (grad_e * p).sum(1, keepdim=True))
    return grad_h.to(embeddings.dtype), grad_z


def differentiable_moments(forward, backward):
    """A torch.autograd.Function pairing a backend's forward op (embeddings, logits, labels) ->
    (mean, var) with its closed-form backward op (grad_mean, grad_var, embeddings, logits, labels,
    mean) -> (grad_embeddings, grad_logits). First order: the backward is not differentiable."""

    class Moments(torch.autograd.Function):
        @staticmethod
        def forward(ctx, embeddings, logits, labels):
            mean, var = forward(embeddings, logits, labels)
            ctx.save_for_backward(embeddings, logits, labels, mean)
            return mean, var

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad_mean, grad_var):
            embeddings, logits, labels, mean = ctx.saved_tensors
            grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean
            grad_var = torch.zeros_like(mean) if grad_var is None else grad_var
            grad_h, grad_z = backward(grad_mean, grad_var, embeddings, logits, labels, mean)
            return grad_h.to(embeddings.dtype), grad_z, None

    return Moments
