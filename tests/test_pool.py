"""The per-class pool of `lcmat experiment` (``pool``, ``pool_seed``): one seeded draw of N training images
per class, the same for every method and seed, drawn before the corruption, recorded and checked on
resume; and the host of every row (rows of two hosts are never paired)."""
import numpy as np
import pytest

import helpers
import lcmat.experiment as experiment
from lcmat.cli import main
from lcmat.data import load_dataset, per_class_pool_indices
from lcmat.experiment import corruption_tag, run_experiment
from lcmat.results import (RESULT_COLUMNS, append_row, baseline_for, paired_differences, read_results,
                           repair_results, setting_label, summary_markdown)

QUIET = dict(progress=False, log=lambda *a: None)
POOL = dict(pool=20, pool_seed=1)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LCMAT_CACHE_DIR", str(tmp_path / "cache"))



def spy(monkeypatch, name):
    return helpers.spy(monkeypatch, experiment, name)


def image_keys(dataset):
    """Each image with its label, as hashable bytes (to compare datasets as sets of samples)."""
    return [(bytes(image.tobytes()), int(label)) for image, label in zip(dataset.data, dataset.targets)]


# --------------------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------------------

def test_pool_keeps_n_images_of_every_class_from_the_training_split():
    whole = load_dataset("digits", "train")
    pool = load_dataset("digits", "train", **POOL)
    assert np.bincount(pool.targets).tolist() == [20] * 10
    assert pool.pool == {"pool": 20, "pool_seed": 1}
    assert whole.pool == {"pool": None, "pool_seed": None}
    originals = set(image_keys(whole))
    assert all(key in originals for key in image_keys(pool))  # real training images, their own labels
    assert len(set(image_keys(pool))) == len(pool)  # no image twice (digits has no duplicate images)


def test_pool_is_deterministic_and_depends_on_its_seed_only():
    a = load_dataset("digits", "train", **POOL)
    b = load_dataset("digits", "train", **POOL)
    assert np.array_equal(a.data, b.data) and np.array_equal(a.targets, b.targets)
    other = load_dataset("digits", "train", pool=20, pool_seed=2)
    assert not np.array_equal(a.data, other.data)
    # Label noise changes labels, never which images are in the pool; its seed is independent.
    for seed in (0, 5):
        noisy = load_dataset("digits", "train", label_noise=0.4, corruption_seed=seed, **POOL)
        assert np.array_equal(noisy.data, a.data) and np.array_equal(noisy.clean_targets, a.targets)
        assert (noisy.targets != a.targets).sum() == round(0.4 * 200)


def test_pool_is_drawn_first_then_the_imbalance_acts_on_it():
    pooled = load_dataset("digits", "train", **POOL)
    long_tail = load_dataset("digits", "train", imbalance=10.0, corruption_seed=0, **POOL)
    expected = [max(1, int(20 * 10.0 ** (-c / 9))) for c in range(10)]
    assert np.bincount(long_tail.targets, minlength=10).tolist() == expected
    pooled_keys = set(image_keys(pooled))
    assert all(key in pooled_keys for key in image_keys(long_tail))  # a subset of the pool


def test_per_class_pool_indices_by_brute_force():
    targets = np.array([2, 0, 1, 0, 2, 1, 0, 2, 1, 0])
    indices = per_class_pool_indices(targets, 2, np.random.default_rng(3))
    assert list(indices) == sorted(indices)
    assert np.bincount(targets[indices]).tolist() == [2, 2, 2]
    # The draw, written out: class by class in label order, uniformly without replacement.
    rng = np.random.default_rng(3)
    expected = sorted(int(i) for c in (0, 1, 2)
                      for i in rng.choice(np.flatnonzero(targets == c), size=2, replace=False))
    assert list(indices) == expected
    everything = per_class_pool_indices(targets, 3, np.random.default_rng(0))  # the smallest class whole
    assert np.bincount(targets[everything]).tolist() == [3, 3, 3]


def test_pool_refuses_more_than_the_smallest_class_and_bad_values():
    smallest = int(np.bincount(load_dataset("digits", "train").targets).min())  # 139 (class 8)
    assert len(load_dataset("digits", "train", pool=smallest)) == 10 * smallest
    with pytest.raises(ValueError, match=rf"pool: {smallest + 1} images per class, but class 8 has only {smallest}"):
        load_dataset("digits", "train", pool=smallest + 1)
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(ValueError, match="pool"):
            load_dataset("digits", "train", pool=bad)
    with pytest.raises(ValueError, match="pool_seed"):
        load_dataset("digits", "train", pool=10, pool_seed=-1)
    with pytest.raises(ValueError, match="training split only"):
        load_dataset("digits", "test", pool=10)


# --------------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------------

def test_every_method_and_seed_selects_from_and_trains_on_the_same_pool(tmp_path, monkeypatch):
    pretrainings = spy(monkeypatch, "train_selection_model")
    trainings = spy(monkeypatch, "train_on_coreset")
    rows = run_experiment("digits", "mlp", ["uniform", "el2n", "full"], [0.1, 0.5], [0, 1], tmp_path,
                          selection_epochs=1, epochs=1, **POOL, **QUIET)
    pool = load_dataset("digits", "train", **POOL)
    assert len(pretrainings) == 2
    for args, _ in pretrainings:  # each seed's selection model trains on the pool
        assert np.array_equal(args[1].data, pool.data) and np.array_equal(args[1].targets, pool.targets)
    assert len(trainings) == 2 * (2 * 2 + 1)
    for args, _ in trainings:  # every coreset is a subset of the pool, indexed into it
        assert args[1] is trainings[0][0][1]
        assert np.array_equal(args[1].data, pool.data)
        assert set(np.asarray(args[2]).tolist()) <= set(range(len(pool)))
    for row in rows:
        assert (row["pool"], row["pool_seed"]) == (20, 1)
        if row["method"] == "full":
            assert row["n_selected"] == 200
        else:
            assert row["n_selected"] == 10 * round(row["fraction"] * 20)
    assert "pool20-ps1" in (tmp_path / "selection_models.json").read_text()
    assert "## digits, pool 20/class (pool seed 1), mlp" in (tmp_path / "summary.md").read_text()


def test_cache_tag_keys_on_the_pool_and_the_corruption():
    clean = dict(imbalance=1.0, label_noise=0.0, corruption_seed=0)
    assert corruption_tag(dict(clean, pool=None, pool_seed=None)) == ""
    assert corruption_tag(dict(clean, pool=1000, pool_seed=0)) == "pool1000-ps0"
    assert corruption_tag(dict(clean, pool=1000, pool_seed=2)) == "pool1000-ps2"
    assert corruption_tag(dict(clean, label_noise=0.2, pool=1000, pool_seed=0)) == "pool1000-ps0-noise0.2-imb1-cs0"
    assert corruption_tag(dict(clean, imbalance=10.0)) == "noise0-imb10-cs0"  # files cached before pools


def test_resume_refuses_another_pool(tmp_path, monkeypatch):
    trainings = spy(monkeypatch, "train_on_coreset")
    settings = dict(dataset="digits", model="mlp", methods=["uniform"], fractions=[0.1], seeds=[0],
                    out_dir=tmp_path, selection_epochs=1, epochs=1, **QUIET)
    run_experiment(**settings, **POOL)
    for changed in (dict(pool=30, pool_seed=1), dict(pool=20, pool_seed=2), dict(pool=None)):
        with pytest.raises(ValueError, match="pool"):
            run_experiment(resume=True, **settings, **changed)
    assert len(trainings) == 1
    run_experiment(resume=True, **dict(settings, seeds=[0, 1]), **POOL)
    assert len(trainings) == 2
    with pytest.raises(ValueError, match="pool: 500 images per class"):
        run_experiment(**dict(settings, out_dir=tmp_path / "big"), pool=500)
    assert len(trainings) == 2


def test_cli_pool_options(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["experiment", "--dataset", "digits", "--model", "mlp", "--methods", "uniform", "--fractions", "0.1",
                 "--seeds", "0", "--epochs", "1", "--selection-epochs", "1", "--pool", "30", "--pool-seed", "4",
                 "--imbalance", "2", "--out", str(out), "--quiet"]) == 0
    (row,) = read_results(out / "results.csv")
    assert (row["pool"], row["pool_seed"], row["imbalance"]) == (30, 4, 2.0)
    with pytest.raises(SystemExit, match="--pool-seed needs --pool"):
        main(["experiment", "--dataset", "digits", "--model", "mlp", "--pool-seed", "1", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="pool: 1000 images per class"):
        main(["experiment", "--dataset", "digits", "--model", "mlp", "--methods", "uniform", "--fractions", "0.1",
              "--seeds", "0", "--epochs", "1", "--pool", "1000", "--out", str(tmp_path / "y"), "--quiet"])


# --------------------------------------------------------------------------------------------------
# Rows: pool and host columns, pairing
# --------------------------------------------------------------------------------------------------

def _row(method, final, **extra):
    row = dict(dataset="digits", model="mlp", method=method, options="", fraction=0.1, seed=0, n_selected=18,
               protocol="epochs", selection_epochs=1, epochs=1, steps=None, batch_size=128, lr=0.1,
               imbalance=1.0, label_noise=0.0, corruption_seed=0, pool=None, pool_seed=None, final_acc=final,
               best_acc=final, host="a", date="2026-12-06T00:00:00Z")
    row.update(extra)
    return row


def test_rows_of_two_pools_are_never_paired_or_averaged():
    rows = [_row("uniform", 50.0), _row("el2n", 55.0), _row("uniform", 40.0, pool=20, pool_seed=0),
            _row("el2n", 47.0, pool=20, pool_seed=0), _row("el2n", 99.0, pool=20, pool_seed=1)]
    diffs = paired_differences(rows)
    assert diffs[("digits", "mlp", "el2n", 0.1)] == {0: 5.0}
    assert diffs[("digits, pool 20/class (pool seed 0)", "mlp", "el2n", 0.1)] == {0: 7.0}
    assert ("digits, pool 20/class (pool seed 1)", "mlp", "el2n", 0.1) not in diffs  # no uniform of that pool
    text = summary_markdown(rows)
    assert "## digits, pool 20/class (pool seed 0), mlp" in text and "## digits, mlp" in text
    assert setting_label(_row("uniform", 1.0, pool=20, pool_seed=0, label_noise=0.2)) == \
        "digits, pool 20/class (pool seed 0), label noise 20 %, corruption seed 0"


def test_rows_of_two_hosts_are_never_paired():
    rows = [_row("uniform", 50.0, host="a"), _row("el2n", 55.0, host="a"),
            _row("uniform", 60.0, seed=1, host="a"), _row("el2n", 70.0, seed=1, host="b"),
            _row("uniform", 30.0, seed=2, host=""), _row("el2n", 33.0, seed=2, host="b"),
            _row("uniform", 20.0, seed=3, host="a"), _row("uniform", 25.0, seed=3, host="b"),
            _row("el2n", 21.0, seed=3, host="b"), _row("el2n", 9.0, seed=3, host="")]
    assert paired_differences(rows)[("digits", "mlp", "el2n", 0.1)] == {0: 5.0, 2: 3.0, 3: -4.0}
    # seed 1: two known hosts, no pair; seed 2: an unknown host pairs with the only baseline; seed 3: b
    # pairs with b, and the host-less row (two candidate baselines) with neither.
    assert baseline_for({"a": 1.0}, "a") == 1.0 and baseline_for({"a": 1.0}, "b") is None
    assert baseline_for({"": 1.0}, "b") == 1.0 and baseline_for({"a": 1.0}, "") == 1.0
    assert baseline_for({"a": 1.0, "b": 2.0}, "") is None and baseline_for(None, "a") is None


def test_append_row_stamps_host_and_date_and_old_files_read_without_them(tmp_path):
    path = tmp_path / "results.csv"
    row = {k: v for k, v in _row("uniform", 50.0).items() if k not in ("host", "date")}
    append_row(path, row)
    (read,) = read_results(path)
    assert read["host"] and read["date"].endswith("Z") and read["date"][:2] == "20"
    assert (read["pool"], read["pool_seed"]) == (None, None)
    old = tmp_path / "old.csv"
    old_columns = [c for c in RESULT_COLUMNS if c not in ("pool", "pool_seed", "host", "date")]
    old.write_text(",".join(old_columns) + "\n"
                   + ",".join(str(_row("uniform", 50.0).get(c, "")) if _row("uniform", 50.0).get(c) is not None
                              else "" for c in old_columns) + "\n")
    (legacy,) = repair_results(old)
    assert (legacy["host"], legacy["date"], legacy["pool"], legacy["pool_seed"]) == ("", "", None, None)
    assert old.read_text().splitlines()[0].split(",") == RESULT_COLUMNS  # upgraded in place


def test_summary_says_when_the_ceiling_has_fewer_seeds_than_the_methods():
    rows = [_row(m, 50.0 + s, seed=s) for m in ("uniform", "el2n") for s in (0, 1, 2)]
    rows.append(_row("full", 80.0, fraction=1.0, seed=0, n_selected=1438))
    text = summary_markdown(rows)
    assert "(1 seed(s); the methods have 3 seed(s): the ceiling is a reference line" in text
    rows += [_row("full", 81.0, fraction=1.0, seed=s, n_selected=1438) for s in (1, 2)]
    assert "the methods have" not in summary_markdown(rows)
