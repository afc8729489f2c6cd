"""The per-class LCMat-S distance block (twin of `lcmat.reference.lcmat_distance`).

    D_ij = || g_i - g_j ||_2 + rho * || d_i[K] - d_j[K] ||_1

computed tile by tile in one kernel: for an output tile (rows I, columns J)
  - the gradient Gram identity <g_i, g_j> = s_i s_j <e_i, e_j> (1 + <h_i, h_j>), two tl.dot
    K-loops over C and D, which also accumulate the squared norms of the tile's rows and columns
    (||g_i||^2 = s_i^2 ||e_i||^2 (1 + ||h_i||^2)), so ||g_i - g_j||^2 = ||g_i||^2 + ||g_j||^2 - 2 <g_i, g_j>
    (clamped at zero, exactly zero on the diagonal);
  - the L1 term over the K gathered Hessian-diagonal coordinates, a broadcast |a_i - b_j| summed
    over coordinate chunks.
Nothing bigger than the n x n output is written. The curvature moments that choose K live in
`last_layer` (they are a pass over the class's rows, like the other last-layer quantities).
"""
import torch
import triton
import triton.language as tl

from ._config import (autotune_configs, bucket, check_device, check_dims, check_scale,
                      compute_dtype, float_dtype, scalars)
from .last_layer import curvature_moments  # noqa: F401  (same family API)


@triton.jit
def _dot_and_norms(x_ptr, rows, cols, row_ok, col_ok, K, stride_n, stride_k,
                   DT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr):
    """(<x_i, x_j> [BLOCK_M, BLOCK_N], ||x_i||^2 [BLOCK_M], ||x_j||^2 [BLOCK_N]) over K features."""
    dots = tl.zeros([BLOCK_M, BLOCK_N], DT)
    row_sq = tl.zeros([BLOCK_M], DT)
    col_sq = tl.zeros([BLOCK_N], DT)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a = tl.load(x_ptr + rows[:, None] * stride_n + ks[None, :] * stride_k,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(DT)
        b = tl.load(x_ptr + cols[:, None] * stride_n + ks[None, :] * stride_k,
                    mask=col_ok[:, None] & k_ok[None, :], other=0.0).to(DT)
        dots = tl.dot(a, tl.trans(b), dots, input_precision="ieee")
        row_sq += tl.sum(a * a, axis=1)
        col_sq += tl.sum(b * b, axis=1)
    return dots, row_sq, col_sq


@triton.jit
def _l1_tile(a_ptr, b_ptr, rows, cols, row_ok, col_ok, K, stride_an, stride_ak,
             stride_bn, stride_bk, DT: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """sum_k |a_ik - b_jk| for a [BLOCK_M, BLOCK_N] tile, BLOCK_L coordinates at a time."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], DT)
    for k0 in range(0, K, BLOCK_L):
        ks = k0 + tl.arange(0, BLOCK_L)
        k_ok = ks < K
        a = tl.load(a_ptr + rows[:, None] * stride_an + ks[None, :] * stride_ak,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(DT)
        b = tl.load(b_ptr + cols[:, None] * stride_bn + ks[None, :] * stride_bk,
                    mask=col_ok[:, None] & k_ok[None, :], other=0.0).to(DT)
        acc += tl.sum(tl.abs(a[:, None, :] - b[None, :, :]), axis=2)
    return acc


# One config, pinned: the tiles set the summation order of every distance, and these blocks feed
# the greedy's picks, which must not change between processes at near-ties (see _config).
_TILE_CONFIGS = dict(
    gpu=[{"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "BLOCK_L": 4}],
    interpret={"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "BLOCK_L": 8},
    warps=(8,), stages=(2,))


@triton.autotune(configs=autotune_configs(**_TILE_CONFIGS), key=["N_KEY", "C_KEY", "D_KEY", "L_KEY"])
@triton.jit
def _distance_kernel(h_ptr, e_ptr, scale_ptr, hd_ptr, out_ptr, rho_ptr, n, C, D, K,
                     stride_hn, stride_hd, stride_en, stride_ec, stride_s, stride_dn, stride_dk,
                     N_KEY, C_KEY, D_KEY, L_KEY,
                     HAS_SCALE: tl.constexpr, HAS_L1: tl.constexpr, DT: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     BLOCK_L: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n
    col_ok = cols < n
    ee, e_row, e_col = _dot_and_norms(e_ptr, rows, cols, row_ok, col_ok, C, stride_en, stride_ec,
                                      DT, BLOCK_M, BLOCK_N, BLOCK_K)
    hh, h_row, h_col = _dot_and_norms(h_ptr, rows, cols, row_ok, col_ok, D, stride_hn, stride_hd,
                                      DT, BLOCK_M, BLOCK_N, BLOCK_K)
    if HAS_SCALE:
        s_row = tl.load(scale_ptr + rows * stride_s, mask=row_ok, other=0.0).to(DT)
        s_col = tl.load(scale_ptr + cols * stride_s, mask=col_ok, other=0.0).to(DT)
        ee = ee * s_row[:, None] * s_col[None, :]
        e_row = e_row * s_row * s_row
        e_col = e_col * s_col * s_col
    gram = ee * (1.0 + hh)
    sq_row = e_row * (1.0 + h_row)
    sq_col = e_col * (1.0 + h_col)
    dist2 = tl.maximum(sq_row[:, None] + sq_col[None, :] - 2.0 * gram, 0.0)
    dist2 = tl.where(rows[:, None] == cols[None, :], 0.0, dist2)
    dist = tl.sqrt(dist2)
    if HAS_L1:
        dist += tl.load(rho_ptr) * _l1_tile(hd_ptr, hd_ptr, rows, cols, row_ok, col_ok, K, stride_dn, stride_dk,
                               stride_dn, stride_dk, DT, BLOCK_M, BLOCK_N, BLOCK_L)
    tl.store(out_ptr + rows[:, None] * n + cols[None, :], dist.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.autotune(configs=autotune_configs(**_TILE_CONFIGS), key=["N_KEY", "M_KEY", "L_KEY"])
@triton.jit
def _l1_kernel(a_ptr, b_ptr, out_ptr, n, m, K, stride_an, stride_ak, stride_bn, stride_bk,
               N_KEY, M_KEY, L_KEY, DT: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n
    col_ok = cols < m
    acc = _l1_tile(a_ptr, b_ptr, rows, cols, row_ok, col_ok, K, stride_an, stride_ak,
                   stride_bn, stride_bk, DT, BLOCK_M, BLOCK_N, BLOCK_L)
    tl.store(out_ptr + rows[:, None] * m + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.autotune(
    configs=autotune_configs(gpu=[{"BLOCK_N": 32, "BLOCK_K": 128}, {"BLOCK_N": 128, "BLOCK_K": 32}],
                             interpret={"BLOCK_N": 16, "BLOCK_K": 16}),
    key=["N_KEY", "K_KEY"])
@triton.jit
def _hessian_coords_kernel(h_ptr, q_ptr, scale_ptr, coords_ptr, out_ptr, n, C, D, K,
                           stride_hn, stride_hd, stride_qn, stride_qc, stride_s, N_KEY, K_KEY,
                           HAS_SCALE: tl.constexpr, DT: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[i, k] = d_i[coords[k]]: s_i q_ic for a bias coordinate c < C, s_i q_ic h_id^2 for the
    weight coordinate C + c D + d."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < n
    k_ok = ks < K
    coord = tl.load(coords_ptr + ks, mask=k_ok, other=0)
    is_bias = coord < C
    w = tl.maximum(coord - C, 0)
    cls = tl.where(is_bias, coord, w // D)
    dim = w % D
    mask = row_ok[:, None] & k_ok[None, :]
    q = tl.load(q_ptr + rows[:, None] * stride_qn + cls[None, :] * stride_qc, mask=mask,
                other=0.0).to(DT)
    h = tl.load(h_ptr + rows[:, None] * stride_hn + dim[None, :] * stride_hd,
                mask=mask & (coord >= C)[None, :], other=1.0).to(DT)
    val = q * h * h
    if HAS_SCALE:
        val = val * tl.load(scale_ptr + rows * stride_s, mask=row_ok, other=0.0).to(DT)[:, None]
    tl.store(out_ptr + rows[:, None] * K + ks[None, :], val.to(out_ptr.dtype.element_ty), mask=mask)


def _check_class_rows(embeddings, e, e_name, scale):
    float_dtype(embeddings, "embeddings")
    float_dtype(e, e_name)
    check_dims(embeddings, 2, "embeddings")
    check_dims(e, 2, e_name)
    if e.shape[0] != embeddings.shape[0]:
        raise ValueError(f"{e_name}: expected {embeddings.shape[0]} rows like embeddings, "
                         f"got {e.shape[0]}")
    check_scale(scale, embeddings.shape[0])


def hessian_diag_coords(embeddings, q, coords, scale=None):
    """d_i restricted to `coords`, [n, K], gathered without forming d_i."""
    _check_class_rows(embeddings, q, "q", scale)
    n, d = embeddings.shape
    c = q.shape[1]
    if not isinstance(coords, torch.Tensor) or coords.dim() != 1 or coords.dtype.is_floating_point:
        raise ValueError("coords: expected a 1-D integer tensor")
    check_device("embeddings, q, coords, scale", embeddings, q, coords, scale)
    coords = coords.contiguous()
    k = coords.shape[0]
    dtype = torch.promote_types(embeddings.dtype, q.dtype)
    out = torch.empty((n, k), dtype=dtype, device=q.device)
    if n == 0 or k == 0:
        return out
    if int(coords.min()) < 0 or int(coords.max()) >= c * (d + 1):
        raise ValueError(f"coords: values must lie in [0, {c * (d + 1)}), "
                         f"got [{int(coords.min())}, {int(coords.max())}]")
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(k, meta["BLOCK_K"]))
    _hessian_coords_kernel[grid](
        embeddings, q, scale if scale is not None else out, coords, out, n, c, max(d, 1), k,
        embeddings.stride(0), embeddings.stride(1), q.stride(0), q.stride(1),
        scale.stride(0) if scale is not None else 0, bucket(n), bucket(k),
        HAS_SCALE=scale is not None, DT=compute_dtype(embeddings, q))
    return out


def _distance(embeddings, e, scale, hd, rho):
    n, d = embeddings.shape
    c = e.shape[1]
    dtype = torch.promote_types(embeddings.dtype, e.dtype)
    out = torch.empty((n, n), dtype=dtype, device=e.device)
    if n == 0:
        return out
    has_l1 = hd is not None
    k = hd.shape[1] if has_l1 else 0
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))
    dt = compute_dtype(embeddings, e, hd)
    rho_t = scalars(dt, e.device, float(rho))
    _distance_kernel[grid](
        embeddings, e, scale if scale is not None else out, hd if has_l1 else out, out,
        rho_t, n, c, d, k, embeddings.stride(0), embeddings.stride(1), e.stride(0),
        e.stride(1), scale.stride(0) if scale is not None else 0,
        hd.stride(0) if has_l1 else 0, hd.stride(1) if has_l1 else 0,
        bucket(n), bucket(c), bucket(d), bucket(k), HAS_SCALE=scale is not None,
        HAS_L1=has_l1, DT=dt)
    return out


def gradient_distance(embeddings, e, scale=None):
    """|| g_i - g_j ||_2, [n, n], from the Gram identity (never forms the n x C(D+1) gradients)."""
    _check_class_rows(embeddings, e, "e", scale)
    check_device("embeddings, e, scale", embeddings, e, scale)
    return _distance(embeddings, e, scale, None, 0.0)


def pairwise_l1(a, b=None, tile=256):
    """|| a_i - b_j ||_1, [n, m], tile by tile. `tile` is accepted for parity with the reference;
    the kernel's tiles come from the autotuner."""
    float_dtype(a, "a")
    check_dims(a, 2, "a")
    if int(tile) != tile or tile < 1:
        raise ValueError(f"tile: expected a positive integer, got {tile!r}")
    if b is None:
        b = a
    float_dtype(b, "b")
    check_dims(b, 2, "b")
    if b.shape[1] != a.shape[1]:
        raise ValueError(f"b: expected {a.shape[1]} columns like a, got {b.shape[1]}")
    check_device("a, b", a, b)
    n, m, k = a.shape[0], b.shape[0], a.shape[1]
    out = torch.empty((n, m), dtype=torch.promote_types(a.dtype, b.dtype), device=a.device)
    if n == 0 or m == 0:
        return out
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), triton.cdiv(m, meta["BLOCK_N"]))
    _l1_kernel[grid](a, b, out, n, m, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                     bucket(n), bucket(m), bucket(k), DT=compute_dtype(a, b))
    return out


def lcmat_distance(embeddings, e, q, coords, rho, scale=None):
    """The full per-class block D_ij = ||g_i - g_j||_2 + rho ||d_i[K] - d_j[K]||_1, [n, n], in one
    fused kernel (the K gathered coordinates d_i[K] are formed first, n x K)."""
    _check_class_rows(embeddings, e, "e", scale)
    _check_class_rows(embeddings, q, "q", None)
    check_device("embeddings, e, q, coords, scale", embeddings, e, q, coords, scale)
    hd = None
    if rho != 0 and len(coords) > 0:
        hd = hessian_diag_coords(embeddings, q, coords, scale)
    return _distance(embeddings, e, scale, hd, rho)
