"""Per-sample squared gradient norms of nn.Linear layers on sequences (twin of
`lcmat.reference.linear_grad_norms`).

For sample i with input A [T, d_in] and output gradient G [T, d_out], ||A^T G||_F^2 is computed
one of two ways, whichever needs fewer FLOPs (nothing per-sample is ever stored):
  - ghost norm: <A A^T, G G^T>_F = sum_{t,s} (A A^T)_ts (G G^T)_ts, 2 T^2 (d_in + d_out) FLOPs
    (halved by symmetry): a program owns a tile of positions t and sweeps the tiles s >= t,
    forming both T x T Gram tiles with tl.dot;
  - materialised: a program owns a tile of input features and sweeps the output features,
    forming W = A^T G tile by tile (tl.dot over T) and summing W^2, 2 T d_in d_out FLOPs.
Ghost when T (d_in + d_out) <= d_in d_out, i.e. for short sequences and wide layers.
Each program writes one partial sum; partials are added in a fixed order (deterministic).
"""
import torch
import triton
import triton.language as tl

from lcmat.reference.linear_grad_norms import as_sequences, collect_linear_grad_norms

from ._config import autotune_configs, bucket, check_device, compute_dtype, float_dtype


@triton.jit
def _gram_tile(x_ptr, t_rows, s_rows, t_ok, s_ok, K, stride_t, stride_k, DT: tl.constexpr,
               BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):
    """(X X^T)[t_rows, s_rows] over the K features of one sample."""
    acc = tl.zeros([BLOCK_T, BLOCK_T], DT)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        xt = tl.load(x_ptr + t_rows[:, None] * stride_t + ks[None, :] * stride_k,
                     mask=t_ok[:, None] & k_ok[None, :], other=0.0).to(DT)
        xs = tl.load(x_ptr + s_rows[:, None] * stride_t + ks[None, :] * stride_k,
                     mask=s_ok[:, None] & k_ok[None, :], other=0.0).to(DT)
        acc = tl.dot(xt, tl.trans(xs), acc, input_precision="ieee")
    return acc


@triton.autotune(
    configs=autotune_configs(
        gpu=[{"BLOCK_T": 64, "BLOCK_K": 32}, {"BLOCK_T": 64, "BLOCK_K": 64},
             {"BLOCK_T": 128, "BLOCK_K": 32}],
        interpret={"BLOCK_T": 16, "BLOCK_K": 16}, warps=(4, 8), stages=(2, 3)),
    key=["T_KEY", "DI_KEY", "DO_KEY"])
@triton.jit
def _ghost_kernel(a_ptr, g_ptr, partial_ptr, T, d_in, d_out, stride_an, stride_at, stride_ad,
                  stride_gn, stride_gt, stride_gd, stride_pn, T_KEY, DI_KEY, DO_KEY,
                  DT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)  # i * stride exceeds 2^31 past 2^31 elements
    tb = tl.program_id(1)
    a_ptr += i * stride_an
    g_ptr += i * stride_gn
    t_rows = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t_rows < T
    acc = tl.zeros([BLOCK_T, BLOCK_T], DT)
    for s0 in range(tb * BLOCK_T, T, BLOCK_T):
        s_rows = s0 + tl.arange(0, BLOCK_T)
        s_ok = s_rows < T
        aa = _gram_tile(a_ptr, t_rows, s_rows, t_ok, s_ok, d_in, stride_at, stride_ad, DT,
                        BLOCK_T, BLOCK_K)
        gg = _gram_tile(g_ptr, t_rows, s_rows, t_ok, s_ok, d_out, stride_gt, stride_gd, DT,
                        BLOCK_T, BLOCK_K)
        # Off-diagonal tiles stand for themselves and their transposes.
        weight = tl.where(s0 == tb * BLOCK_T, 1.0, 2.0)
        acc += weight * aa * gg
    tl.store(partial_ptr + i * stride_pn + tb, tl.sum(tl.sum(acc, axis=1), axis=0))


@triton.autotune(
    configs=autotune_configs(
        gpu=[{"BLOCK_I": 64, "BLOCK_O": 64, "BLOCK_T": 32}, {"BLOCK_I": 128, "BLOCK_O": 64, "BLOCK_T": 32},
             {"BLOCK_I": 64, "BLOCK_O": 128, "BLOCK_T": 32}],
        interpret={"BLOCK_I": 16, "BLOCK_O": 16, "BLOCK_T": 16}, warps=(4, 8), stages=(2, 3)),
    key=["T_KEY", "DI_KEY", "DO_KEY"])
@triton.jit
def _materialised_kernel(a_ptr, g_ptr, partial_ptr, T, d_in, d_out, stride_an, stride_at,
                         stride_ad, stride_gn, stride_gt, stride_gd, stride_pn, T_KEY, DI_KEY,
                         DO_KEY, DT: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr,
                         BLOCK_T: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)  # i * stride exceeds 2^31 past 2^31 elements
    ib = tl.program_id(1)
    a_ptr += i * stride_an
    g_ptr += i * stride_gn
    ins = ib * BLOCK_I + tl.arange(0, BLOCK_I)
    in_ok = ins < d_in
    acc = tl.zeros([BLOCK_I, BLOCK_O], DT)
    for o0 in range(0, d_out, BLOCK_O):
        outs = o0 + tl.arange(0, BLOCK_O)
        out_ok = outs < d_out
        w = tl.zeros([BLOCK_I, BLOCK_O], DT)
        for t0 in range(0, T, BLOCK_T):
            ts = t0 + tl.arange(0, BLOCK_T)
            t_ok = ts < T
            a_t = tl.load(a_ptr + ts[None, :] * stride_at + ins[:, None] * stride_ad,
                          mask=in_ok[:, None] & t_ok[None, :], other=0.0).to(DT)  # [I, T]
            g = tl.load(g_ptr + ts[:, None] * stride_gt + outs[None, :] * stride_gd,
                        mask=t_ok[:, None] & out_ok[None, :], other=0.0).to(DT)   # [T, O]
            w = tl.dot(a_t, g, w, input_precision="ieee")
        acc += w * w
    tl.store(partial_ptr + i * stride_pn + ib, tl.sum(tl.sum(acc, axis=1), axis=0))


def use_ghost(T, d_in, d_out):
    """The ghost norm costs T^2 (d_in + d_out), materialising T d_in d_out: take the cheaper."""
    return T * (d_in + d_out) <= d_in * d_out


def _launch(kernel, A, G, tiled, block_name):
    n, T, d_in = A.shape
    d_out = G.shape[2]
    max_tiles = triton.cdiv(tiled, 16)  # no config uses a tile under 16
    acc = torch.float64 if compute_dtype(A, G) == tl.float64 else torch.float32
    partial = torch.zeros((n, max_tiles), dtype=acc, device=A.device)
    grid = lambda meta: (n, triton.cdiv(tiled, meta[block_name]))
    kernel[grid](A, G, partial, T, d_in, d_out, A.stride(0), A.stride(1), A.stride(2),
                 G.stride(0), G.stride(1), G.stride(2), partial.stride(0), bucket(T),
                 bucket(d_in), bucket(d_out), DT=compute_dtype(A, G))
    # Autotuning may have written other slots; the best config's slots were all rewritten last.
    tiles = triton.cdiv(tiled, kernel.best_config.kwargs[block_name])
    return partial[:, :tiles].sum(dim=1)


def linear_grad_norms(activations, grad_outputs):
    """||A_i^T G_i||_F^2 per sample, [N], from A [N, T, d_in] and G [N, T, d_out] (a 2-D [N, d]
    pair is read as T = 1). Squared norms, so that layers add up. The kernel is chosen by shapes
    (`use_ghost`)."""
    return linear_grad_norms_with(activations, grad_outputs, None)


def linear_grad_norms_with(activations, grad_outputs, ghost):
    """`linear_grad_norms` with the kernel forced: ghost norm (True), materialised (False) or
    chosen by shapes (None)."""
    float_dtype(activations, "activations")
    float_dtype(grad_outputs, "grad_outputs")
    A, G = as_sequences(activations, grad_outputs)
    check_device("activations, grad_outputs", A, G)
    n, T, d_in = A.shape
    d_out = G.shape[2]
    dtype = torch.promote_types(A.dtype, G.dtype)
    if n == 0 or T == 0 or d_in == 0 or d_out == 0:
        return torch.zeros(n, dtype=dtype, device=A.device)
    if ghost is None:
        ghost = use_ghost(T, d_in, d_out)
    if ghost:
        out = _launch(_ghost_kernel, A, G, T, "BLOCK_T")
    else:
        out = _launch(_materialised_kernel, A, G, d_in, "BLOCK_I")
    return out.to(dtype)


def per_sample_grad_norms(model, inputs, targets, loss_fn):
    """||grad_theta loss_i||_2 per sample, [N], over the weights and biases of every nn.Linear of
    `model` (see the reference for the contract), the weight parts by the kernels above."""
    return collect_linear_grad_norms(model, inputs, targets, loss_fn, linear_grad_norms)
