"""Shared plumbing of the Triton kernels: interpreter detection, autotune configs, dtypes, checks.

Under TRITON_INTERPRET=1 (the CPU interpreter, used by the tests) every kernel keeps to a single
small config so that no autotuning happens and CI stays fast; on a GPU the configs below are
sized for Hopper (H100, 228 KB shared memory, 64K registers per SM) and Ampere (A100, 164 KB).
With LCMAT_TRITON_FIXED_CONFIG=1 every kernel keeps its first GPU config (no autotuning: one
compilation per specialisation, as the GPU test run needs from a cold cache).

Determinism: an autotuned kernel's tile sizes set its summation order, so its last bits depend
on the config the autotuner picked in this process. The kernels whose outputs feed greedy picks
directly (the distance blocks of `lcmat_distance`, `pairwise_l1`) are pinned to one config, so
their values, and the picks at near-ties, are the same in every process; the others (Sinkhorn,
FDMat scores, last-layer norms, linear gradient norms) are deterministic per config. The greedy
itself sums gains in fixed point and does not depend on its tiles (`facility_location`).
"""
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
FIXED_CONFIG = os.environ.get("LCMAT_TRITON_FIXED_CONFIG", "0") == "1"


def autotune_configs(gpu, interpret, warps=(4,), stages=(2,)):
    """triton.Config list: every block dict of `gpu` crossed with warps x stages on a GPU (only
    the first with LCMAT_TRITON_FIXED_CONFIG=1), or the single `interpret` block dict under the
    interpreter."""
    if INTERPRET:
        return [triton.Config(dict(interpret), num_warps=4, num_stages=1)]
    configs = [triton.Config(dict(blocks), num_warps=w, num_stages=s)
               for blocks in gpu for w in warps for s in stages]
    return configs[:1] if FIXED_CONFIG else configs


def bucket(n):
    """Autotune key for a size: its next power of two, so that nearby sizes share a tuning."""
    return triton.next_power_of_2(max(int(n), 1))


def compute_dtype(*tensors):
    """The Triton dtype the kernels accumulate in: float64 if any input is, else float32."""
    return tl.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else tl.float32


def scalars(DT, device, *values):
    """Float constants for a kernel as a tensor in its compute dtype DT, which the kernel loads.

    A Python float passed as a kernel argument is typed float32 by the Triton compiler (the
    interpreter keeps it exact), so a float64 kernel would compute with a rounded constant."""
    dtype = torch.float64 if DT == tl.float64 else torch.float32
    return torch.tensor(values, dtype=dtype, device=device)


def float_dtype(t, name):
    """Raise unless `t` is a floating tensor (float16, bfloat16, float32, float64)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")


def check_device(name, *tensors):
    """Kernels run on CUDA tensors, or on CPU tensors under the interpreter; all on one device."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise ValueError(f"{name}: all tensors must be on one device, got {sorted(map(str, devices))}")
    for device in devices:
        if device.type == "cpu" and not INTERPRET:
            raise ValueError(f"{name}: the triton backend needs CUDA tensors (or TRITON_INTERPRET=1), "
                             f"got CPU ones")


def check_dims(t, dims, name):
    if t.dim() != dims:
        raise ValueError(f"{name}: expected a {dims}-D tensor, got shape {tuple(t.shape)}")


def check_labels(labels, num_classes, n, name="labels"):
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor, got {labels.dtype}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{name}: values must lie in [0, {num_classes}), "
                         f"got [{int(labels.min())}, {int(labels.max())}]")


def check_scale(scale, n, name="scale"):
    if scale is None:
        return
    float_dtype(scale, name)
    if scale.dim() != 1 or scale.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {tuple(scale.shape)}")
