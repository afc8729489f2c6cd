"""Input checks shared by the selectors: each error names the argument at fault."""
import numbers

import numpy as np
import torch


def as_tensor(name, x, ndim, dtype=None, device=None):
    """A torch tensor from a tensor, numpy array or nested list, with `ndim` dimensions."""
    if x is None:
        raise ValueError(f"{name}: is required by this method")
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(x.shape)}")
    return x.to(device=device, dtype=dtype) if (dtype or device) else x


def as_features(name, x, n=None, dtype=torch.float32, device=None):
    """A finite float matrix [N, D] (N = n when given)."""
    x = as_tensor(name, x, 2, device=device)
    if not x.is_floating_point():
        x = x.to(dtype)
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name}: has {x.shape[0]} rows but labels has {n} entries")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: is empty, shape {tuple(x.shape)}")
    check_finite(name, x)
    return x.to(dtype)


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
    y = y.long()
    if y.numel() == 0:
        raise ValueError("labels: is empty")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        raise ValueError(f"labels: must be >= 0, got {lo}")
    if num_classes is None:
        num_classes = hi + 1
    elif hi >= num_classes:
        raise ValueError(f"labels: value {hi} is out of range for num_classes={num_classes}")
    counts = torch.bincount(y, minlength=num_classes)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"labels: class(es) {empty[:10]} have no samples; relabel the classes "
                         f"to 0..C-1 or pass the subset that contains them")
    return y, num_classes


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


def check_positive(name, value, integer=False, allow_zero=False):
    ok = _is_number(value, integer) and np.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        sign = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: must be {'an integer' if integer else 'a number'} {sign}, got {value!r}")
    return value


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}: must be one of {tuple(choices)}, got {value!r}")
    return value
