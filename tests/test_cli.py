"""The `lcmat` command line: `methods`, and `select` round trips against the API."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import brute_selectors as B
import lcmat
from lcmat.cli import main

COUNTS = [25, 35, 11]


@pytest.fixture
def features(tmp_path):
    """A small features file: embeddings (non-negative), logits, labels, forgetting counts."""
    H, Z, y = B.make_problem(COUNTS, D=5, seed=0, nonneg=True)
    forgetting = np.random.default_rng(1).integers(0, 5, len(y))
    path = tmp_path / "feats.npz"
    np.savez(path, embeddings=H.astype(np.float32), logits=Z.astype(np.float32), labels=y,
             forgetting=forgetting)
    return path, dict(embeddings=H.astype(np.float32), logits=Z.astype(np.float32), labels=y,
                      forgetting=forgetting)


def api(name, arrays, **options):
    extra = {"forgetting": arrays["forgetting"]} if name == "forgetting" else {}
    return lcmat.get_method(name, progress=False, **options).select_features(
        embeddings=arrays["embeddings"], logits=arrays["logits"], labels=arrays["labels"], **extra)


def select_args(method, features, out, *more, fraction="0.2"):
    return ["select", "--method", method, "--fraction", fraction, "--features", str(features),
            "--out", str(out), "--quiet", *more]


def test_methods_lists_every_method(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")}
    assert set(lcmat.METHODS) <= listed
    for flag in ("--rho", "--num-coords", "--mode", "--batch-size", "--lam", "--beta", "--negative"):
        assert flag in out


@pytest.mark.parametrize("method", sorted(m for m, c in lcmat.METHODS.items() if not getattr(c, "needs_model", False)))
def test_select_round_trip_equals_the_api(method, features, tmp_path, capsys):
    path, arrays = features
    out = tmp_path / f"{method}.npz"
    assert main(select_args(method, path, out)) == 0
    expected = api(method, arrays, fraction=0.2)
    with np.load(out) as saved:
        np.testing.assert_array_equal(saved["indices"], expected.indices)
        assert ("weights" in saved) == (expected.weights is not None)
        assert ("scores" in saved) == (expected.scores is not None)
        if expected.scores is not None:
            np.testing.assert_allclose(saved["scores"], expected.scores)
        assert str(saved["method"]) == method
    loaded = lcmat.Coreset.load(out)
    np.testing.assert_array_equal(loaded.indices, expected.indices)


def test_select_refuses_a_method_that_needs_the_model(features, tmp_path):
    path, _ = features
    with pytest.raises(SystemExit, match="model"):
        main(select_args("deepfool", path, tmp_path / "deepfool.npz"))


def test_select_passes_method_options(features, tmp_path, capsys):
    path, arrays = features
    out = tmp_path / "lcmat.npz"
    args = select_args("lcmat", path, out, "--rho", "2.5", "--num-coords", "4", "--mode", "compat",
                       "--batch-size", "8", "--weights", "true")
    assert main(args) == 0
    expected = api("lcmat", arrays, fraction=0.2, rho=2.5, num_coords=4, mode="compat", batch_size=8,
                   weights=True)
    default = api("lcmat", arrays, fraction=0.2)
    assert not np.array_equal(expected.indices, default.indices)  # the options change the picks
    with np.load(out) as saved:
        np.testing.assert_array_equal(saved["indices"], expected.indices)
        np.testing.assert_array_equal(saved["weights"], expected.weights)


def test_select_global_budget_and_seed(features, tmp_path, capsys):
    path, arrays = features
    out = tmp_path / "kc.npz"
    assert main(select_args("kcenter", path, out, "--no-balance", "--seed", "3")) == 0
    expected = api("kcenter", arrays, fraction=0.2, balance=False, seed=3)
    with np.load(out) as saved:
        np.testing.assert_array_equal(saved["indices"], expected.indices)
        assert len(saved["indices"]) == round(0.2 * sum(COUNTS))


def test_select_prints_the_summary_table(features, tmp_path, capsys):
    path, arrays = features
    out = tmp_path / "grand.npz"
    main(select_args("grand", path, out))
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert re.match(r"\s*class\s+pool\s+selected\s+share", lines[0])
    budgets = B.budgets(arrays["labels"], 0.2)
    for c, (n, k) in enumerate(zip(COUNTS, budgets)):
        assert re.search(rf"^\s*{c}\s+{n}\s+{k}\s+{100 * k / n:.2f}%", text, re.M), text
    assert re.search(rf"^\s*total\s+{sum(COUNTS)}\s+{sum(budgets)}\s", text, re.M)
    assert f"{sum(budgets)} samples" in text and str(out) in text


@pytest.mark.parametrize("method,flag", [("uniform", "--rho"), ("fdmat", "--num-coords"),
                                         ("lcmat", "--lam"), ("craig", "--rho")])
def test_an_option_of_another_method_is_refused(method, flag, features, tmp_path):
    path, _ = features
    with pytest.raises(SystemExit) as err:
        main(select_args(method, path, tmp_path / "o.npz", flag, "1"))
    assert flag in str(err.value) and method in str(err.value)
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("fraction", ["2",
                                      "0",
                                      "-0.5",
                                      "abc"])
def test_a_bad_fraction_exits_naming_fraction(fraction, features, tmp_path, capsys):
    path, _ = features
    with pytest.raises(SystemExit) as err:
        main(select_args("uniform", path, tmp_path / "o.npz", fraction=fraction))
    message = str(err.value) + capsys.readouterr().err  # argparse prints to stderr, exits 2
    assert "fraction" in message


def test_a_fraction_that_empties_a_class_exits_naming_fraction(features, tmp_path):
    path, _ = features
    with pytest.raises(SystemExit) as err:
        main(select_args("uniform", path, tmp_path / "o.npz", fraction="0.01"))
    assert "fraction" in str(err.value) and "class" in str(err.value)


@pytest.mark.parametrize("flag,value", [("--rho", "abc"),
                                        ("--num-coords", "2.5"),
                                        ("--rho", "-1"),
                                        ("--mode", "released")])
def test_a_bad_option_value_exits_naming_the_option(flag, value, features, tmp_path):
    path, _ = features
    with pytest.raises(SystemExit) as err:
        main(select_args("lcmat", path, tmp_path / "o.npz", flag, value))
    assert flag.lstrip("-").replace("-", "_") in str(err.value) or flag in str(err.value)


def test_missing_features_file_and_missing_arrays(features, tmp_path):
    path, arrays = features
    with pytest.raises(SystemExit) as err:
        main(select_args("uniform", tmp_path / "nope.npz", tmp_path / "o.npz"))
    assert "--features" in str(err.value)
    no_logits = tmp_path / "no_logits.npz"
    np.savez(no_logits, embeddings=arrays["embeddings"], labels=arrays["labels"])
    with pytest.raises(SystemExit) as err:
        main(select_args("lcmat", no_logits, tmp_path / "o.npz"))
    assert "logits" in str(err.value)
    no_labels = tmp_path / "no_labels.npz"
    np.savez(no_labels, embeddings=arrays["embeddings"])
    with pytest.raises(SystemExit) as err:
        main(select_args("herding", no_labels, tmp_path / "o.npz"))
    assert "labels" in str(err.value)


def test_unknown_method_exits(features, tmp_path, capsys):
    path, _ = features
    with pytest.raises(SystemExit):
        main(select_args("nope", path, tmp_path / "o.npz"))
    assert "--method" in capsys.readouterr().err


def lcmat_command():
    script = Path(sys.executable).parent / "lcmat"
    return [str(script)] if script.exists() else [sys.executable, "-m", "lcmat.cli"]


def test_select_through_a_subprocess(features, tmp_path):
    path, arrays = features
    out = tmp_path / "sub.npz"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = subprocess.run(lcmat_command() + select_args("fdmat", path, out), capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "total" in done.stdout
    with np.load(out) as saved:
        np.testing.assert_array_equal(saved["indices"], api("fdmat", arrays, fraction=0.2).indices)
