"""FDMat's prototype cost and transport score (twin of `lcmat.reference.fdmat`).

    M_ic = ||x_i - mu_c||^2 = ||x_i||^2 + ||mu_c||^2 - 2 <x_i, mu_c>   (one tl.dot K-loop per tile,
                                                                       norms accumulated alongside)
    s_i  = sum_c (P_ic M_ic)^2,  P_ic = exp((f_i + g_c - M_ic) / reg)  (row tiles streaming the
                                                                       classes; P never stored)
"""
import math

import torch
import triton
import triton.language as tl

from ._config import (autotune_configs, bucket, check_device, check_dims, compute_dtype,
                      float_dtype, scalars)


@triton.autotune(
    configs=autotune_configs(
        gpu=[{"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32},
             {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32}],
        interpret={"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}, warps=(4, 8), stages=(2, 3)),
    key=["N_KEY", "C_KEY", "D_KEY"])
@triton.jit
def _prototype_cost_kernel(x_ptr, mu_ptr, out_ptr, N, C, D, stride_xn, stride_xd, stride_mc,
                           stride_md, N_KEY, C_KEY, D_KEY, DT: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cls = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    cls_ok = cls < C
    dots = tl.zeros([BLOCK_M, BLOCK_N], DT)
    xx = tl.zeros([BLOCK_M], DT)
    mm = tl.zeros([BLOCK_N], DT)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < D
        x = tl.load(x_ptr + rows[:, None] * stride_xn + ks[None, :] * stride_xd,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(DT)
        mu = tl.load(mu_ptr + cls[:, None] * stride_mc + ks[None, :] * stride_md,
                     mask=cls_ok[:, None] & k_ok[None, :], other=0.0).to(DT)
        dots = tl.dot(x, tl.trans(mu), dots, input_precision="ieee")
        xx += tl.sum(x * x, axis=1)
        mm += tl.sum(mu * mu, axis=1)
    cost = tl.maximum(xx[:, None] + mm[None, :] - 2.0 * dots, 0.0)
    tl.store(out_ptr + rows[:, None] * C + cls[None, :], cost.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & cls_ok[None, :])


@triton.autotune(
    configs=autotune_configs(
        gpu=[{"BLOCK_N": 16, "BLOCK_C": 128}, {"BLOCK_N": 4, "BLOCK_C": 512},
             {"BLOCK_N": 64, "BLOCK_C": 32}],
        interpret={"BLOCK_N": 16, "BLOCK_C": 16}, warps=(4, 8)),
    key=["N_KEY", "C_KEY"])
@triton.jit
def _scores_kernel(M_ptr, f_ptr, g_ptr, out_ptr, N, C, inv_reg_ptr, stride_mn, stride_mc,
                   stride_f, stride_g, N_KEY, C_KEY, DT: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    f = tl.load(f_ptr + rows * stride_f, mask=row_ok, other=0.0).to(DT)
    inv_reg = tl.load(inv_reg_ptr)
    acc = tl.zeros([BLOCK_N], DT)
    for c0 in range(0, C, BLOCK_C):
        cls = c0 + tl.arange(0, BLOCK_C)
        cls_ok = cls < C
        mask = row_ok[:, None] & cls_ok[None, :]
        M = tl.load(M_ptr + rows[:, None] * stride_mn + cls[None, :] * stride_mc, mask=mask,
                    other=0.0).to(DT)
        g = tl.load(g_ptr + cls * stride_g, mask=cls_ok, other=0.0).to(DT)
        pm = tl.exp((f[:, None] + g[None, :] - M) * inv_reg) * M
        acc += tl.sum(tl.where(mask, pm * pm, 0.0), axis=1)
    tl.store(out_ptr + rows, acc.to(out_ptr.dtype.element_ty), mask=row_ok)


def prototype_cost(x, prototypes):
    """M_ic = ||x_i - mu_c||^2, [N, C], clamped at zero, one fused GEMM-and-norms kernel."""
    float_dtype(x, "x")
    float_dtype(prototypes, "prototypes")
    check_dims(x, 2, "x")
    check_dims(prototypes, 2, "prototypes")
    if x.shape[1] != prototypes.shape[1]:
        raise ValueError(f"prototypes: expected {x.shape[1]} features like x, "
                         f"got {prototypes.shape[1]}")
    check_device("x, prototypes", x, prototypes)
    n, d = x.shape
    c = prototypes.shape[0]
    out = torch.empty((n, c), dtype=torch.promote_types(x.dtype, prototypes.dtype), device=x.device)
    if n == 0 or c == 0:
        return out
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), triton.cdiv(c, meta["BLOCK_N"]))
    _prototype_cost_kernel[grid](x, prototypes, out, n, c, d, x.stride(0), x.stride(1),
                                 prototypes.stride(0), prototypes.stride(1), bucket(n), bucket(c),
                                 bucket(d), DT=compute_dtype(x, prototypes))
    return out


def fdmat_scores(M, f, g, reg):
    """s_i = sum_c (P_ic M_ic)^2 with P_ic = exp((f_i + g_c - M_ic) / reg), P never stored."""
    float_dtype(M, "M")
    check_dims(M, 2, "M")
    n, c = M.shape
    for t, name, size in ((f, "f", n), (g, "g", c)):
        float_dtype(t, name)
        if t.dim() != 1 or t.shape[0] != size:
            raise ValueError(f"{name}: expected shape ({size},), got {tuple(t.shape)}")
    if not (isinstance(reg, (int, float)) and math.isfinite(reg) and reg > 0):
        raise ValueError(f"reg: expected a positive finite number, got {reg!r}")
    check_device("M, f, g", M, f, g)
    out = torch.empty(n, dtype=torch.promote_types(M.dtype, f.dtype), device=M.device)
    if n == 0:
        return out
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)
    dt = compute_dtype(M, f, g)
    inv_reg = scalars(dt, M.device, 1.0 / float(reg))
    _scores_kernel[grid](M, f, g, out, n, c, inv_reg, M.stride(0), M.stride(1),
                         f.stride(0), g.stride(0), bucket(n), bucket(c), DT=dt)
    return out
