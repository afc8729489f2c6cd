"""Hostile inputs, class by class (the README's "Bad input"): every call either returns the right
answer or raises an error that names what is wrong, on every backend, within a time limit.

Classes: (1) overflow and underflow inside the computation, (2) huge label values, (3) the memory
guard before n_c x n_c blocks, (4) Sinkhorn's convergence reporting and degenerate arguments,
(8) validation of the public functions, (9) half precision.
"""
import re
import threading
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lcmat
from lcmat import ops
from lcmat.reference import marginal_error

BACKENDS = [b for b in ("reference", "cpu", "triton") if b in ops.available_backends()]
FAST_BACKENDS = [b for b in ("reference", "cpu") if b in BACKENDS]  # triton interprets: slow on a CPU
SECONDS = 60  # a call that has not returned by then counts as a hang


def within(fn, seconds=SECONDS):
    """fn() run in a daemon thread: its result, its exception re-raised, or a failure if it
    has not returned after `seconds` (a hang)."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as err:  # noqa: BLE001 -- handed to the caller
            out["error"] = err
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"did not return within {seconds} s (a hang)")
    if "error" in out:
        raise out["error"]
    return out["value"]


def problem(n=48, d=6, classes=3, seed=0):
    g = np.random.default_rng(seed)
    H = np.abs(g.standard_normal((n, d))).astype(np.float32)
    Z = g.standard_normal((n, classes)).astype(np.float32)
    y = np.arange(n) % classes
    return H, Z, y


def select(method, backend="reference", H=None, Z=None, y=None, **options):
    selector = lcmat.get_method(method, fraction=0.25, backend=backend, progress=False, **options)
    return within(lambda: selector.select_features(embeddings=H, logits=Z, labels=y))


def valid_coreset(coreset, y, fraction=0.25):
    idx = coreset.indices
    assert len(np.unique(idx)) == len(idx) and idx.min() >= 0 and idx.max() < len(y)
    counts = np.bincount(y[idx], minlength=y.max() + 1)
    assert counts.tolist() == [round(fraction * n) for n in np.bincount(y)]


# ---------------------------------------------------------------------------------------------
# Class 1: finite inputs whose products overflow (or underflow) the compute dtype

# Methods whose criterion is invariant under scaling of the embeddings by a power of two, so the
# picks at any magnitude must equal the picks at magnitude 1.
SCALE_INVARIANT = ("kcenter", "herding")
# Methods whose definition is not scale-invariant (the bias of the last layer): the picks must
# equal those computed in float64 on the same float32 inputs.
FLOAT64_TRUTH = ("lcmat", "craig", "grand", "fdmat")


@settings(max_examples=12)
@given(exponent=st.integers(-100, 100), method=st.sampled_from(SCALE_INVARIANT),
       backend=st.sampled_from(FAST_BACKENDS))
def test_scale_invariant_selectors_give_the_same_picks_at_any_magnitude(exponent, method, backend):
    H, _, y = problem()
    want = select(method, backend, H, None, y).indices
    got = select(method, backend, (H * np.float32(2.0 ** exponent)), None, y)
    np.testing.assert_array_equal(got.indices, want)


@settings(max_examples=10)
@given(magnitude=st.sampled_from([1e-30, 1e-12, 1.0, 1e12, 1e19, 1e30, 3e37]),
       method=st.sampled_from(FLOAT64_TRUTH), backend=st.sampled_from(FAST_BACKENDS))
def test_overflowing_magnitudes_give_the_float64_picks_or_refuse(magnitude, method, backend):
    H, Z, y = problem()
    H = (H * np.float32(magnitude)).astype(np.float32)
    try:
        got = select(method, backend, H, Z, y)
    except (ValueError, FloatingPointError) as err:
        assert re.match(r"^\w+: ", str(err)), err  # names the argument or the quantity
        return
    truth = select(method, "reference", H.astype(np.float64), Z, y, dtype=torch.float64)
    valid_coreset(got, y)
    np.testing.assert_array_equal(got.indices, truth.indices)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["lcmat", "craig"])
def test_the_issue_example_returns_the_float64_picks(method, backend):
    """Embeddings around 1e19 overflow <h_i, h_j> in float32 (the compiled kernels used to
    clamp the NaN to a zero distance and return the first k)."""
    g = np.random.default_rng(0)
    H = (np.abs(g.standard_normal((40, 8))) * 1e19).astype("f4")
    Z = g.standard_normal((40, 4)).astype("f4")
    y = np.arange(40) % 4
    truth = select(method, "reference", H.astype(np.float64), Z, y, dtype=torch.float64)
    got = select(method, backend, H, Z, y)
    np.testing.assert_array_equal(got.indices, truth.indices)
    assert not np.array_equal(got.indices, np.sort(np.concatenate([np.flatnonzero(y == c)[:2] for c in range(4)])))


def test_fdmat_refuses_embeddings_that_vanish_under_its_eps():
    H, _, y = problem()
    with pytest.raises(ValueError, match="^embeddings: .*rescale"):
        select("fdmat", "reference", H * np.float32(1e-30), None, y)


def test_entropy_of_saturated_logits_is_finite():
    H, Z, y = problem()
    Z = Z * np.float32(1e30)  # every softmax saturates: p log p = 0 log 0 must count as 0
    scores = select("entropy", "reference", H, Z, y).scores
    assert np.isfinite(scores).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_every_greedy_refuses_non_finite_distances(backend, bad):
    dist = torch.rand(12, 12)
    dist = (dist + dist.T) / 2
    dist[3, 5] = bad
    with pytest.raises(ValueError, match="^dist: .*NaN or Inf"):
        within(lambda: ops.facility_location_greedy(dist, 4, backend=backend))
    with pytest.raises(ValueError, match="^dist: .*NaN or Inf"):
        within(lambda: ops.facility_location_greedy_batch([dist, dist], [2, 3], backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_greedy_refuses_gains_that_overflow(backend):
    dist = torch.rand(50, 50) * 3e37
    with pytest.raises(FloatingPointError, match="^dist: the greedy's gains"):
        within(lambda: ops.facility_location_greedy(dist, 4, backend=backend))


def test_reference_greedy_refuses_nan_directly():
    from lcmat.reference import facility_location_greedy
    dist = torch.full((6, 6), float("nan"))
    for lazy in (True, False):
        with pytest.raises(ValueError, match="^dist"):
            within(lambda: facility_location_greedy(dist, 2, lazy=lazy))


def test_a_float64_input_beyond_float32_range_is_refused_naming_it():
    H, Z, y = problem()
    with pytest.raises(ValueError, match=r"^embeddings: values up to .* do not fit torch.float32"):
        select("kcenter", "reference", H.astype(np.float64) * 1e300, Z, y)


# ---------------------------------------------------------------------------------------------
# Class 2: huge label values

@settings(max_examples=20)
@given(big=st.integers(100, 2 ** 62), method=st.sampled_from(["uniform", "lcmat", "el2n"]))
def test_huge_labels_are_refused_at_once(big, method):
    y = np.r_[np.zeros(50, np.int64), np.full(50, big, np.int64)]
    H, Z, _ = problem(n=100, classes=2)
    # without logits the classes come from the labels (remap them); with logits, from its columns
    with pytest.raises(ValueError, match=r"^labels: (.*remap the labels|value \d+ is out of range)"):
        within(lambda: lcmat.get_method(method, fraction=0.1).select_features(embeddings=H, logits=Z, labels=y),
               seconds=10)


def test_huge_num_classes_is_refused():
    H, Z, y = problem()
    with pytest.raises(ValueError, match="^labels: "):
        within(lambda: lcmat.Uniform(0.25).select_features(labels=y, num_classes=10 ** 12), seconds=10)


# ---------------------------------------------------------------------------------------------
# Class 3: the memory guard

def test_memory_guard_names_class_size_bytes_and_remedies():
    H, Z, y = problem(n=60, classes=2)
    selector = lcmat.LCMat(fraction=0.25, max_memory=1000)
    with pytest.raises(lcmat.BlockMemoryError) as err:
        within(lambda: selector.select_features(embeddings=H, logits=Z, labels=y))
    message = str(err.value)
    assert isinstance(err.value, MemoryError)
    assert "class 0" in message and "n_c = 30" in message and "GB" in message
    assert "coverage=True" in message and "device" in message and "balance" not in message


def test_rho_auto_needs_more_memory_than_a_fixed_rho():
    H, Z, y = problem(n=60, classes=2)
    n, itemsize = 30, 4
    budget = 5 * n * n * itemsize  # between the fixed-rho and the rho="auto" peaks
    lcmat.LCMat(fraction=0.25, rho=0.01, max_memory=budget).select_features(embeddings=H, logits=Z, labels=y)
    with pytest.raises(lcmat.BlockMemoryError, match="rho"):
        lcmat.LCMat(fraction=0.25, rho="auto", max_memory=budget).select_features(embeddings=H, logits=Z, labels=y)


def test_memory_guard_uses_the_free_memory_by_default(monkeypatch):
    import lcmat.validation as V
    monkeypatch.setattr(V, "available_memory", lambda device: 10_000)
    H, Z, y = problem(n=60, classes=2)
    with pytest.raises(lcmat.BlockMemoryError, match="free on cpu"):
        lcmat.CRAIG(fraction=0.25).select_features(embeddings=H, logits=Z, labels=y)


@pytest.mark.parametrize("bad", [0, -5, 1.5e-3, "lots", float("nan")])
def test_max_memory_is_validated(bad):
    with pytest.raises(ValueError, match="^max_memory"):
        lcmat.LCMat(max_memory=bad)


# ---------------------------------------------------------------------------------------------
# Class 4: Sinkhorn reports non-convergence and refuses degenerate arguments

def sinkhorn_problem(n=20, m=12, seed=0, batch=None):
    g = np.random.default_rng(seed)
    shape = () if batch is None else (batch,)
    a = g.random(shape + (n,)) + 0.1
    b = g.random(shape + (m,)) + 0.1
    a /= a.sum(-1, keepdims=True)
    b /= b.sum(-1, keepdims=True)
    return a, b, g.random(shape + (n, m))


def row_error(plan, a):
    plan, a = torch.as_tensor(plan, dtype=torch.float64), torch.as_tensor(a, dtype=torch.float64)
    return ((plan.sum(-1) - a).abs().sum(-1) / a.sum(-1)).numpy()


@settings(max_examples=15)
@given(ratio=st.floats(1e-6, 1.0), max_iter=st.integers(1, 200), backend=st.sampled_from(FAST_BACKENDS),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_sinkhorn_reports_its_true_error_or_refuses_reg(ratio, max_iter, backend, dtype):
    a, b, M = sinkhorn_problem()
    M = torch.as_tensor(M * 5.0, dtype=dtype)
    reg = ratio * 5.0
    tol = 1e-6
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            plan, log = within(lambda: lcmat.sinkhorn(a, b, M, reg, max_iter=max_iter, tol=tol, log=True,
                                                      backend=backend))
        except ValueError as err:
            assert str(err).startswith("reg: ") and reg < 10 * torch.finfo(dtype).eps * 5.0
            return
    assert torch.isfinite(plan).all()
    true = row_error(plan, a)
    # the plan is rounded to the dtype: its sums differ from the potentials' by a few eps
    np.testing.assert_allclose(float(log["err"]), true, rtol=1e-3, atol=64 * torch.finfo(dtype).eps)
    warned = any(issubclass(w.category, lcmat.ConvergenceWarning) for w in caught)
    limit = max(tol, 64 * torch.finfo(dtype).eps) * 1.01
    assert warned == (float(log["err"]) > limit)
    assert 1 <= int(log["niter"]) <= max_iter


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_member_that_misses_tol_is_named(backend):
    """Convergence reporting on every backend, triton included (the property above runs the
    reference and cpu only: the interpreter is slow)."""
    a, b, M = sinkhorn_problem(batch=3)
    M[1] *= 100  # the same reg is much smaller relative to this problem's costs: it converges slowly
    with pytest.warns(lcmat.ConvergenceWarning, match=r"problem\(s\) \[1\]"):
        _, log = within(lambda: lcmat.sinkhorn(a, b, M, 0.5, max_iter=25, log=True, backend=backend))
    assert log["err"].shape == (3,) and float(log["err"][1]) > 1e-6 >= float(log["err"][0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad,argument", [
    (dict(max_iter=0), "max_iter"), (dict(max_iter=2.5), "max_iter"), (dict(tol=0), "tol"),
    (dict(reg=1e-17), "reg"), (dict(reg=-1.0), "reg"), (dict(zero_mass=True), "a, b"),
    (dict(mismatch=True), "a, b")])
def test_sinkhorn_refuses_degenerate_arguments(backend, bad, argument):
    a, b, M = sinkhorn_problem()
    kwargs, bad = dict(reg=0.1), dict(bad)
    if bad.pop("zero_mass", False):
        a, b = np.zeros_like(a), np.zeros_like(b)
    if bad.pop("mismatch", False):
        b = b * 2
    kwargs.update(bad)
    with pytest.raises(ValueError, match=rf"^{re.escape(argument)}: "):
        within(lambda: lcmat.sinkhorn(a, b, M, backend=backend, **kwargs))


def test_sinkhorn_old_argument_order_is_refused():
    a, b, M = sinkhorn_problem()
    with pytest.raises(ValueError, match=r"^M: .*POT's order"):
        lcmat.sinkhorn(M, a, b, 0.1)


def test_sinkhorn_ragged_python_lists_are_refused_naming_the_argument():
    _, b, M = sinkhorn_problem(n=2, m=12)
    with pytest.raises(ValueError, match="^a: .*ragged"):
        lcmat.sinkhorn([[0.5, 0.5], [1.0]], b, M, 0.1)


def test_fdmat_backends_agree_on_a_huge_lam():
    """lam = 1e9 gives reg = 1e-9: below the resolution of float32 costs, so every backend
    refuses it the same way; at lam = 3e5 every backend reports the same (large) error."""
    H, _, y = problem(n=90)
    for backend in BACKENDS:
        with pytest.raises(ValueError, match=r"^lam: 1e\+09"):
            select("fdmat", backend, H, None, y, lam=1e9)
    errors = []
    for backend in BACKENDS:
        selector = lcmat.FDMat(fraction=0.25, lam=3e5, max_iter=10, backend=backend)
        with pytest.warns(lcmat.ConvergenceWarning, match="max_iter=10"):
            within(lambda: selector.select_features(embeddings=H, labels=y))
        errors.append(selector.last_ot["marginal_error"])
    np.testing.assert_allclose(errors, errors[0], rtol=0.05)
    assert errors[0] > 1e-3


# ---------------------------------------------------------------------------------------------
# Class 8: validation, the same on every backend

@pytest.mark.parametrize("indices,argument", [([0.7, 4.2], "indices"), ([0, 0, 3], "indices"),
                                              ([0, 99], "indices"), ([], "indices")])
def test_coreset_ot_distance_validates_indices(indices, argument):
    H, _, y = problem()
    with pytest.raises(ValueError, match=rf"^{argument}: "):
        lcmat.coreset_ot_distance(H, y, indices)


@pytest.mark.parametrize("weights", [[1.0, np.nan, 1.0], [1.0, 0.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0]])
def test_coreset_ot_distance_validates_weights(weights):
    H, _, y = problem()
    with pytest.raises(ValueError, match="^weights: "):
        lcmat.coreset_ot_distance(H, y, [0, 1, 2], weights=weights)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rows,cols", [([0, 5, 3, 10], [0, 2, 4, 6]), ([0, 4, 12], [0, 3, 6]),
                                       ([1, 10], [0, 6]), ([0.0, 10.0], [0, 6])])
def test_ragged_offsets_are_validated_on_every_backend(backend, rows, cols):
    a, b = torch.full((10,), 0.1, dtype=torch.float64), torch.full((6,), 1 / 6, dtype=torch.float64)
    x, yy = torch.rand(10, 3, dtype=torch.float64), torch.rand(6, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="_offsets"):
        within(lambda: ops.sinkhorn_log_ragged(a, b, torch.tensor(rows), torch.tensor(cols), 0.1, x=x, y=yy,
                                               backend=backend))


@pytest.mark.parametrize("labels,message", [(["a", "b"] * 24, "^labels: must hold numbers"),
                                            ([[0, 1], [1]], "^labels: .*ragged"),
                                            (np.full(48, 0.5), "^labels: must be integers")])
def test_bad_labels_name_the_argument(labels, message):
    with pytest.raises(ValueError, match=message):
        lcmat.Uniform(0.25).select_features(labels=labels)


# ---------------------------------------------------------------------------------------------
# Class 9: half precision

@pytest.mark.parametrize("method", sorted(lcmat.METHODS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_compute_dtype_is_refused_at_construction(method, dtype):
    with pytest.raises(ValueError, match=r"^dtype: .*float32 or torch.float64"):
        lcmat.get_method(method, dtype=dtype)


@pytest.mark.parametrize("method", ["lcmat", "craig", "kcenter", "herding", "grand", "fdmat", "el2n"])
def test_half_inputs_select_as_their_float32_values(method):
    """float16 inputs around 30 (whose squared norms overflow float16) are upcast and selected
    exactly as the same values in float32."""
    H, Z, y = problem()
    H16, Z16 = torch.tensor(H * 30).half(), torch.tensor(Z).half()
    got = select(method, "reference", H16, Z16, y)
    want = select(method, "reference", H16.float(), Z16.float(), y)
    np.testing.assert_array_equal(got.indices, want.indices)


def test_marginal_error_is_float64_whatever_the_dtype():
    a, b, M = sinkhorn_problem()
    M = torch.tensor(M, dtype=torch.float32)
    f, g = torch.zeros(20), torch.zeros(12)
    assert marginal_error(torch.tensor(a, dtype=torch.float32), f, g, M, 0.1).dtype == torch.float64
