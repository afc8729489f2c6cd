"""Offsets past 2^31 elements: every Triton kernel indexes rows in int64.

A row stride of 2^30 puts row 2 at element 2^31, past the int32 range, with three rows read in
all: the inputs below are views of one large float16 allocation whose untouched pages cost no
memory (only the few rows written here are ever touched). Under the interpreter int32 arithmetic
wraps silently (numpy), so an int32 sum or product that overflows is made an error here; on a GPU
a wrapped offset would read the wrong memory, and the values are compared with the reference on
the same views either way.
"""
import numpy as np
import pytest
import torch

pytest.importorskip("triton")
from lcmat import reference as R  # noqa: E402
from lcmat import triton_kernels as T  # noqa: E402

if not T.available("triton"):
    pytest.skip("triton backend unavailable (no CUDA and TRITON_INTERPRET unset)", allow_module_level=True)

from lcmat.triton_kernels import _config  # noqa: E402
from lcmat.triton_kernels.linear_grad_norms import linear_grad_norms_with  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
STRIDE = 2 ** 30
ROWS = 3  # row 2 starts at element 2^31


@pytest.fixture(scope="module")
def big():
    """A float16 buffer of 2^31 + 2^16 elements (4 GiB of address space, a few pages used)."""
    try:
        return torch.empty(2 ** 31 + 2 ** 16, dtype=torch.float16, device=DEV)
    except (RuntimeError, MemoryError) as exc:  # strict overcommit, or a small device
        pytest.skip(f"cannot reserve 4 GiB of address space: {exc}")


@pytest.fixture(autouse=True)
def int32_overflow_raises(monkeypatch):
    """Under the interpreter, an int32 add, subtract or multiply whose exact result leaves the
    int32 range raises OverflowError (the kernels' int64 index arithmetic is unaffected)."""
    if not _config.INTERPRET:
        yield
        return
    from triton.runtime import interpreter
    binary_op = interpreter.InterpreterBuilder.binary_op

    def checked(self, lhs, rhs, op):
        out = binary_op(self, lhs, rhs, op)
        if out.data.dtype == np.int32 and op in (np.add, np.subtract, np.multiply):
            exact = op(np.asarray(lhs.data, dtype=np.int64), np.asarray(rhs.data, dtype=np.int64))
            if not np.array_equal(exact, out.data.astype(np.int64)):
                raise OverflowError(f"int32 {op.__name__} overflowed: an index needs int64")
        return out

    monkeypatch.setattr(interpreter.InterpreterBuilder, "binary_op", checked)
    yield


def test_the_overflow_check_fires():
    """The check above catches an int32 product past 2^31 (a test that can fail)."""
    import triton
    import triton.language as tl
    if not _config.INTERPRET:
        pytest.skip("the overflow check exists under the interpreter only")

    @triton.jit
    def _int32_row_offset(x_ptr, out_ptr, stride):
        row = tl.program_id(0) + 2
        tl.store(out_ptr, tl.load(x_ptr + row * stride))

    x = torch.zeros(4)
    with pytest.raises(Exception, match="overflowed"):
        _int32_row_offset[(1,)](x, x, STRIDE)


def rows_of(big, cols, offset, seed):
    """A [ROWS, cols] view with row stride 2^30 at `offset`, filled with values (float16)."""
    view = big.as_strided((ROWS, cols), (STRIDE, 1), offset)
    g = torch.Generator().manual_seed(seed)
    view.copy_(torch.randn(ROWS, cols, generator=g).to(torch.float16))
    return view


def as64(t):
    return t.double()


def test_last_layer(big):
    C, D = 5, 7
    h, z = rows_of(big, D, 0, 0), rows_of(big, C, 64, 1)
    y = torch.tensor([0, 3, 4], device=DEV)
    for got, want in zip(T.last_layer_factors(z, y), R.last_layer_factors(as64(z), y)):
        torch.testing.assert_close(got.double(), want, rtol=2e-3, atol=2e-3)
    for got, want in zip(T.last_layer_grad_norms(h, z, y), R.last_layer_grad_norms(as64(h), as64(z), y)):
        torch.testing.assert_close(got.double(), want, rtol=2e-3, atol=2e-3)
    q = R.last_layer_factors(as64(z), y)[1]
    for got, want in zip(T.curvature_moments(h, q), R.curvature_moments(as64(h), q)):
        torch.testing.assert_close(got, want)


def test_distances(big):
    C, D = 4, 6
    h = rows_of(big, D, 128, 2)
    z = torch.randn(ROWS, C, dtype=torch.float64, device=DEV)
    y = torch.tensor([1, 0, 2], device=DEV)
    e, q = R.last_layer_factors(z, y)
    coords = torch.tensor([0, 5, 11, 20], device=DEV)
    h64 = as64(h)
    torch.testing.assert_close(T.gradient_distance(h, e), R.gradient_distance(h64, e))
    torch.testing.assert_close(T.hessian_diag_coords(h, q, coords), R.hessian_diag_coords(h64, q, coords))
    torch.testing.assert_close(T.lcmat_distance(h, e, q, coords, 0.3),
                               R.lcmat_distance(h64, e, q, coords, 0.3))
    torch.testing.assert_close(T.pairwise_l1(h).double(), R.pairwise_l1(h64), rtol=1e-3, atol=1e-3)


def test_fdmat(big):
    x = rows_of(big, 9, 256, 3)
    mu = torch.randn(4, 9, dtype=torch.float16, device=DEV)
    torch.testing.assert_close(T.prototype_cost(x, mu).double(), R.prototype_cost(as64(x), as64(mu)),
                               rtol=2e-3, atol=2e-3)
    M = rows_of(big, 4, 512, 4).abs_()
    f, g = torch.zeros(ROWS, device=DEV), torch.zeros(4, device=DEV)
    torch.testing.assert_close(T.fdmat_scores(M, f, g, 0.5).double(), R.fdmat_scores(as64(M), as64(f), as64(g), 0.5),
                               rtol=2e-3, atol=2e-3)


def test_linear_grad_norms(big):
    T_, d_in, d_out = 3, 5, 4
    A = big.as_strided((ROWS, T_, d_in), (STRIDE, d_in, 1), 1024)
    A.copy_(torch.randn(ROWS, T_, d_in).to(torch.float16))
    G = torch.randn(ROWS, T_, d_out, dtype=torch.float16, device=DEV)
    want = R.linear_grad_norms(as64(A), as64(G))
    for ghost in (True, False):
        torch.testing.assert_close(linear_grad_norms_with(A, G, ghost).double(), want, rtol=2e-3, atol=2e-3)


def test_facility_location(big):
    dist = rows_of(big, ROWS, 2048, 5).abs_()
    dist.fill_diagonal_(0)
    picks, objective, _ = T.facility_location_greedy(dist, 2)
    ref = R.facility_location_greedy(as64(dist), 2)
    assert picks.tolist() == ref[0].tolist()
    torch.testing.assert_close(objective.double(), ref[1], rtol=1e-3, atol=1e-3)


def test_sinkhorn_features(big):
    x = rows_of(big, 3, 4096, 6)
    y = torch.randn(2, 3, dtype=torch.float16, device=DEV)
    a = torch.full((ROWS,), 1 / ROWS, dtype=torch.float64, device=DEV)
    b = torch.full((2,), 0.5, dtype=torch.float64, device=DEV)
    ro, co = [0, ROWS], [0, 2]
    got = T.sinkhorn_log_ragged(a, b, ro, co, 1.0, x=x, y=y, max_iter=50)
    want = R.sinkhorn_log_ragged(a, b, ro, co, 1.0, x=as64(x), y=as64(y), max_iter=50)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-6)


def test_submodular(big):
    base = rows_of(big, ROWS, 8192, 7)
    base.copy_(torch.tensor([[2.0, 0.5, 0.3], [0.5, 1.0, 0.2], [0.3, 0.2, 3.0]], dtype=torch.float16))
    for name in ("graph_cut_greedy", "log_determinant_greedy"):
        picks, objective = getattr(T, name)(base, 3)
        ref = getattr(R, name)(as64(base), 3)
        assert picks.tolist() == ref[0].tolist()
        torch.testing.assert_close(objective.double(), ref[1], rtol=1e-3, atol=1e-3)
