"""Last-layer per-sample quantities (twin of `lcmat.reference.last_layer`, plus the curvature
moments of `lcmat.reference.lcmat_distance`).

Notation (docs/design.md, "Notation"): p = softmax(z), e = p - onehot(y), q = p (1 - p), h the embedding.

One pass over a row of Z keeps, online over column tiles (rescaling when the running max m moves):
    s       = sum_j exp(z_j - m)
    s_other = sum_{j != y} exp(z_j - m)
    s2      = sum_{j != y} exp(2 (z_j - m))
from which, without cancellation even for confident samples,
    e_y = p_y - 1 = -s_other / s,      1 - p_y = s_other / s,
    ||e||^2 = s2 / s^2 + (s_other / s)^2.
(The reference forms p_y - 1 in floating point, so for p_y ~ 1 it is accurate to ~eps only; these
are accurate to ~eps relative.)

The Hessian-diagonal moments of one class (mean and second moment of every coordinate over the
rows) are two C x D GEMMs, (s q)^T h^2 and ((s q)^2)^T h^4, accumulated in float64 tile by tile
(the variances m2 - m1^2 are tiny and cancel badly in float32); nothing N x C x D is formed.
"""
import torch
import triton
import triton.language as tl

from ._config import (autotune_configs, bucket, check_device, check_dims, check_labels,
                      check_scale, compute_dtype, float_dtype)


@triton.jit
def _softmax_stats(z_ptr, rows, row_ok, y, C, stride_zn, stride_zc,
                   DT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Online (m, s, s_other, s2) of the docstring above for a block of rows."""
    m = tl.full([BLOCK_N], float("-inf"), DT)
    s = tl.zeros([BLOCK_N], DT)
    s_other = tl.zeros([BLOCK_N], DT)
    s2 = tl.zeros([BLOCK_N], DT)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = cols < C
        z = tl.load(z_ptr + rows[:, None] * stride_zn + cols[None, :] * stride_zc,
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(DT)
        # Padding columns are -inf (weight 0); padding rows stay finite (no NaN anywhere).
        z = tl.where(col_ok[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        alpha = tl.exp(m - m_new)
        w = tl.exp(z - m_new[:, None])
        w_other = tl.where(cols[None, :] == y[:, None], 0.0, w)
        s = s * alpha + tl.sum(w, axis=1)
        s_other = s_other * alpha + tl.sum(w_other, axis=1)
        s2 = s2 * alpha * alpha + tl.sum(w_other * w_other, axis=1)
        m = m_new
    return m, s, s_other, s2


@triton.autotune(
    configs=autotune_configs(
        gpu=[{"BLOCK_N": 2, "BLOCK_C": 1024}, {"BLOCK_N": 8, "BLOCK_C": 256},
             {"BLOCK_N": 32, "BLOCK_C": 64}],
        interpret={"BLOCK_N": 16, "BLOCK_C": 16}, warps=(4, 8)),
    key=["N_KEY", "C_KEY"])
@triton.jit
def _factors_kernel(z_ptr, y_ptr, e_ptr, q_ptr, N, C, stride_zn, stride_zc, stride_y,
                    N_KEY, C_KEY, DT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """e = p - onehot(y), q = p (1 - p) for a block of rows; e, q contiguous [N, C]."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    y = tl.load(y_ptr + rows * stride_y, mask=row_ok, other=0)
    m, s, s_other, s2 = _softmax_stats(z_ptr, rows, row_ok, y, C, stride_zn, stride_zc,
                                       DT, BLOCK_N, BLOCK_C)
    other_mass = s_other / s  # 1 - p_y, without cancellation
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = row_ok[:, None] & (cols[None, :] < C)
        z = tl.load(z_ptr + rows[:, None] * stride_zn + cols[None, :] * stride_zc,
                    mask=mask, other=0.0).to(DT)
        p = tl.exp(z - m[:, None]) / s[:, None]
        is_y = cols[None, :] == y[:, None]
        e = tl.where(is_y, -other_mass[:, None], p)
        q = p * tl.where(is_y, other_mass[:, None], 1.0 - p)
        offs = rows[:, None] * C + cols[None, :]
        tl.store(e_ptr + offs, e.to(e_ptr.dtype.element_ty), mask=mask)
        tl.store(q_ptr + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


@triton.autotune(
    configs=autotune_configs(
        gpu=[{"BLOCK_N": 2, "BLOCK_C": 1024, "BLOCK_D": 512},
             {"BLOCK_N": 8, "BLOCK_C": 256, "BLOCK_D": 256},
             {"BLOCK_N": 32, "BLOCK_C": 64, "BLOCK_D": 64}],
        interpret={"BLOCK_N": 16, "BLOCK_C": 16, "BLOCK_D": 16}, warps=(4, 8)),
    key=["N_KEY", "C_KEY", "D_KEY"])
@triton.jit
def _grad_norms_kernel(h_ptr, z_ptr, y_ptr, scale_ptr, grad_ptr, err_ptr, N, C, D,
                       stride_hn, stride_hd, stride_zn, stride_zc, stride_y, stride_s,
                       N_KEY, C_KEY, D_KEY, HAS_SCALE: tl.constexpr, DT: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    """||g_i|| = |s_i| ||e_i|| sqrt(1 + ||h_i||^2) and ||e_i|| in one pass over (H, Z, y)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    y = tl.load(y_ptr + rows * stride_y, mask=row_ok, other=0)
    m, s, s_other, s2 = _softmax_stats(z_ptr, rows, row_ok, y, C, stride_zn, stride_zc,
                                       DT, BLOCK_N, BLOCK_C)
    other_mass = s_other / s
    err2 = s2 / (s * s) + other_mass * other_mass
    h2 = tl.zeros([BLOCK_N], DT)
    for d0 in range(0, D, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D)
        h = tl.load(h_ptr + rows[:, None] * stride_hn + dims[None, :] * stride_hd,
                    mask=row_ok[:, None] & (dims[None, :] < D), other=0.0).to(DT)
        h2 += tl.sum(h * h, axis=1)
    err = tl.sqrt(err2)
    grad = err * tl.sqrt(1.0 + h2)
    if HAS_SCALE:
        grad = grad * tl.abs(tl.load(scale_ptr + rows * stride_s, mask=row_ok, other=0.0).to(DT))
    tl.store(grad_ptr + rows, grad.to(grad_ptr.dtype.element_ty), mask=row_ok)
    tl.store(err_ptr + rows, err.to(err_ptr.dtype.element_ty), mask=row_ok)


@triton.autotune(
    configs=autotune_configs(
        gpu=[{"BLOCK_N": 32, "BLOCK_C": 64, "BLOCK_D": 64},
             {"BLOCK_N": 16, "BLOCK_C": 32, "BLOCK_D": 64},
             {"BLOCK_N": 32, "BLOCK_C": 32, "BLOCK_D": 32}],
        interpret={"BLOCK_N": 16, "BLOCK_C": 16, "BLOCK_D": 16}, warps=(4,), stages=(2, 3)),
    key=["N_KEY", "C_KEY", "D_KEY"])
@triton.jit
def _moments_kernel(h_ptr, q_ptr, scale_ptr, sum1_ptr, sum2_ptr, N, C, D,
                    stride_hn, stride_hd, stride_qn, stride_qc, stride_s,
                    N_KEY, C_KEY, D_KEY, HAS_SCALE: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    """Float64 sums over the rows of d and d^2 for a (class tile, dim tile) of weight coordinates;
    the programs of the first dim tile also sum the bias coordinates s q and (s q)^2.
    sum1, sum2 are [C + C D] laid out like the reference's coordinates."""
    pid_c = tl.program_id(0)
    pid_d = tl.program_id(1)
    cls = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    dims = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    cls_ok = cls < C
    dims_ok = dims < D
    w1 = tl.zeros([BLOCK_C, BLOCK_D], tl.float64)
    w2 = tl.zeros([BLOCK_C, BLOCK_D], tl.float64)
    b1 = tl.zeros([BLOCK_C], tl.float64)
    b2 = tl.zeros([BLOCK_C], tl.float64)
    for n0 in range(0, N, BLOCK_N):
        rows = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        row_ok = rows < N
        sq = tl.load(q_ptr + rows[:, None] * stride_qn + cls[None, :] * stride_qc,
                     mask=row_ok[:, None] & cls_ok[None, :], other=0.0).to(tl.float64)
        if HAS_SCALE:
            sq = sq * tl.load(scale_ptr + rows * stride_s, mask=row_ok, other=0.0).to(tl.float64)[:, None]
        h = tl.load(h_ptr + rows[:, None] * stride_hn + dims[None, :] * stride_hd,
                    mask=row_ok[:, None] & dims_ok[None, :], other=0.0).to(tl.float64)
        h2 = h * h
        sq_t = tl.trans(sq)  # [BLOCK_C, BLOCK_N]
        w1 = tl.dot(sq_t, h2, w1, input_precision="ieee")
        w2 = tl.dot(sq_t * sq_t, h2 * h2, w2, input_precision="ieee")
        b1 += tl.sum(sq, axis=0)
        b2 += tl.sum(sq * sq, axis=0)
    offs = C + cls[:, None] * D + dims[None, :]
    mask = cls_ok[:, None] & dims_ok[None, :]
    tl.store(sum1_ptr + offs, w1, mask=mask)
    tl.store(sum2_ptr + offs, w2, mask=mask)
    if pid_d == 0:
        tl.store(sum1_ptr + cls, b1, mask=cls_ok)
        tl.store(sum2_ptr + cls, b2, mask=cls_ok)


def _check_logits(logits, labels):
    float_dtype(logits, "logits")
    check_dims(logits, 2, "logits")
    check_labels(labels, logits.shape[1], logits.shape[0])
    check_device("logits, labels", logits, labels)


def _row_grid(n):
    return lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)


def last_layer_factors(logits, labels):
    """e = softmax(z) - onehot(y) and q = p (1 - p), both [N, C], in the dtype of `logits`."""
    _check_logits(logits, labels)
    n, c = logits.shape
    e = torch.empty((n, c), dtype=logits.dtype, device=logits.device)
    q = torch.empty_like(e)
    if n == 0 or c == 0:
        return e, q
    _factors_kernel[_row_grid(n)](
        logits, labels, e, q, n, c, logits.stride(0), logits.stride(1), labels.stride(0),
        bucket(n), bucket(c), DT=compute_dtype(logits))
    return e, q


def last_layer_grad_norms(embeddings, logits, labels, scale=None):
    """(||g_i||, ||e_i||): the last-layer gradient norm and the error norm (EL2N), both [N].

    ||g_i||^2 = s_i^2 ||e_i||^2 (1 + ||h_i||^2), in one fused pass over (H, Z, y).
    """
    _check_logits(logits, labels)
    float_dtype(embeddings, "embeddings")
    check_dims(embeddings, 2, "embeddings")
    n, c = logits.shape
    if embeddings.shape[0] != n:
        raise ValueError(f"embeddings: expected {n} rows like logits, got {embeddings.shape[0]}")
    check_scale(scale, n)
    check_device("embeddings, logits, labels, scale", embeddings, logits, labels, scale)
    dtype = torch.promote_types(embeddings.dtype, logits.dtype)
    grad = torch.empty(n, dtype=dtype, device=logits.device)
    err = torch.empty(n, dtype=dtype, device=logits.device)
    if n == 0:
        return grad, err
    if c == 0:
        raise ValueError("logits: need at least one class")
    d = embeddings.shape[1]
    _grad_norms_kernel[_row_grid(n)](
        embeddings, logits, labels, scale if scale is not None else grad, grad, err, n, c, d,
        embeddings.stride(0), embeddings.stride(1), logits.stride(0), logits.stride(1),
        labels.stride(0), scale.stride(0) if scale is not None else 0,
        bucket(n), bucket(c), bucket(d), HAS_SCALE=scale is not None,
        DT=compute_dtype(embeddings, logits))
    return grad, err


def curvature_moments(embeddings, q, scale=None):
    """Mean and second moment over the rows of every Hessian-diagonal coordinate, two float64 [P]
    vectors (P = C (D + 1), bias coordinates first, then the weight row-major)."""
    float_dtype(embeddings, "embeddings")
    float_dtype(q, "q")
    check_dims(embeddings, 2, "embeddings")
    check_dims(q, 2, "q")
    n, d = embeddings.shape
    c = q.shape[1]
    if q.shape[0] != n:
        raise ValueError(f"q: expected {n} rows like embeddings, got {q.shape[0]}")
    check_scale(scale, n)
    check_device("embeddings, q, scale", embeddings, q, scale)
    sum1 = torch.zeros(c * (d + 1), dtype=torch.float64, device=q.device)
    sum2 = torch.zeros_like(sum1)
    if n > 0 and c > 0:
        grid = lambda meta: (triton.cdiv(c, meta["BLOCK_C"]), max(triton.cdiv(d, meta["BLOCK_D"]), 1))
        _moments_kernel[grid](
            embeddings, q, scale if scale is not None else sum1, sum1, sum2, n, c, d,
            embeddings.stride(0), embeddings.stride(1), q.stride(0), q.stride(1),
            scale.stride(0) if scale is not None else 0,
            bucket(n), bucket(c), bucket(d), HAS_SCALE=scale is not None)
    return sum1 / n, sum2 / n
