"""The compiled and JIT backends a kernel test runs on, for the `backend` fixture (tests/conftest.py).

"cpu" and "cuda" are the compiled extension lcmat._C (lcmat.csrc) on CPU and CUDA tensors;
"triton" is lcmat.triton_kernels, on CUDA tensors where a GPU is present, else under Triton's
interpreter on CPU tensors (TRITON_INTERPRET=1, set by conftest). A test takes `backend` (the
name) and `device` (where its tensors go) and calls `kernels(backend)`; a test written for some
backends only says so with `@only("cpu", ...)`. Every "cuda" case carries the `gpu` marker.
"""
import contextlib

import pytest
import torch

BACKENDS = ("cpu", "triton", "cuda")


def param(name):
    """A backend as a parameter: the cuda one marked gpu (skipped by conftest without CUDA)."""
    return pytest.param(name, marks=pytest.mark.gpu, id=name) if name == "cuda" else pytest.param(name, id=name)


def only(*names):
    """Run the test on these backends only (the same fixture, fewer parameters); "reference"
    (lcmat.reference through lcmat.ops, on the CPU) may be named beside them."""
    unknown = set(names) - set(BACKENDS) - {"reference"}
    assert not unknown, unknown
    return pytest.mark.parametrize("backend", [param(n) for n in names], indirect=True)


def unavailable(name):
    """Why `name` cannot run here, or None."""
    if name == "reference":
        return None
    if name in ("cpu", "cuda"):
        try:
            import lcmat.csrc as csrc
        except ImportError as exc:  # pragma: no cover - lcmat itself is importable in the tests
            return f"lcmat.csrc does not import: {exc}"
        if not csrc.available("cpu"):
            return "the compiled extension lcmat._C is not built"
        if name == "cuda" and not csrc.available("cuda"):
            return "lcmat._C was built without CUDA or sees no CUDA device"
        return None
    try:
        import triton  # noqa: F401
        from lcmat import triton_kernels
    except ImportError:
        return "triton is not installed"
    if not triton_kernels.available("triton"):
        return "triton backend unavailable (no CUDA and TRITON_INTERPRET unset)"
    return None


def device_of(name):
    if name == "cuda" or (name == "triton" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def kernels(name):
    """The module whose functions are the backend's kernels (same names as lcmat.reference)."""
    if name == "triton":
        from lcmat import triton_kernels
        return triton_kernels
    if name == "reference":
        import lcmat.reference
        return lcmat.reference
    import lcmat.csrc as csrc
    return csrc


# ---- inputs and tolerances shared by the family tests ----------------------------------------

def noncontig(t):
    """The same values in a non-contiguous layout (a strided view of a larger buffer)."""
    wide = torch.stack([t, torch.full_like(t, float("nan"))], dim=-1)
    out = wide[..., 0]
    assert t.numel() <= 1 or not out.is_contiguous()
    return out


def maybe(t, flag):
    return noncontig(t) if flag else t


def tol(dtype):
    """The compiled kernels' tolerance against the float64 reference."""
    return {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}


def last_layer_inputs(n, C, D, dtype, seed):
    """Embeddings H >= 0, logits Z, labels y and scales s in [0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(n, D, generator=g, dtype=torch.float64).abs()
    Z = 3 * torch.randn(n, C, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (n,), generator=g)
    s = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    return H.to(dtype), Z.to(dtype), y, s.to(dtype)


@contextlib.contextmanager
def num_threads(count):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def triton_problem(n, c, d, dtype, seed, device):
    """Last-layer inputs (logits z, labels y, embeddings h, positive scales s) drawn in float64 and
    cast, for the Triton tests of last_layer and lcmat_distance."""
    g = torch.Generator().manual_seed(seed)
    z = (3 * torch.randn(n, c, generator=g, dtype=torch.float64)).to(dtype)
    y = torch.randint(0, c, (n,), generator=g)
    h = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    s = (0.5 + torch.rand(n, generator=g, dtype=torch.float64)).to(dtype)
    return z.to(device), y.to(device), h.to(device), s.to(device)
