"""Bad input gets a ValueError whose message names the argument at fault (docs/design.md, "Input errors")."""
import math
import re

import numpy as np
import pytest
import torch

import brute_selectors as B
import lcmat
from lcmat.validation import check_finite
from helpers import PairDataset

LOGIT_METHODS = sorted(n for n, cls in lcmat.METHODS.items() if "logits" in cls.needs)
EMBEDDING_METHODS = sorted(n for n, cls in lcmat.METHODS.items() if "embeddings" in cls.needs)


def problem(counts=(6, 5, 4), seed=0):
    return B.make_problem(list(counts), D=3, seed=seed, nonneg=True)


def select(name, H=None, Z=None, y=None, **options):
    extra = {"forgetting": np.zeros(len(y))} if name == "forgetting" and y is not None else {}
    return lcmat.get_method(name, **options).select_features(embeddings=H, logits=Z, labels=y, **extra)


def raises_naming(argument):
    """pytest.raises(ValueError) whose message starts with the argument's name."""
    return pytest.raises(ValueError, match=rf"^{re.escape(argument)}\b")


# ---------------------------------------------------------------------------------------------
# Shapes and values of the arrays

@pytest.mark.parametrize("name", EMBEDDING_METHODS)
def test_embedding_rows_must_match_labels(name):
    H, Z, y = problem()
    with raises_naming("embeddings"):
        select(name, H[:-1], Z, y, fraction=0.5)


@pytest.mark.parametrize("name", LOGIT_METHODS)
def test_logit_rows_must_match_labels(name):
    H, Z, y = problem()
    with raises_naming("logits"):
        select(name, H, Z[:-2], y, fraction=0.5)


@pytest.mark.parametrize("name", LOGIT_METHODS)
def test_logit_columns_must_match_num_classes(name):
    H, Z, y = problem()
    with raises_naming("num_classes"):
        lcmat.get_method(name, fraction=0.5).select_features(embeddings=H, logits=Z, labels=y, num_classes=4)


@pytest.mark.parametrize("name", LOGIT_METHODS)
def test_labels_must_lie_below_the_logit_columns(name):
    H, Z, y = problem()
    with raises_naming("labels"):
        select(name, H, Z[:, :2], y, fraction=0.5)


def test_embeddings_and_logits_must_be_matrices():
    H, Z, y = problem()
    with raises_naming("embeddings"):
        select("lcmat", H[:, 0], Z, y, fraction=0.5)
    with raises_naming("logits"):
        select("lcmat", H, Z[None], y, fraction=0.5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", EMBEDDING_METHODS)
def test_non_finite_embeddings(name, bad):
    H, Z, y = problem()
    H[3, 1] = bad
    with raises_naming("embeddings"):
        select(name, H, Z, y, fraction=0.5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", LOGIT_METHODS)
def test_non_finite_logits(name, bad):
    H, Z, y = problem()
    Z[4, 0] = bad
    with raises_naming("logits"):
        select(name, H, Z, y, fraction=0.5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("row", [0, 6, 13, 19])
def test_check_finite_names_the_first_bad_row_in_any_chunk(bad, row):
    x = torch.randn(20, 3)
    x[row, 2] = bad
    if row < 19:
        x[19, 0] = bad
    with pytest.raises(ValueError, match=rf"emb: contains NaN or Inf \(first in row {row}\)"):
        check_finite("emb", x, rows_per_chunk=7)


def test_check_finite_large_finite_values_whose_sum_overflows_pass():
    x = torch.full((10, 4), 3e38)  # every entry finite, every chunk sum inf
    x[5] = -3e38
    check_finite("emb", x, rows_per_chunk=4)
    x[7, 1] = float("inf")
    with pytest.raises(ValueError, match=r"first in row 7"):
        check_finite("emb", x, rows_per_chunk=4)


def test_non_finite_torch_inputs():
    H, Z, y = problem()
    Zt = torch.tensor(Z, dtype=torch.float32)
    Zt[0, 0] = float("nan")
    with raises_naming("logits"):
        lcmat.LCMat(fraction=0.5).select_features(embeddings=torch.tensor(H), logits=Zt, labels=torch.tensor(y))


@pytest.mark.parametrize("labels,why", [
    ([0, 1, 2, 3, 1, 0], "out of range for 3 logit columns"),
    ([0, 1, -1, 2, 1, 0], "negative"),
    ([0.0, 1.0, 2.5, 2.0, 1.0, 0.0], "non-integral floats"),
    ([[0, 1, 2, 2, 1, 0]], "two dimensions"),
])
def test_bad_labels(labels, why):
    rng = np.random.default_rng(0)
    H, Z = np.abs(rng.normal(size=(6, 3))), rng.normal(size=(6, 3))
    with raises_naming("labels"):
        lcmat.GraNd(fraction=0.5).select_features(embeddings=H, logits=Z, labels=np.array(labels))


def test_integral_float_labels_are_accepted():
    H, Z, y = problem()
    cs = lcmat.EL2N(fraction=0.5).select_features(logits=Z, labels=y.astype(np.float64))
    np.testing.assert_array_equal(cs.indices, lcmat.EL2N(fraction=0.5).select_features(logits=Z, labels=y).indices)


@pytest.mark.parametrize("name", ["uniform", "forgetting"])
def test_empty_labels(name):
    with raises_naming("labels"):
        select(name, np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, dtype=np.int64), fraction=0.5)


@pytest.mark.parametrize("name", ["lcmat", "fdmat", "herding", "el2n"])
def test_empty_features_are_rejected(name):
    with pytest.raises(ValueError, match=r"^(embeddings|logits|labels)\b"):
        select(name, np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, dtype=np.int64), fraction=0.5)


def test_missing_labels():
    H, Z, y = problem()
    with raises_naming("labels"):
        lcmat.LCMat(fraction=0.5).select_features(embeddings=H, logits=Z)


@pytest.mark.parametrize("name", sorted(n for n, c in lcmat.METHODS.items() if not getattr(c, "needs_model", False)))
def test_a_class_with_no_samples(name):
    """Labels 0 and 2 present, class 1 absent (with three logit columns)."""
    H, Z, y = problem()
    y = np.where(y == 1, 0, y)
    with raises_naming("labels") as err:
        select(name, H, Z, y, fraction=0.5)
    assert "[1]" in str(err.value)


@pytest.mark.parametrize("name", sorted(n for n, c in lcmat.METHODS.items() if not getattr(c, "needs_model", False)))
def test_a_class_with_a_zero_budget(name):
    """n_c = 12, 7, 3 at fraction 0.1: class 2 gets round(0.3) = 0; the message names class 2
    and a fraction that gives it one sample (> 0.5 / 3)."""
    H, Z, y = problem(counts=(12, 7, 3))
    with raises_naming("fraction") as err:
        select(name, H, Z, y, fraction=0.1)
    message = str(err.value)
    assert "class 2" in message
    suggested = float(re.search(r"fraction > ([0-9.eE+-]+)", message).group(1))
    assert suggested == pytest.approx(0.5 / 3, rel=1e-3)
    cs = select(name, H, Z, y, fraction=suggested * 1.001)
    assert np.bincount(y[cs.indices], minlength=3)[2] == 1


def test_zero_budget_global():
    H, Z, y = problem()
    with raises_naming("fraction"):
        lcmat.Uniform(fraction=0.01, balance=False).select_features(labels=y)


# ---------------------------------------------------------------------------------------------
# Options

BAD_FRACTIONS = [0, 0.0, -0.1, 1.0000001, 2, math.nan, math.inf, True, False, "0.1", None, [0.1]]


@pytest.mark.parametrize("fraction", BAD_FRACTIONS, ids=repr)
@pytest.mark.parametrize("name", sorted(n for n, c in lcmat.METHODS.items() if not getattr(c, "needs_model", False)))
def test_bad_fraction(name, fraction):
    with raises_naming("fraction"):
        lcmat.get_method(name, fraction=fraction)


@pytest.mark.parametrize("fraction", [
    0.5, 1, np.float64(0.5),
    np.float32(0.5),
    np.int64(1),
], ids=["float", "int", "np.float64", "np.float32", "np.int64"])
def test_numeric_scalar_fractions_are_accepted(fraction):
    y = np.repeat([0, 1], [4, 6])
    cs = lcmat.Uniform(fraction=fraction).select_features(labels=y)
    assert len(cs.indices) == round(float(fraction) * 4) + round(float(fraction) * 6)


LCMAT_BAD_OPTIONS = [({"rho": -0.1}, "rho"), ({"rho": math.nan}, "rho"), ({"rho": "big"}, "rho"),
                     ({"num_coords": -1}, "num_coords"), ({"num_coords": 2.5}, "num_coords")]
SHARED_BAD_OPTIONS = [({"mode": "released"}, "mode"), ({"batch_size": 0}, "batch_size"),
                      ({"batch_size": -4}, "batch_size"), ({"batch_size": 2.0}, "batch_size")]


@pytest.mark.parametrize("name,options,argument",
                         [("lcmat", o, a) for o, a in LCMAT_BAD_OPTIONS + SHARED_BAD_OPTIONS]
                         + [("craig", o, a) for o, a in SHARED_BAD_OPTIONS])
def test_bad_lcmat_options(name, options, argument):
    with raises_naming(argument):
        lcmat.get_method(name, fraction=0.1, **options)


@pytest.mark.parametrize("options,argument", [
    ({"lam": 0}, "lam"), ({"lam": -1.0}, "lam"), ({"beta": 0}, "beta"), ({"max_iter": 0}, "max_iter"),
    ({"tol": -1e-6}, "tol"), ({"negative": "clip"}, "negative"),
])
def test_bad_fdmat_options(options, argument):
    with raises_naming(argument):
        lcmat.FDMat(fraction=0.1, **options)


def test_zero_rho_and_zero_coords_are_allowed():
    H, Z, y = problem()
    lcmat.LCMat(fraction=0.5, rho=0, num_coords=0).select_features(embeddings=H, logits=Z, labels=y)


def test_fdmat_rejects_negative_features_and_shift_accepts_them():
    H, Z, y = problem()
    H[2, 1] = -0.25
    with raises_naming("embeddings") as err:
        lcmat.FDMat(fraction=0.5).select_features(embeddings=H, labels=y)
    assert "negative" in str(err.value)
    cs = lcmat.FDMat(fraction=0.5, negative="shift").select_features(embeddings=H, labels=y)
    assert np.isfinite(cs.scores).all()
    np.testing.assert_array_equal(np.bincount(y[cs.indices]), [3, 2, 2])


@pytest.mark.parametrize("name", LOGIT_METHODS)
def test_a_method_that_needs_logits_called_without_them(name):
    H, Z, y = problem()
    with raises_naming("logits"):
        lcmat.get_method(name, fraction=0.5).select_features(embeddings=H, labels=y)


@pytest.mark.parametrize("name", EMBEDDING_METHODS)
def test_a_method_that_needs_embeddings_called_without_them(name):
    H, Z, y = problem()
    with raises_naming("embeddings"):
        lcmat.get_method(name, fraction=0.5).select_features(logits=Z, labels=y)


def test_forgetting_needs_its_counts():
    H, Z, y = problem()
    with raises_naming("forgetting"):
        lcmat.Forgetting(fraction=0.5).select_features(labels=y)
    with raises_naming("forgetting"):
        lcmat.Forgetting(fraction=0.5).select_features(labels=y, forgetting=np.zeros(len(y) + 1))


def test_unknown_method():
    with raises_naming("method") as err:
        lcmat.get_method("nope")
    assert "lcmat" in str(err.value)  # lists the choices


def test_get_method_accepts_dashes_and_case():
    assert isinstance(lcmat.get_method("Least-Confidence", fraction=0.1), lcmat.LeastConfidence)


# ---------------------------------------------------------------------------------------------
# select(model, dataset)



def test_select_with_a_model_without_linear_layer():
    pytest.importorskip("lcmat.features", reason="lcmat.features (extract_features) is not importable yet")
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 2))
    dataset = PairDataset(torch.randn(12, 1, 3, 3), np.arange(12) % 3)
    for name in ("lcmat", "fdmat", "grand"):
        with raises_naming("model") as err:
            lcmat.get_method(name, fraction=0.5, progress=False).select(model, dataset)
        assert "nn.Linear" in str(err.value)
