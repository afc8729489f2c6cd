"""Triton batched log-domain Sinkhorn against lcmat.reference: same stopping rule, same returns."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

pytest.importorskip("triton")
from lcmat import reference as R  # noqa: E402
from lcmat import triton_kernels as T  # noqa: E402
from lcmat.triton_kernels.sinkhorn import sinkhorn_log_ragged_eps_scaling  # noqa: E402

if not T.available("triton"):
    pytest.skip("triton backend unavailable (no CUDA and TRITON_INTERPRET unset)", allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log(0) of zero masses
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _ragged(ns, ms, dim, dtype, seed, balanced=True):
    g = torch.Generator().manual_seed(seed)
    ro = torch.tensor([0] + list(ns)).cumsum(0)
    co = torch.tensor([0] + list(ms)).cumsum(0)
    a = torch.rand(sum(ns), generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(sum(ms), generator=g, dtype=torch.float64) + 0.1
    for p in range(len(ns)):
        if balanced and ns[p] and ms[p]:  # equal total masses per problem
            b[co[p]:co[p + 1]] *= a[ro[p]:ro[p + 1]].sum() / b[co[p]:co[p + 1]].sum()
    x = torch.randn(sum(ns), dim, generator=g, dtype=torch.float64)
    y = torch.randn(sum(ms), dim, generator=g, dtype=torch.float64)
    cost = torch.cat([R.squared_euclidean_cost(x[ro[p]:ro[p + 1]], y[co[p]:co[p + 1]]).reshape(-1)
                      for p in range(len(ns))])
    return [t.to(dtype).to(DEV) for t in (a, b, x, y, cost)] + [ro.to(DEV), co.to(DEV)]


def _assert_same(ours, ref, dtype, exact_iters=True):
    f, g, n_iter, err = ours
    rf, rg, rn, re = ref
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-4)
    assert f.dtype == rf.dtype and g.dtype == rg.dtype and n_iter.dtype == torch.long
    torch.testing.assert_close(f, rf, equal_nan=True, **tol)
    torch.testing.assert_close(g, rg, equal_nan=True, **tol)
    if exact_iters:
        assert n_iter.tolist() == rn.tolist()
    torch.testing.assert_close(err, re, rtol=1e-6 if dtype == torch.float64 else 1e-2,
                               atol=1e-12 if dtype == torch.float64 else 1e-5)


@settings(max_examples=6)
@given(n=st.integers(1, 30), m=st.integers(1, 20), reg=st.sampled_from([0.05, 0.5, 2.0]),
       check_every=st.integers(1, 4), seed=st.integers(0, 99))
def test_dense_matches_reference_float64(n, m, reg, check_every, seed):
    a, b, _, _, cost, _, _ = _ragged([n], [m], 3, torch.float64, seed)
    M = cost.view(n, m) / cost.max().clamp_min(1e-12)
    args = (a, b, M, reg, 25, 1e-7, check_every)
    _assert_same(T.sinkhorn_log(*args), R.sinkhorn_log(*args), torch.float64)


def test_dense_float32_fixed_iterations():
    a, b, _, _, cost, _, _ = _ragged([27], [13], 5, torch.float32, 3)
    M = cost.view(27, 13) / cost.max()
    args = (a, b, M, 0.1, 15, 0.0, 1)  # tol 0: every problem runs max_iter
    ours, ref = T.sinkhorn_log(*args), R.sinkhorn_log(*args)
    _assert_same(ours, ref, torch.float32)
    assert int(ours[2]) == 15


def test_dense_batch_with_zero_masses():
    a, b, _, _, cost, _, _ = _ragged([17] * 3, [9] * 3, 4, torch.float64, 7)
    a, b, M = a.view(3, 17).clone(), b.view(3, 9).clone(), cost.view(3, 17, 9)
    a[1, 3] = 0.0  # a zero-mass row: potential -inf, zero plan row
    b[2, 0] = 0.0
    args = (a, b, M / M.max(), 0.2, 30, 1e-6, 2)
    ours, ref = T.sinkhorn_log(*args), R.sinkhorn_log(*args)
    _assert_same(ours, ref, torch.float64)
    assert ours[0][1, 3] == -torch.inf and ours[1][2, 0] == -torch.inf


@settings(max_examples=5)
@given(sizes=st.lists(st.tuples(st.integers(0, 19), st.integers(0, 9)), min_size=1, max_size=5),
       features=st.booleans(), seed=st.integers(0, 99))
def test_ragged_matches_reference_float64(sizes, features, seed):
    ns, ms = zip(*sizes)
    a, b, x, y, cost, ro, co = _ragged(ns, ms, 5, torch.float64, seed)
    kw = dict(x=x, y=y) if features else dict(cost=cost)
    args = (a, b, ro, co, 3.0)
    opts = dict(max_iter=20, tol=1e-6, check_every=3)
    _assert_same(T.sinkhorn_log_ragged(*args, **kw, **opts), R.sinkhorn_log_ragged(*args, **kw, **opts),
                 torch.float64)


def test_ragged_empty_and_one_element_problems():
    ns, ms = [0, 5, 1, 0, 1, 18, 4], [3, 0, 1, 0, 6, 17, 1]
    a, b, x, y, cost, ro, co = _ragged(ns, ms, 7, torch.float64, 11)
    for kw in (dict(cost=cost), dict(x=x, y=y)):
        ours = T.sinkhorn_log_ragged(a, b, ro, co, 2.0, **kw, max_iter=25, tol=1e-8)
        ref = R.sinkhorn_log_ragged(a, b, ro, co, 2.0, **kw, max_iter=25, tol=1e-8)
        _assert_same(ours, ref, torch.float64)
        assert ours[2].tolist()[:2] == [0, 0] and ours[3][0] == 0  # empty problems untouched


def test_ragged_float32_features_and_cost_agree():
    ns, ms = [13, 1, 21], [5, 7, 11]
    a, b, x, y, cost, ro, co = _ragged(ns, ms, 19, torch.float32, 5)
    opts = dict(max_iter=12, tol=0.0)
    ref = R.sinkhorn_log_ragged(a, b, ro, co, 4.0, cost=cost, **opts)
    _assert_same(T.sinkhorn_log_ragged(a, b, ro, co, 4.0, cost=cost, **opts), ref, torch.float32)
    _assert_same(T.sinkhorn_log_ragged(a, b, ro, co, 4.0, x=x, y=y, **opts), ref, torch.float32)


def test_unbalanced_masses_hit_max_iter():
    # Unequal total masses never converge: err is the one at the max_iter check.
    a, b, _, _, cost, ro, co = _ragged([9, 6], [4, 5], 3, torch.float64, 2, balanced=False)
    opts = dict(max_iter=7, tol=1e-9, check_every=5)
    ours = T.sinkhorn_log_ragged(a, b, ro, co, 1.0, cost=cost, **opts)
    _assert_same(ours, R.sinkhorn_log_ragged(a, b, ro, co, 1.0, cost=cost, **opts), torch.float64)
    assert ours[2].tolist() == [7, 7] and bool((ours[3] > 1e-9).all())


def test_max_iter_zero():
    a, b, _, _, cost, ro, co = _ragged([4], [3], 2, torch.float64, 0)
    ours = T.sinkhorn_log_ragged(a, b, ro, co, 1.0, cost=cost, max_iter=0)
    ref = R.sinkhorn_log_ragged(a, b, ro, co, 1.0, cost=cost, max_iter=0)
    assert ours[2].tolist() == ref[2].tolist() == [0]
    assert torch.equal(ours[3], ref[3]) and torch.equal(ours[0], ref[0])


def test_eps_scaling_reaches_the_same_plan():
    ns, ms = [15, 8], [6, 9]
    a, b, x, y, cost, ro, co = _ragged(ns, ms, 4, torch.float64, 9)
    cost = cost / cost.max()
    reg = 0.05
    f, g, n_iter, err = sinkhorn_log_ragged_eps_scaling(a, b, ro, co, reg, cost=cost, max_iter=400,
                                                         tol=1e-9, stage_iter=5)
    rf, rg, rn, re = R.sinkhorn_log_ragged(a, b, ro, co, reg, cost=cost, max_iter=400, tol=1e-9)
    assert bool((err <= 1e-9).all()) and bool((re <= 1e-9).all())
    for p in range(2):  # potentials are unique up to a constant: compare the plans
        r0, r1, c0, c1 = int(ro[p]), int(ro[p + 1]), int(co[p]), int(co[p + 1])
        M = cost[int((torch.tensor(ns[:p]) * torch.tensor(ms[:p])).sum()):][:(r1 - r0) * (c1 - c0)]
        M = M.view(r1 - r0, c1 - c0)
        torch.testing.assert_close(R.sinkhorn_plan(f[r0:r1], g[c0:c1], M, reg),
                                   R.sinkhorn_plan(rf[r0:r1], rg[c0:c1], M, reg), rtol=1e-6, atol=1e-8)


def test_bad_arguments_raise():
    a, b, x, y, cost, ro, co = _ragged([4, 2], [3, 2], 2, torch.float64, 0)
    with pytest.raises(ValueError, match="cost, x, y"):
        T.sinkhorn_log_ragged(a, b, ro, co, 1.0, cost=cost, x=x, y=y)
    with pytest.raises(ValueError, match="row_offsets"):
        T.sinkhorn_log_ragged(a, b, ro.flip(0), co, 1.0, cost=cost)
    with pytest.raises(ValueError, match="cost"):
        T.sinkhorn_log_ragged(a, b, ro, co, 1.0, cost=cost[:-1])
    with pytest.raises(ValueError, match="reg"):
        T.sinkhorn_log(a[:4], b[:3], cost[:12].view(4, 3), 0.0)
    with pytest.raises(ValueError, match="a"):
        T.sinkhorn_log(a[:3], b[:3], cost[:12].view(4, 3), 1.0)


@pytest.mark.gpu
def test_gpu_imagenet_like_batch():
    ns, ms = [1281 - (p % 7) * 13 for p in range(50)], [128] * 50
    a, b, x, y, cost, ro, co = _ragged(ns, ms, 64, torch.float32, 0)
    a = torch.ones_like(a)
    b = torch.cat([torch.full((m,), n / m, device=DEV) for n, m in zip(ns, ms)])
    opts = dict(max_iter=50, tol=0.0)
    ref = R.sinkhorn_log_ragged(a, b, ro, co, 5.0, cost=cost, **opts)
    _assert_same(T.sinkhorn_log_ragged(a, b, ro, co, 5.0, cost=cost, **opts), ref, torch.float32)
    _assert_same(T.sinkhorn_log_ragged(a, b, ro, co, 5.0, x=x, y=y, **opts), ref, torch.float32)
    a64, b64, c64 = a.double(), b.double(), cost.double()
    opts = dict(max_iter=300, tol=1e-6, check_every=5)
    _assert_same(T.sinkhorn_log_ragged(a64, b64, ro, co, 5.0, cost=c64, **opts),
                 R.sinkhorn_log_ragged(a64, b64, ro, co, 5.0, cost=c64, **opts), torch.float64)


@pytest.mark.parametrize("features,dtype", [(False, torch.float64), (True, torch.float32)])
def test_split_column_pass_matches_reference(features, dtype):
    """Problems of more than ROW_CHUNK rows take the split column pass (row chunks, then the
    merge): a problem of several chunks and a ragged last one, one of a single column, one just
    past a chunk, small and empty ones beside them, and zero masses."""
    from lcmat.triton_kernels.sinkhorn import ROW_CHUNK, _Batch
    ns, ms = [2 * ROW_CHUNK + 5, 7, ROW_CHUNK + 1, 0, 2], [10, 3, 1, 4, 0]
    a, b, x, y, cost, ro, co = _ragged(ns, ms, 3, dtype, 11)
    a[5] = 0.0  # a zero-mass row in the first problem's first chunk
    b[0] = 0.0  # and a zero-mass column
    kw = dict(x=x, y=y) if features else dict(cost=cost)
    assert _Batch(a, b, ro, co, kw.get("cost"), kw.get("x"), kw.get("y")).col_parts is not None
    args = (a, b, ro, co, 0.5)
    ours = T.sinkhorn_log_ragged(*args, max_iter=20, tol=1e-7, **kw)
    ref = R.sinkhorn_log_ragged(*args, max_iter=20, tol=1e-7, **kw)
    _assert_same(ours, ref, dtype, exact_iters=dtype == torch.float64)
    assert ours[1][0] == -torch.inf
