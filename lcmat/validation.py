"""Input checks shared by the selectors: each error names the argument at fault.

Three kinds of failure, three exception types:
    ValueError           an argument is wrong (its name leads the message);
    FloatingPointError   finite inputs made a quantity overflow or underflow inside the
                         computation (the message names the quantity and what to do);
    BlockMemoryError     a quadratic block would not fit in memory (a MemoryError).
"""
import numbers
import os

import numpy as np
import torch


def as_tensor(name, x, ndim, dtype=None, device=None):
    """A torch tensor from a tensor, numpy array or nested list, with `ndim` dimensions."""
    if x is None:
        raise ValueError(f"{name}: is required by this method")
    if not isinstance(x, torch.Tensor):
        try:
            x = np.asarray(x)
        except ValueError:  # a ragged nested list
            raise ValueError(f"{name}: must be a rectangular array, got a ragged nested sequence") from None
        if x.dtype.kind not in "biuf":
            raise ValueError(f"{name}: must hold numbers, got an array of dtype {x.dtype}")
        if x.dtype.kind == "u" and x.dtype.itemsize == 8:
            if x.size and x.max() >= 2 ** 63:
                raise ValueError(f"{name}: values must be below 2**63")
            x = x.astype(np.int64)
        x = torch.from_numpy(np.ascontiguousarray(x))
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(x.shape)}")
    return x.to(device=device, dtype=dtype) if (dtype or device) else x


COMPUTE_DTYPES = (torch.float32, torch.float64)


def as_float64_array(x):
    """x (a tensor on any device, or anything numpy takes) as a float64 numpy array."""
    return x.detach().double().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)


def check_compute_dtype(dtype):
    """The dtype selectors compute in: float32 or float64. Half precision is refused: a squared
    norm of embeddings around 30 already overflows float16, and bfloat16 keeps 3 significant
    digits. Half-precision *inputs* are fine: they are upcast to this dtype."""
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype: the selectors compute in torch.float32 or torch.float64, got {dtype!r}; "
                         f"half-precision inputs are accepted as they are (upcast to float32), so leave "
                         f"dtype at its default")
    return dtype


def as_features(name, x, n=None, dtype=torch.float32, device=None):
    """A finite float matrix [N, D] (N = n when given), in `dtype`. Finiteness is checked after
    the cast, so a float64 input beyond float32's range is refused rather than made infinite."""
    x = as_tensor(name, x, 2, device=device)
    if x.dtype in (torch.complex64, torch.complex128) or not (x.is_floating_point() or x.dtype in _INTEGER):
        raise ValueError(f"{name}: must hold real numbers, got {x.dtype}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name}: has {x.shape[0]} rows but labels has {n} entries")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: is empty, shape {tuple(x.shape)}")
    check_finite(name, x)
    cast = x.to(dtype)
    if cast.dtype != x.dtype and not bool(torch.isfinite(cast).all()):
        raise ValueError(f"{name}: values up to {float(x.abs().max()):.3g} do not fit {dtype}; rescale "
                         f"them or pass dtype=torch.float64")
    return cast


_INTEGER = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_finite_result(quantity, x, hint):
    """Raise FloatingPointError when a computed tensor holds NaN or Inf although its inputs were
    finite: an overflow or underflow inside the computation. `hint` says what to do."""
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"{quantity}: is not finite (overflow or underflow inside the computation); "
                                 f"{hint}")
    return x


def power_of_two_scale(x):
    """2^e with 2^e <= max|x| < 2^(e+1) (1 for an all-zero x): dividing by it is exact, so a
    computation that is covariant under scaling of x gives bit-identical results on x / scale,
    with no overflow or underflow of squares."""
    top = float(x.abs().max()) if x.numel() else 0.0
    if top == 0.0 or not np.isfinite(top):
        return 1.0
    return float(2.0 ** np.floor(np.log2(top)))


class BlockMemoryError(MemoryError):
    """A quadratic (n_c x n_c) block would need more memory than is available or allowed."""


def available_memory(device):
    """Bytes free for new tensors on `device`: CUDA's free memory, else MemAvailable of the host
    (None when unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n):
    return f"{n / 1e9:.3g} GB"


def check_block_memory(method, cls, n, bytes_needed, device, max_memory=None):
    """BlockMemoryError when a class's blocks need more than max_memory (when set) or than the
    device has free, before anything of that size is allocated."""
    limit = max_memory if max_memory is not None else available_memory(device)
    if limit is None or bytes_needed <= limit:
        return
    source = f"max_memory={max_memory}" if max_memory is not None else f"the {_gb(limit)} free on {device}"
    raise BlockMemoryError(
        f"{method}: class {cls} (n_c = {n}) needs about {_gb(bytes_needed)} for its n_c x n_c blocks, more "
        f"than {source}. What helps: split the class into strata (coverage=True, num_strata=...), compute in "
        f"float32 rather than float64, a fixed rho instead of 'auto' (one block instead of several), another "
        f"device with more memory, or a larger max_memory if the memory is there")


def check_finite(name, x, rows_per_chunk=65536):
    """Raise naming `name` and the first bad row if x has NaN or Inf; checks a chunk of rows at
    a time, so a multi-GB input needs no input-sized temporary."""
    for start in range(0, x.shape[0], rows_per_chunk):
        chunk = x[start:start + rows_per_chunk]
        # NaN and Inf propagate through a sum, so a finite sum proves every entry finite, at the
        # cost of one read, far cheaper than isfinite; only a non-finite sum (a bad entry, or an
        # overflow of large finite ones) takes the entry-by-entry check.
        if bool(torch.isfinite(chunk.sum())):
            continue
        bad = ~torch.isfinite(chunk)
        if bad.any():
            row = start + int(bad.reshape(bad.shape[0], -1).any(1).nonzero()[0])
            raise ValueError(f"{name}: contains NaN or Inf (first in row {row})")


def as_labels(labels, num_classes=None, device=None):
    """Integer labels [N] in [0, num_classes) with every class present; returns (labels, C)."""
    y = as_tensor("labels", labels, 1, device=device)
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise ValueError("labels: must be integers, got non-integral floats")
    elif y.dtype == torch.bool:
        raise ValueError("labels: must be integers, got booleans")
    elif y.dtype not in _INTEGER:
        raise ValueError(f"labels: must be integers, got {y.dtype}")
    if y.numel() == 0:
        raise ValueError("labels: is empty")
    if y.is_floating_point() and float(y.abs().max()) >= 2.0 ** 62:
        raise ValueError("labels: values must be below 2**62")
    y = y.long()
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        raise ValueError(f"labels: must be >= 0, got {lo}")
    if num_classes is not None:
        num_classes = check_positive("num_classes", num_classes, integer=True)
        if hi >= num_classes:
            raise ValueError(f"labels: value {hi} is out of range for num_classes={num_classes}")
    # Every class must have a sample, so more classes than samples is an error; checked before the
    # per-class count array (of max(label) + 1 entries) is allocated.
    classes = hi + 1 if num_classes is None else num_classes
    if classes > len(y):
        raise ValueError(f"labels: the largest label {hi} implies {classes} classes for {len(y)} samples, so "
                         f"some classes have no samples; remap the labels to 0..C-1 first, e.g. "
                         f"np.unique(labels, return_inverse=True)[1]")
    num_classes = classes
    check_every_class_present(torch.bincount(y, minlength=num_classes).cpu().numpy())
    return y, num_classes


def check_every_class_present(counts):
    """counts [C], the samples per class: ValueError naming the labels when a class has none."""
    empty = np.flatnonzero(np.asarray(counts) == 0).tolist()
    if empty:
        raise ValueError(f"labels: class(es) {empty[:10]} have no samples; relabel the classes "
                         f"to 0..C-1 or pass the subset that contains them")


def _is_number(value, integer=False):
    """A real number (Python or NumPy scalar), not a bool; an integral type when `integer`."""
    kind = numbers.Integral if integer else numbers.Real
    return isinstance(value, kind) and not isinstance(value, (bool, np.bool_))


def check_fraction(fraction):
    if not _is_number(fraction) or not 0 < fraction <= 1:
        raise ValueError(f"fraction: must be a number in (0, 1], got {fraction!r}")
    return float(fraction)


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: must be True or False, got {value!r}")
    return bool(value)


def check_positive(name, value, integer=False, allow_zero=False, minimum=None):
    """A finite number > 0 (>= 0 with allow_zero, >= minimum when given), an integer when `integer`;
    else ValueError naming `name`."""
    ok = _is_number(value, integer) and np.isfinite(value)
    low_ok = ok and (value >= minimum if minimum is not None else value > 0 or (allow_zero and value == 0))
    if not low_ok:
        sign = f">= {minimum}" if minimum is not None else ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: must be {'an integer' if integer else 'a number'} {sign}, got {value!r}")
    return value


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}: must be one of {tuple(choices)}, got {value!r}")
    return value
