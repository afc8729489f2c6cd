"""Per-class mean and variance of last-layer per-sample gradients, and their backward (twin of
`lcmat.reference.gradient_moments`).

The bias is treated as a weight on a constant embedding coordinate: h1 = [1, h] ([N, D + 1]), so
the class-k moments are one [C, D + 1] block per class, column 0 being the bias.

    forward   one program per (class k, output c, column tile): it walks the members of class k
              (rows sorted by label, class offsets) accumulating e_ic h1_i and e_ic^2 h1_i^2.
    backward  A = dL/dmean - 2 mean dL/dvar, B = dL/dvar as [C, C, D + 1] blocks;
              dL/dh1_i = (1/n_k) sum_c (A[k, c] e_ic + 2 h1_i B[k, c] e_ic^2)   (program per row, tile)
              dL/de_ic = (1/n_k) sum_d (A[k, c, d] h1_id + 2 e_ic B[k, c, d] h1_id^2)  (per row, c)
The softmax factors e come from the last_layer twin; the softmax backward (N x C) and the
reshapes are torch ops.
"""
import torch
import triton
import triton.language as tl

from lcmat.reference.gradient_moments import differentiable_moments

from ._config import INTERPRET, check_device, check_dims, check_labels, float_dtype
from .last_layer import last_layer_factors


def _block_d(D1):
    return 16 if INTERPRET else min(triton.next_power_of_2(D1), 256)


@triton.jit
def _moments_kernel(h1_ptr, e_ptr, order_ptr, start_ptr, mean_ptr, var_ptr, C, D1,
                    BLOCK_D: tl.constexpr):
    kc = tl.program_id(0)
    k = kc // C
    c = kc % C
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D1
    lo = tl.load(start_ptr + k)
    hi = tl.load(start_ptr + k + 1)
    s1 = tl.zeros([BLOCK_D], dtype=mean_ptr.dtype.element_ty)
    s2 = tl.zeros([BLOCK_D], dtype=mean_ptr.dtype.element_ty)
    for j in range(lo, hi):
        i = tl.load(order_ptr + j)
        ec = tl.load(e_ptr + i * C + c)
        x = tl.load(h1_ptr + i * D1 + cols, mask=col_ok, other=0.0)
        s1 += ec * x
        s2 += ec * ec * x * x
    count = (hi - lo).to(s1.dtype)
    inv = tl.where(count > 0, 1.0 / tl.maximum(count, 1.0), 0.0)
    m = s1 * inv
    v = s2 * inv - m * m
    tl.store(mean_ptr + kc * D1 + cols, m, mask=col_ok)
    tl.store(var_ptr + kc * D1 + cols, v, mask=col_ok)


@triton.jit
def _grad_h_kernel(A_ptr, B_ptr, h1_ptr, e_ptr, labels_ptr, inv_ptr, gh_ptr, C, D1,
                   BLOCK_D: tl.constexpr):
    i = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D1
    k = tl.load(labels_ptr + i)
    inv = tl.load(inv_ptr + i)
    x = tl.load(h1_ptr + i * D1 + cols, mask=col_ok, other=0.0)
    acc = tl.zeros([BLOCK_D], dtype=gh_ptr.dtype.element_ty)
    for c in range(0, C):
        ec = tl.load(e_ptr + i * C + c)
        a = tl.load(A_ptr + (k * C + c) * D1 + cols, mask=col_ok, other=0.0)
        b = tl.load(B_ptr + (k * C + c) * D1 + cols, mask=col_ok, other=0.0)
        acc += ec * a + 2.0 * ec * ec * x * b
    tl.store(gh_ptr + i * D1 + cols, acc * inv, mask=col_ok)


@triton.jit
def _grad_e_kernel(A_ptr, B_ptr, h1_ptr, e_ptr, labels_ptr, inv_ptr, ge_ptr, C, D1,
                   BLOCK_D: tl.constexpr):
    i = tl.program_id(0)
    c = tl.program_id(1)
    k = tl.load(labels_ptr + i)
    inv = tl.load(inv_ptr + i)
    ec = tl.load(e_ptr + i * C + c)
    lin = tl.zeros([BLOCK_D], dtype=ge_ptr.dtype.element_ty)
    quad = tl.zeros([BLOCK_D], dtype=ge_ptr.dtype.element_ty)
    for d0 in range(0, D1, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        col_ok = cols < D1
        x = tl.load(h1_ptr + i * D1 + cols, mask=col_ok, other=0.0)
        a = tl.load(A_ptr + (k * C + c) * D1 + cols, mask=col_ok, other=0.0)
        b = tl.load(B_ptr + (k * C + c) * D1 + cols, mask=col_ok, other=0.0)
        lin += a * x
        quad += b * x * x
    tl.store(ge_ptr + i * C + c, inv * (tl.sum(lin, axis=0) + 2.0 * ec * tl.sum(quad, axis=0)))


def _prepare(embeddings, logits, labels):
    float_dtype(logits, "logits")
    float_dtype(embeddings, "embeddings")
    check_dims(logits, 2, "logits")
    check_dims(embeddings, 2, "embeddings")
    n, C = logits.shape
    if embeddings.shape[0] != n:
        raise ValueError(f"embeddings: expected {n} rows, got {embeddings.shape[0]}")
    check_labels(labels, C, n)
    check_device("gradient_moments", embeddings, logits, labels)
    dt = logits.dtype if logits.dtype in (torch.float32, torch.float64) else torch.float32
    z = logits.to(dt).contiguous()
    h1 = torch.cat([torch.ones(n, 1, dtype=dt, device=z.device), embeddings.to(dt)], dim=1).contiguous()
    y = labels.long().contiguous()
    e, _ = last_layer_factors(z, y)
    return n, C, embeddings.shape[1], dt, h1, e.to(dt).contiguous(), y


def _from_blocks(blocks, C, D):
    """[C, C, D + 1] (bias in column 0) -> [C, P] with P = [bias (C); weight (C x D)]."""
    return torch.cat([blocks[:, :, 0], blocks[:, :, 1:].reshape(C, C * D)], dim=1)


def _to_blocks(rows, C, D):
    """[C, P] -> [C, C, D + 1], the inverse of _from_blocks."""
    return torch.cat([rows[:, :C, None], rows[:, C:].reshape(C, C, D)], dim=2).contiguous()


def gradient_moments_forward(embeddings, logits, labels):
    n, C, D, dt, h1, e, y = _prepare(embeddings, logits, labels)
    order = torch.argsort(y, stable=True).contiguous()
    start = torch.zeros(C + 1, dtype=torch.long, device=y.device)
    start[1:] = torch.cumsum(torch.bincount(y, minlength=C), 0)
    mean = torch.empty(C, C, D + 1, dtype=dt, device=e.device)
    var = torch.empty_like(mean)
    if C:
        BD = _block_d(D + 1)
        _moments_kernel[(C * C, triton.cdiv(D + 1, BD))](h1, e, order, start, mean, var, C, D + 1, BLOCK_D=BD)
    return _from_blocks(mean, C, D).to(logits.dtype), _from_blocks(var, C, D).to(logits.dtype)


def gradient_moments_backward(grad_mean, grad_var, embeddings, logits, labels, mean):
    n, C, D, dt, h1, e, y = _prepare(embeddings, logits, labels)
    for t, name in ((grad_mean, "grad_mean"), (grad_var, "grad_var"), (mean, "mean")):
        if tuple(t.shape) != (C, C * (D + 1)):
            raise ValueError(f"{name}: expected shape ({C}, {C * (D + 1)}), got {tuple(t.shape)}")
    B = grad_var.to(dt)
    A = _to_blocks(grad_mean.to(dt) - 2.0 * mean.to(dt) * B, C, D)
    B = _to_blocks(B, C, D)
    inv = (1.0 / torch.bincount(y, minlength=C).to(dt).clamp_min(1.0))[y].contiguous()
    grad_h1 = torch.empty(n, D + 1, dtype=dt, device=e.device)
    grad_e = torch.empty(n, C, dtype=dt, device=e.device)
    if n and C:
        BD = _block_d(D + 1)
        _grad_h_kernel[(n, triton.cdiv(D + 1, BD))](A, B, h1, e, y, inv, grad_h1, C, D + 1, BLOCK_D=BD)
        _grad_e_kernel[(n, C)](A, B, h1, e, y, inv, grad_e, C, D + 1, BLOCK_D=BD)
    p = e + torch.nn.functional.one_hot(y, C).to(dt)
    grad_z = p * (grad_e - (grad_e * p).sum(1, keepdim=True))
    return grad_h1[:, 1:].to(embeddings.dtype), grad_z.to(logits.dtype)


_GradientMoments = differentiable_moments(gradient_moments_forward, gradient_moments_backward)


def gradient_moments(embeddings, logits, labels):
    """(mean, var), [C, C (D + 1)] each, differentiable in embeddings and logits."""
    return _GradientMoments.apply(embeddings, logits, labels)
