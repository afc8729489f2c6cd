"""The public OT API (docs/design.md, "Log-domain Sinkhorn"): lcmat.sinkhorn against POT's plan, its errors, and the
per-class coreset diagnostic lcmat.coreset_ot_distance against POT class by class."""
import re

import numpy as np
import ot
import pytest
import torch

import brute_selectors as B
import lcmat


def masses(rng, n):
    w = rng.random(n) + 0.1
    return w / w.sum()


def pot_plan(a, b, M, reg):
    return ot.bregman.sinkhorn_log(a, b, M, reg, numItermax=20000, stopThr=1e-14, warn=False)


def raises_naming(argument):
    return pytest.raises(ValueError, match=rf"^{re.escape(argument)}\b")


# ---------------------------------------------------------------------------------------------
# lcmat.sinkhorn

@pytest.mark.parametrize("n,m,reg", [(7, 5, 0.1), (1, 4, 0.5), (13, 1, 0.05), (9, 9, 0.01)])
def test_dense_plan_matches_pot(n, m, reg):
    rng = np.random.default_rng(n * 10 + m)
    a, b, M = masses(rng, n), masses(rng, m), rng.random((n, m))
    P = lcmat.sinkhorn(a, b, M, reg, max_iter=20000, tol=1e-13)
    assert isinstance(P, torch.Tensor) and P.shape == (n, m)
    np.testing.assert_allclose(P.numpy(), pot_plan(a, b, M, reg), atol=1e-10)
    np.testing.assert_allclose(P.sum(1).numpy(), a, atol=1e-10)
    np.testing.assert_allclose(P.sum(0).numpy(), b, atol=1e-10)


def test_dense_plan_unnormalised_masses_and_torch_inputs():
    """Masses need not sum to 1 (only to the same total): the plan scales with them."""
    rng = np.random.default_rng(1)
    a, b, M = masses(rng, 6), masses(rng, 4), rng.random((6, 4))
    P = lcmat.sinkhorn(torch.tensor(5 * a), torch.tensor(5 * b), torch.tensor(M), 0.2, tol=1e-12)
    np.testing.assert_allclose(P.numpy(), 5 * pot_plan(a, b, M, 0.2), atol=1e-9)


def test_dense_plan_float32():
    rng = np.random.default_rng(2)
    a, b, M = masses(rng, 11), masses(rng, 3), rng.random((11, 3))
    P = lcmat.sinkhorn(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32),
                       torch.tensor(M, dtype=torch.float32), 0.1)
    assert P.dtype == torch.float32
    np.testing.assert_allclose(P.numpy(), pot_plan(a, b, M, 0.1), atol=2e-5)


def test_small_regularisation_stays_finite():
    """Log domain: reg = 1e-3 of the cost scale still gives POT's plan."""
    rng = np.random.default_rng(3)
    a, b, M = masses(rng, 8), masses(rng, 6), rng.random((8, 6))
    P = lcmat.sinkhorn(a, b, M, 1e-3, max_iter=100000, tol=1e-10)
    assert torch.isfinite(P).all()
    np.testing.assert_allclose(P.numpy(), pot_plan(a, b, M, 1e-3), atol=1e-6)


def test_batched_plan_matches_pot_problem_by_problem():
    rng = np.random.default_rng(4)
    Bsz, n, m = 3, 6, 5
    a = np.stack([masses(rng, n) for _ in range(Bsz)])
    b = np.stack([masses(rng, m) for _ in range(Bsz)])
    M = rng.random((Bsz, n, m)) * np.array([1.0, 3.0, 0.2])[:, None, None]  # different scales
    P = lcmat.sinkhorn(a, b, M, 0.1, max_iter=20000, tol=1e-13)
    assert P.shape == (Bsz, n, m)
    for i in range(Bsz):
        np.testing.assert_allclose(P[i].numpy(), pot_plan(a[i], b[i], M[i], 0.1), atol=1e-10)


@pytest.mark.parametrize("a_shape,b_shape", [((6,), (4,)), ((4,), (5,)), ((5, 1), (4,)), ((5,), (4, 1))])
def test_sinkhorn_mismatched_shapes(a_shape, b_shape):
    M = np.random.default_rng(0).random((5, 4))
    a, b = np.ones(a_shape) / np.prod(a_shape), np.ones(b_shape) / np.prod(b_shape)
    with pytest.raises(ValueError, match=r"^a, b\b|^a\b|^b\b"):
        lcmat.sinkhorn(a, b, M, 0.1)


def test_sinkhorn_batched_mismatched_shapes():
    M = np.random.default_rng(0).random((2, 5, 4))
    with pytest.raises(ValueError, match=r"^a, b\b"):
        lcmat.sinkhorn(np.full((3, 5), 0.2), np.full((2, 4), 0.25), M, 0.1)


def test_sinkhorn_cost_must_be_a_matrix_or_batch():
    with raises_naming("M"):
        lcmat.sinkhorn(np.ones(4) / 4, np.ones(4) / 4, np.ones(4), 0.1)


def test_sinkhorn_unequal_masses():
    M = np.random.default_rng(0).random((5, 4))
    with pytest.raises(ValueError, match=r"^a, b\b.*equal total mass"):
        lcmat.sinkhorn(np.full(5, 0.2), np.full(4, 0.3), M, 0.1)


def test_sinkhorn_negative_masses():
    M = np.random.default_rng(0).random((3, 2))
    with pytest.raises(ValueError, match=r"^a, b\b.*non-negative"):
        lcmat.sinkhorn(np.array([-0.5, 1.0, 0.5]), np.array([0.5, 0.5]), M, 0.1)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_sinkhorn_non_finite_cost(bad):
    M = np.random.default_rng(0).random((3, 2))
    M[1, 1] = bad
    with raises_naming("M"):
        lcmat.sinkhorn(np.ones(3) / 3, np.ones(2) / 2, M, 0.1)


def test_sinkhorn_non_finite_masses():
    M = np.random.default_rng(0).random((3, 2))
    with raises_naming("a"):
        lcmat.sinkhorn(np.array([np.nan, 0.5, 0.5]), np.ones(2) / 2, M, 0.1)


@pytest.mark.parametrize("reg", [0, 0.0, -0.1, np.nan])
def test_sinkhorn_bad_reg(reg):
    M = np.random.default_rng(0).random((3, 2))
    with raises_naming("reg"):
        lcmat.sinkhorn(np.ones(3) / 3, np.ones(2) / 2, M, reg)


# ---------------------------------------------------------------------------------------------
# lcmat.coreset_ot_distance

def pot_class_costs(H, y, indices, weights=None, reg=0.05):
    """Per class, <P, M> of POT's plan between the class (uniform mass) and its selected samples
    (uniform mass or normalised weights) on squared distances of L2-normalised embeddings."""
    x = H / np.linalg.norm(H, axis=1, keepdims=True)
    w = np.ones(len(indices)) if weights is None else np.asarray(weights, np.float64)
    out = []
    for c in range(int(y.max()) + 1):
        members, mask = np.flatnonzero(y == c), y[indices] == c
        chosen = indices[mask]
        M = ot.dist(x[members], x[chosen])  # squared Euclidean
        a, b = np.full(len(members), 1.0 / len(members)), w[mask] / w[mask].sum()
        out.append((pot_plan(a, b, M, reg) * M).sum())
    return np.array(out)


def test_coreset_ot_distance_matches_pot():
    H, Z, y = B.make_problem([12, 9, 15], D=4, seed=5)
    indices = np.sort(np.concatenate([np.flatnonzero(y == c)[:k] for c, k in enumerate([3, 2, 4])]))
    got = lcmat.coreset_ot_distance(H, y, indices, tol=1e-12, max_iter=20000)
    assert got.shape == (3,) and got.dtype == np.float64
    np.testing.assert_allclose(got, pot_class_costs(H, y, indices), rtol=1e-7)


def test_coreset_ot_distance_with_weights_matches_pot():
    H, Z, y = B.make_problem([12, 9, 15], D=4, seed=6)
    cs = lcmat.CRAIG(fraction=0.25).select_features(embeddings=H, logits=Z, labels=y)
    got = lcmat.coreset_ot_distance(H, y, cs.indices, cs.weights, reg=0.5, tol=1e-12, max_iter=20000)
    np.testing.assert_allclose(got, pot_class_costs(H, y, cs.indices, cs.weights, reg=0.5), rtol=1e-7)
    unweighted = lcmat.coreset_ot_distance(H, y, cs.indices, reg=0.5, tol=1e-12, max_iter=20000)
    assert not np.allclose(got, unweighted)  # the weights are used


def test_full_set_is_closer_than_a_single_sample():
    H, Z, y = B.make_problem([10, 14, 8], D=5, seed=7)
    full = lcmat.coreset_ot_distance(H, y, np.arange(len(y)))
    single = lcmat.coreset_ot_distance(H, y, np.array([np.flatnonzero(y == c)[0] for c in range(3)]))
    assert np.all(full < single)


@pytest.mark.filterwarnings("ignore:coreset_ot_distance:RuntimeWarning")  # same problem both ways
def test_coreset_ot_distance_accepts_torch():
    H, Z, y = B.make_problem([10, 14, 8], D=5, seed=7)
    idx = np.arange(0, len(y), 2)
    np.testing.assert_allclose(lcmat.coreset_ot_distance(torch.tensor(H), torch.tensor(y), torch.tensor(idx)),
                               lcmat.coreset_ot_distance(H, y, idx), rtol=1e-12)


@pytest.mark.parametrize("indices", [np.array([], dtype=np.int64), np.array([0, 99]), np.array([-1, 2]),
                                     np.array([[0, 1]])], ids=["empty", "too large", "negative", "2-D"])
def test_coreset_ot_distance_bad_indices(indices):
    H, Z, y = B.make_problem([10, 14, 8], D=5, seed=7)
    with raises_naming("indices"):
        lcmat.coreset_ot_distance(H, y, indices)


def test_coreset_ot_distance_bad_embeddings():
    H, Z, y = B.make_problem([10, 14, 8], D=5, seed=7)
    H[0, 0] = np.nan
    with raises_naming("embeddings"):
        lcmat.coreset_ot_distance(H, y, np.arange(5))
    with raises_naming("embeddings"):
        lcmat.coreset_ot_distance(H[:-1], y, np.arange(5))
