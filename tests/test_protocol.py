"""The experiment's protocol and corrupted training sets: the papers' fixed-epoch protocol by default,
the step budget as a named option, label noise / imbalance passed to the training split and recorded,
resume refusing to mix protocols or corruptions, older results files, and the full-set ceiling."""
import pytest

import lcmat.experiment as experiment
from lcmat.cli import main
from lcmat.data import load_dataset
from lcmat.experiment import PRESETS, run_experiment
from lcmat.results import RESULT_COLUMNS, paired_differences, read_results, summary_markdown
import helpers

QUIET = dict(progress=False, log=lambda *a: None)
CORRUPTION = dict(label_noise=0.2, imbalance=10.0, corruption_seed=3)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Selection models are cached under the test's own folder (every test trains its own)."""
    monkeypatch.setenv("LCMAT_CACHE_DIR", str(tmp_path / "cache"))



def spy(monkeypatch, name):
    return helpers.spy(monkeypatch, experiment, name)


def test_presets_paper_and_cpu_use_epochs_and_cpu_steps_the_step_budget():
    assert PRESETS["paper"]["epochs"] == 200 and PRESETS["paper"]["steps"] is None
    assert PRESETS["paper"]["selection_epochs"] == 10 and PRESETS["paper"]["lr"] == 0.1
    assert PRESETS["cpu"]["epochs"] > 0 and PRESETS["cpu"]["steps"] is None
    assert PRESETS["cpu-steps"]["steps"] == 300 and PRESETS["cpu-steps"]["epochs"] is None
    same = {k: v for k, v in PRESETS["cpu"].items() if k not in ("epochs", "steps")}
    assert same == {k: v for k, v in PRESETS["cpu-steps"].items() if k not in ("epochs", "steps")}


def test_corruption_reaches_the_training_loader_and_every_row(tmp_path, monkeypatch):
    loads = spy(monkeypatch, "load_dataset")
    trainings = spy(monkeypatch, "train_on_coreset")
    rows = run_experiment("digits", "mlp", ["uniform", "el2n", "full"], [0.1], [0], tmp_path, selection_epochs=1,
                          epochs=1, **CORRUPTION, **QUIET)
    by_split = {args[1]: kwargs for args, kwargs in loads}
    assert by_split["train"] == dict(CORRUPTION, pool=None, pool_seed=0)
    assert not {k: v for k, v in by_split["test"].items() if k in CORRUPTION}  # the test split stays clean
    corrupted = load_dataset("digits", "train", **CORRUPTION)
    for args, _ in trainings:  # every coreset is trained on the corrupted labels
        assert args[1].corruption == {"imbalance": 10.0, "label_noise": 0.2, "corruption_seed": 3}
        assert (args[1].targets == corrupted.targets).all()
    assert len(rows) == 3
    for row in rows:
        assert (row["label_noise"], row["imbalance"], row["corruption_seed"]) == (0.2, 10.0, 3)
        assert row["protocol"] == "epochs" and row["epochs"] == 1 and row["steps"] is None
    # The selection model of a corrupted set is cached apart from the clean set's.
    assert "noise0.2-imb10-cs3" in (tmp_path / "selection_models.json").read_text()


def test_cli_passes_corruption_options(tmp_path):
    out = tmp_path / "run"
    assert main(["experiment", "--dataset", "digits", "--model", "mlp", "--methods", "uniform",
                 "--fractions", "0.1", "--seeds", "0", "--epochs", "1", "--selection-epochs", "1",
                 "--label-noise", "0.4", "--imbalance", "100", "--corruption-seed", "1",
                 "--out", str(out), "--quiet"]) == 0
    (row,) = read_results(out / "results.csv")
    assert (row["label_noise"], row["imbalance"], row["corruption_seed"]) == (0.4, 100.0, 1)
    assert row["protocol"] == "epochs" and row["n_selected"] < 180  # 10 % of a long-tailed digits


def test_resume_refuses_another_corruption_or_protocol(tmp_path, monkeypatch):
    trainings = spy(monkeypatch, "train_on_coreset")
    settings = dict(dataset="digits", model="mlp", methods=["uniform"], fractions=[0.1], seeds=[0],
                    out_dir=tmp_path, selection_epochs=1, epochs=1, **QUIET)
    run_experiment(label_noise=0.2, **settings)
    for changed, name in ((dict(label_noise=0.4), "label_noise"), (dict(label_noise=0.0), "label_noise"),
                          (dict(label_noise=0.2, imbalance=10.0), "imbalance"),
                          (dict(label_noise=0.2, corruption_seed=1), "corruption_seed"),
                          (dict(label_noise=0.2, epochs=None, steps=4), "protocol")):
        with pytest.raises(ValueError, match=name):
            run_experiment(resume=True, **dict(settings, **changed))
    assert len(trainings) == 1
    run_experiment(resume=True, **dict(settings, label_noise=0.2, seeds=[0, 1]))  # the same settings go on
    assert len(trainings) == 2

    steps_dir = tmp_path / "steps"
    run_experiment(**dict(settings, out_dir=steps_dir, epochs=None, steps=4))
    with pytest.raises(ValueError, match="protocol"):
        run_experiment(resume=True, **dict(settings, out_dir=steps_dir))
    assert read_results(steps_dir / "results.csv")[0]["protocol"] == "steps"


OLD_HEADER = ("dataset,model,method,options,fraction,seed,n_selected,weighted,selection_epochs,epochs,steps,"
              "batch_size,lr,final_acc,best_acc,selection_seconds,training_seconds\n")


def test_results_without_the_new_columns_read_as_clean_and_by_their_steps(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text(OLD_HEADER
                    + "digits,mlp,uniform,,0.1,0,18,False,1,1,,128,0.1,50.0,51.0,0.0,1.0\n"
                    + "digits,mlp,el2n,,0.1,0,18,False,1,7,300,128,0.1,40.0,41.0,0.1,1.0\n")
    uniform, el2n = read_results(path)
    for row in (uniform, el2n):
        assert (row["imbalance"], row["label_noise"], row["corruption_seed"]) == (1.0, 0.0, 0)
    assert uniform["protocol"] == "epochs" and el2n["protocol"] == "steps"


def test_resume_continues_an_older_file_of_the_same_settings(tmp_path, monkeypatch):
    trainings = spy(monkeypatch, "train_on_coreset")
    (tmp_path / "results.csv").write_text(
        OLD_HEADER + "digits,mlp,uniform,,0.1,0,18,False,1,1,,128,0.1,50.0,51.0,0.0,1.0\n")
    rows = run_experiment("digits", "mlp", ["uniform"], [0.1], [0, 1], tmp_path, selection_epochs=1, epochs=1,
                          resume=True, **QUIET)
    assert len(trainings) == 1 and sorted(r["seed"] for r in rows) == [0, 1]
    assert (tmp_path / "results.csv").read_text().splitlines()[0].split(",") == RESULT_COLUMNS  # upgraded
    with pytest.raises(ValueError, match="label_noise"):
        run_experiment("digits", "mlp", ["uniform"], [0.1], [2], tmp_path, selection_epochs=1, epochs=1,
                       resume=True, label_noise=0.2, **QUIET)


def test_full_ceiling_row_trains_on_every_sample_once_per_seed(tmp_path, monkeypatch):
    pretrainings = spy(monkeypatch, "train_selection_model")
    rows = run_experiment("digits", "mlp", ["full"], [0.05, 0.1], [0, 1], tmp_path, selection_epochs=1, epochs=1,
                          **QUIET)
    n = len(load_dataset("digits", "train"))
    assert sorted((r["method"], r["fraction"], r["seed"], r["n_selected"]) for r in rows) == [
        ("full", 1.0, 0, n), ("full", 1.0, 1, n)]
    assert not pretrainings  # the ceiling needs no selection model
    assert "Ceiling (full" in (tmp_path / "summary.md").read_text()
    with pytest.raises(ValueError, match="more than once"):
        run_experiment("digits", "mlp", ["full", "full"], [0.1], [0], tmp_path / "x", epochs=1, **QUIET)


def _row(method, final, **extra):
    row = dict(dataset="digits", model="mlp", method=method, options="", fraction=0.1, seed=0, n_selected=18,
               protocol="epochs", selection_epochs=1, epochs=1, steps=None, batch_size=128, lr=0.1,
               imbalance=1.0, label_noise=0.0, corruption_seed=0, final_acc=final, best_acc=final)
    row.update(extra)
    return row


def test_rows_of_other_corruptions_or_protocols_are_never_paired_or_averaged():
    rows = [_row("uniform", 50.0), _row("el2n", 60.0, label_noise=0.2), _row("el2n", 70.0, protocol="steps"),
            _row("el2n", 55.0), _row("uniform", 10.0, label_noise=0.2), _row("full", 90.0, fraction=1.0)]
    diffs = paired_differences(rows)
    assert diffs[("digits", "mlp", "el2n", 0.1)] == {0: 5.0}
    noisy = [k for k in diffs if "label noise 20 %" in k[0]]
    assert [diffs[k] for k in noisy] == [{0: 50.0}]
    assert not [k for k in diffs if "step budget" in k[0]]  # no uniform row under the step budget
    text = summary_markdown(rows)
    assert "## digits, label noise 20 %, corruption seed 0, mlp" in text
    assert "## digits, step budget, mlp" in text
    assert "Ceiling (full" in text and "| full |" not in text


def test_selection_model_other_than_the_trained_one(tmp_path, monkeypatch):
    pretrainings = spy(monkeypatch, "train_selection_model")
    trainings = spy(monkeypatch, "train_on_coreset")
    out = tmp_path / "run"
    assert main(["experiment", "--dataset", "digits", "--model", "mlp", "--selection-model", "convnet",
                 "--selection-model-option", "width=8", "--methods", "uniform,el2n", "--fractions", "0.1",
                 "--seeds", "0", "--epochs", "1", "--selection-epochs", "1", "--out", str(out), "--quiet"]) == 0
    (args, _), = pretrainings
    assert type(args[0]).__name__ == "ConvNet3"  # the selecting network
    assert all(type(args[0]()).__name__ == "MLP" for args, _ in trainings)  # the trained one
    rows = read_results(out / "results.csv")
    assert {(r["model"], r["selection_model"]) for r in rows} == {("mlp", "convnet(width=8)")}
    assert "## digits, selected with convnet(width=8), trained mlp" in (out / "summary.md").read_text()
    with pytest.raises(ValueError, match="selection_model"):
        run_experiment("digits", "mlp", ["uniform"], [0.1], [0], out, selection_epochs=1, epochs=1, resume=True,
                       **QUIET)
