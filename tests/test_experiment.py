"""The experiment pipeline: end-to-end CLI run, resume, summaries and the paired-difference arithmetic."""

import csv
import json
import math

import numpy as np
import pytest
import torch

import lcmat
import lcmat.experiment as experiment
from lcmat.cli import main
from lcmat.coreset import class_budgets
from lcmat.data import load_dataset
from lcmat.experiment import (RESULT_COLUMNS, epochs_for_steps, paired_differences, parse_methods,
                              parse_model_option, parse_option, read_results, run_experiment, summarize,
                              summary_markdown)
from helpers import spy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Selection-model checkpoints go to a fresh folder per test."""
    monkeypatch.setenv("LCMAT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def digits_counts():
    return np.bincount(load_dataset("digits", "train").targets)


# --------------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------------

def test_cli_experiment_end_to_end(tmp_path, digits_counts, capsys):
    out = tmp_path / "run"
    argv = ["experiment", "--dataset", "digits", "--model", "mlp", "--methods", "uniform,lcmat",
            "--option", "lcmat.rho=1", "--fractions", "0.1,0.05", "--seeds", "0,1", "--steps", "15",
            "--selection-epochs", "1", "--evaluations", "2", "--device", "cpu", "--out", str(out), "--quiet"]
    assert main(argv) == 0

    with open(out / "results.csv", newline="") as f:
        raw = list(csv.DictReader(f))
    assert set(RESULT_COLUMNS) <= set(raw[0])
    rows = read_results(out / "results.csv")
    keys = {(r["method"], r["options"], r["fraction"], r["seed"]) for r in rows}
    assert keys == {(m, o, f, s) for m, o in (("uniform", ""), ("lcmat", "rho=1.0"))
                    for f in (0.05, 0.1) for s in (0, 1)}
    assert len(rows) == 8
    for r in rows:
        k = int(class_budgets(digits_counts, r["fraction"]).sum())
        assert r["dataset"] == "digits" and r["model"] == "mlp"
        assert r["n_selected"] == k
        assert r["steps"] == 15 and r["selection_epochs"] == 1
        assert r["epochs"] == math.ceil(15 / math.ceil(k / 128))
        assert 0 <= r["final_acc"] <= r["best_acc"] <= 100
        assert r["selection_seconds"] >= 0 and r["training_seconds"] > 0
        assert raw[0]["weighted"] in ("True", "False")

    summary = (out / "summary.md").read_text()
    assert "## digits, step budget, mlp" in summary and "| 5 % | 10 % |" in summary
    assert "Paired difference to uniform, final accuracy" in summary
    diffs = paired_differences(rows, "final_acc")[("digits, step budget", "mlp", "lcmat(rho=1.0)", 0.1)]
    by = {(r["method"], r["seed"]): r["final_acc"] for r in rows if r["fraction"] == 0.1}
    assert diffs == pytest.approx({s: by[("lcmat", s)] - by[("uniform", s)] for s in (0, 1)})
    mean, std = np.mean(list(diffs.values())), np.std(list(diffs.values()), ddof=1)
    wins = sum(v > 0 for v in diffs.values())
    assert f"{mean:+.2f} ± {std:.2f} ({wins}/2)" in summary

    assert (out / "accuracy.png").read_bytes()[:8] == PNG_MAGIC
    log = json.loads((out / "selection_models.json").read_text())
    assert sorted(log) == ["digits/mlp/e1/s0", "digits/mlp/e1/s1"]

    # --summary-only rewrites the report from the CSV alone.
    (out / "summary.md").unlink()
    (out / "accuracy.png").unlink()
    assert main(["experiment", "--out", str(out), "--summary-only"]) == 0
    assert (out / "summary.md").read_text() == summary
    assert (out / "accuracy.png").is_file()


def test_resume_skips_done_rows(tmp_path, monkeypatch):
    trainings = spy(monkeypatch, experiment, "train_on_coreset")
    pretrainings = spy(monkeypatch, experiment, "train_selection_model")
    out = tmp_path / "run"
    settings = dict(dataset="digits", model="mlp", methods=["uniform", "el2n", "forgetting"], fractions=[0.1],
                    out_dir=out, selection_epochs=1, epochs=None, steps=4, evaluations=1, progress=False,
                    log=lambda *a: None)

    run_experiment(seeds=[0], **settings)
    assert len(trainings) == 3 and len(pretrainings) == 1

    with pytest.raises(ValueError, match="already exists"):
        run_experiment(seeds=[0], **settings)
    with pytest.raises(ValueError, match="steps"):
        run_experiment(seeds=[0], resume=True, **dict(settings, steps=5))

    rows = run_experiment(seeds=[0, 1], resume=True, **settings)  # only seed 1 is new
    assert len(trainings) == 6 and len(pretrainings) == 2
    assert {(r["method"], r["seed"]) for r in rows} == {(m, s) for m in ("uniform", "el2n", "forgetting")
                                                       for s in (0, 1)}

    # Drop one finished row: resume trains exactly that one, from the cached selection model.
    path = out / "results.csv"
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not (line.startswith("digits,mlp,el2n,") and ",0.1,0," in line)]
    assert len(kept) == len(lines) - 1
    path.write_text("".join(kept))
    run_experiment(seeds=[0, 1], resume=True, **settings)
    assert len(trainings) == 7 and len(pretrainings) == 2
    assert len(read_results(path)) == 6

    run_experiment(seeds=[0], overwrite=True, **settings)
    assert len(read_results(path)) == 3 and len(pretrainings) == 2  # checkpoints are reused


def test_uniform_only_runs_need_no_selection_model(tmp_path, monkeypatch):
    pretrainings = spy(monkeypatch, experiment, "train_selection_model")
    rows = run_experiment("digits", "mlp", ["uniform"], [0.1], [3], tmp_path, selection_epochs=1, epochs=2,
                          progress=False, log=lambda *a: None)
    assert len(rows) == 1 and rows[0]["epochs"] == 2 and rows[0]["steps"] is None and not pretrainings


def test_coverage_and_global_budget_variants_run_as_their_selectors(tmp_path, monkeypatch):
    """uniform:coverage=True (CCS) needs the selection model's logits for its strata; balance=False
    is a method option; each row's coreset is the selector's own on the same features."""
    pretrainings = spy(monkeypatch, experiment, "train_selection_model")
    expected = {
        "uniform": lambda: lcmat.Uniform(0.2, seed=0),
        "uniform(coverage=True prune_hard=0.2)": lambda: lcmat.Uniform(0.2, seed=0, coverage=True, prune_hard=0.2),
        "el2n(balance=False)": lambda: lcmat.EL2N(0.2, seed=0, balance=False),
        "fdmat(balance=False coverage=True)": lambda: lcmat.FDMat(0.2, seed=0, balance=False, coverage=True),
    }
    original, checked = experiment.select_coreset, []

    def check_selection(spec, fraction, seed, labels, features, stats, backend, *rest):
        coreset, seconds = original(spec, fraction, seed, labels, features, stats, backend, *rest)
        H, Z = (None, None) if features is None else features.eval_mode()[:2]
        want = expected[spec.label]().select_features(embeddings=H, logits=Z, labels=labels)
        np.testing.assert_array_equal(coreset.indices, want.indices)
        checked.append((spec.label, coreset.indices))
        return coreset, seconds

    monkeypatch.setattr(experiment, "select_coreset", check_selection)
    rows = run_experiment("digits", "mlp", [m.replace("(", ":").replace(")", "").replace(" ", ":")
                                            for m in expected], [0.2], [0], tmp_path, selection_epochs=1,
                          epochs=None, steps=2, evaluations=1, progress=False, log=lambda *a: None)
    assert len(pretrainings) == 1 and [label for label, _ in checked] == list(expected)
    assert [(r["method"], r["options"]) for r in rows] == [
        ("uniform", ""), ("uniform", "coverage=True prune_hard=0.2"), ("el2n", "balance=False"),
        ("fdmat", "balance=False coverage=True")]
    assert not np.array_equal(checked[0][1], checked[1][1])  # the strata change the random picks
    assert rows[2]["n_selected"] == round(0.2 * len(load_dataset("digits", "train")))


def test_bad_arguments_fail_before_any_training(tmp_path, monkeypatch):
    trainings = spy(monkeypatch, experiment, "train_on_coreset")
    common = dict(out_dir=tmp_path, selection_epochs=1, steps=2, progress=False, log=lambda *a: None)
    with pytest.raises(ValueError, match="fraction: 0.001 gives class"):
        run_experiment("digits", "mlp", ["uniform"], [0.1, 0.001], [0], **common)
    with pytest.raises(ValueError, match="unknown method"):
        run_experiment("digits", "mlp", ["uniform", "lcmatt"], [0.1], [0], **common)
    with pytest.raises(ValueError, match="unknown model"):
        run_experiment("digits", "mlpp", ["uniform"], [0.1], [0], **common)
    with pytest.raises(ValueError, match="seeds"):
        run_experiment("digits", "mlp", ["uniform"], [0.1], [0, 0], **common)
    with pytest.raises(ValueError, match="steps"):
        run_experiment("digits", "mlp", ["uniform"], [0.1], [0], **dict(common, steps=0))
    with pytest.raises(SystemExit, match="--epochs or --steps"):
        main(["experiment", "--preset", "cpu", "--epochs", "2", "--steps", "3", "--out", str(tmp_path)])
    assert not trainings


# --------------------------------------------------------------------------------------------------
# Arithmetic on a hand-made results file
# --------------------------------------------------------------------------------------------------

def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in RESULT_COLUMNS})


def hand_made_rows():
    def row(method, fraction, seed, final, best, options="", model="lenet"):
        return dict(dataset="fmnist", model=model, method=method, options=options, fraction=fraction, seed=seed,
                    n_selected=10, weighted=False, selection_epochs=10, epochs=5, steps=300, final_acc=final,
                    best_acc=best, selection_seconds=0.5, training_seconds=2.0)

    return [
        row("uniform", 0.01, 0, 50.0, 51.0), row("uniform", 0.01, 1, 52.0, 52.0), row("uniform", 0.01, 2, 54.0, 55.0),
        row("lcmat", 0.01, 0, 53.0, 53.0), row("lcmat", 0.01, 1, 51.0, 54.0), row("lcmat", 0.01, 2, 60.0, 60.0),
        row("lcmat", 0.01, 3, 99.0, 99.0),                     # no uniform row for seed 3: not paired
        row("lcmat", 0.01, 0, 49.0, 50.0, options="rho=1.0"),  # a variant, paired with seed 0 only
        row("uniform", 0.1, 0, 70.0, 71.0), row("fdmat", 0.1, 0, 68.5, 71.0),
        row("uniform", 0.01, 1, 10.0, 10.0, model="mlp"),     # another model: never paired with lenet
        row("lcmat", 0.01, 1, 11.0, 11.0, model="mlp"),
    ]


def test_paired_difference_arithmetic(tmp_path):
    path = tmp_path / "results.csv"
    write_csv(path, hand_made_rows())
    rows = read_results(path)

    final = paired_differences(rows, "final_acc")
    assert {key[0] for key in final} == {"fmnist, step budget"}  # the rows' protocol names their group
    final = {("fmnist",) + key[1:]: value for key, value in final.items()}
    assert final[("fmnist", "lenet", "lcmat", 0.01)] == {0: 3.0, 1: -1.0, 2: 6.0}
    assert final[("fmnist", "lenet", "lcmat(rho=1.0)", 0.01)] == {0: -1.0}
    assert final[("fmnist", "lenet", "fdmat", 0.1)] == {0: -1.5}
    assert final[("fmnist", "mlp", "lcmat", 0.01)] == {1: 1.0}
    assert not any(key[2] == "uniform" for key in final)
    best = {("fmnist",) + key[1:]: value for key, value in paired_differences(rows, "best_acc").items()}
    assert best[("fmnist", "lenet", "lcmat", 0.01)] == {0: 2.0, 1: 2.0, 2: 5.0}
    with pytest.raises(ValueError, match="metric"):
        paired_differences(rows, "acc")

    stats = {(s["model"], s["label"], s["fraction"]): s for s in summarize(rows)}
    uniform = stats[("lenet", "uniform", 0.01)]
    assert (uniform["n"], uniform["final_mean"], uniform["final_std"]) == (3, 52.0, 2.0)
    lcmat_stats = stats[("lenet", "lcmat", 0.01)]
    assert lcmat_stats["n"] == 4 and lcmat_stats["final_mean"] == pytest.approx((53 + 51 + 60 + 99) / 4)
    assert stats[("lenet", "fdmat", 0.1)]["final_std"] is None

    text = summary_markdown(rows)
    # diffs 3, -1, 6: mean 8/3, sample std sqrt(37/3), 2 wins of 3 pairs.
    assert f"| lcmat | +{8 / 3:.2f} ± {math.sqrt(37 / 3):.2f} (2/3) | - |" in text
    assert "| lcmat(rho=1.0) | -1.00 (0/1) | - |" in text
    assert "| fdmat | - | -1.50 (0/1) |" in text
    # Cells with fewer seeds than the section (4 here) show their count.
    assert "| uniform | 52.00 ± 2.00 (3) | 70.00 (1) |" in text
    assert "| lcmat | 65.75 ± 22.50 | - |" in text
    assert "## fmnist, step budget, lenet" in text and "## fmnist, step budget, mlp" in text


def test_plot_is_written_for_hand_made_rows(tmp_path):
    from lcmat.plots import plot_accuracy

    path = plot_accuracy([dict(r, options=r["options"] or "") for r in hand_made_rows()], tmp_path / "p.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_plot_legend_has_every_method_and_titles_name_the_trained_network(tmp_path, monkeypatch):
    """Herding is drawn only in the second setting's panels (mlp, selected with a convnet): the legend
    still lists it. That setting's titles say which network was trained."""
    from matplotlib.figure import Figure

    from lcmat.plots import plot_accuracy

    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: saved.append(fig))
    rows = [dict(r, options=r["options"] or "", protocol="epochs", steps=None) for r in hand_made_rows()]
    rows = [dict(r, selection_model="convnet") if r["model"] == "mlp" else r for r in rows]
    rows.append(dict(rows[-1], method="herding", final_acc=12.0, best_acc=12.0))
    plot_accuracy(rows, tmp_path / "p.png")
    fig, = saved
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["uniform", "lcmat", "lcmat(rho=1.0)", "fdmat", "herding"]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("fmnist, lenet, 4 seeds\n")
    assert titles[3].startswith("fmnist, selected with convnet, trained mlp, 1 seed\n")


def test_panel_title_keeps_a_percentage_on_one_line():
    from lcmat.plots import _panel_title

    # At width 60 a plain wrap breaks between "20" and "%" in this setting.
    setting = "fashion-mnist, pool 1000/class (pool seed 0), label noise 20 %, corruption seed 0, lenet"
    title = _panel_title(setting, "final-epoch test accuracy", width=60)
    lines = title.splitlines()
    assert not any(line.startswith("%") for line in lines)
    assert "20\u00a0%" in title
    assert lines[-1] == "final-epoch test accuracy"


# --------------------------------------------------------------------------------------------------
# Small pieces
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps,k,batch,expected", [
    (300, 300, 128, 100),   # 3 batches per epoch
    (300, 6000, 128, 7),    # 47 batches per epoch: 329 steps
    (300, 128, 128, 300),
    (300, 129, 128, 150),
    (1, 10_000, 128, 1),
])
def test_epochs_for_steps(steps, k, batch, expected):
    assert epochs_for_steps(steps, k, batch) == expected
    assert expected * math.ceil(k / batch) >= steps


def test_epochs_for_steps_rejects_bad_steps():
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="steps"):
            epochs_for_steps(bad, 10, 4)


def test_parse_model_option():
    assert parse_model_option("width=16") == ("width", 16)
    assert parse_model_option(" dropout = 0.5 ") == ("dropout", 0.5)
    assert parse_model_option("norm=instance") == ("norm", "instance")
    for bad in ["width", "=3", ""]:
        with pytest.raises(ValueError, match="model-option"):
            parse_model_option(bad)


def test_parse_methods_and_options():
    specs = parse_methods("all")
    assert [s.name for s in specs] == list(lcmat.METHODS) and all(not s.options for s in specs)
    specs = parse_methods(["LCMat-S", "lcmat:num_coords=5:mode=compat", "kCenterGreedy"], {"lcmat": {"rho": "2"}})
    assert [s.label for s in specs] == ["lcmat(rho=2.0)", "lcmat(mode=compat num_coords=5 rho=2.0)", "kcenter"]
    assert specs[1].options == {"rho": 2.0, "num_coords": 5, "mode": "compat"}
    assert parse_methods("craig:weights=false")[0].options == {"weights": False}
    assert parse_option("lcmat.rho=1") == ("lcmat", "rho", "1")
    with pytest.raises(ValueError, match="'lam' is not an option of lcmat"):
        parse_methods("lcmat:lam=3")
    with pytest.raises(ValueError, match="cannot read 'x' as int"):
        parse_methods("lcmat:num_coords=x")
    assert parse_methods("lcmat:rho=auto")[0].options == {"rho": "auto"}  # a word the selector takes
    with pytest.raises(ValueError, match="cannot read 'automatic' as float"):
        parse_methods("lcmat:rho=automatic")
    with pytest.raises(ValueError, match="more than once"):
        parse_methods("lcmat,LCMat")
    with pytest.raises(ValueError, match="METHOD.NAME=VALUE"):
        parse_option("rho=1")
    with pytest.raises(ValueError, match="unknown method"):
        parse_option("lcma.rho=1")


def test_demo_runs_from_any_directory_and_prints_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        assert main(["demo", "--methods", "uniform,el2n", "--seeds", "0,1", "--steps", "5",
                     "--selection-epochs", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "| 10 % | el2n | 143 |" in out and "/2 seeds)" in out  # paired over both seeds
    folder = tmp_path / "results" / "demo-digits"
    assert (folder / "accuracy.png").read_bytes()[:8] == PNG_MAGIC
    assert len(read_results(folder / "results.csv")) == 8  # 2 methods x 2 fractions x 2 seeds


def test_deepfool_attacks_once_per_seed_for_every_fraction(tmp_path, monkeypatch):
    import lcmat
    attacks = []
    attack = lcmat.DeepFool.attack_scores
    monkeypatch.setattr(lcmat.DeepFool, "attack_scores", lambda self, *a: attacks.append(1) or attack(self, *a))
    rows = run_experiment("digits", "mlp", ["deepfool", "deepfool:overshoot=0"], [0.05, 0.1], [0], tmp_path,
                          selection_epochs=1, epochs=1, evaluations=1, progress=False, log=lambda *a: None)
    assert len(rows) == 4 and len(attacks) == 2  # one attack per variant, reused by both fractions
    assert all(float(r["selection_seconds"]) > 0 for r in rows)


# --------------------------------------------------------------------------------------------------
# Condensation methods as rows beside the selectors
# --------------------------------------------------------------------------------------------------

CONDENSE_FAST = "iterations=2:width=4:outer_loop=2:net_steps=1:batch_real=4:batch_net=16"


def test_cli_experiment_condensation_rows_beside_selection(tmp_path, digits_counts, capsys):
    """lcmat_c and dm learn round(f n_c) images per class where that is one number for every class
    (2 %: 3 per class on digits), not where the classes' budgets differ (10 %: 14 or 15); their rows
    say kind=condensation and augment=dsa, are paired with Uniform, and are marked in the summary."""
    assert set(class_budgets(digits_counts, 0.02)) == {3} and len(set(class_budgets(digits_counts, 0.1))) > 1
    out = tmp_path / "run"
    argv = ["experiment", "--dataset", "digits", "--model", "mlp", "--fractions", "0.02,0.1", "--seeds", "0",
            "--methods", f"uniform,lcmat-c:{CONDENSE_FAST},dm:iterations=2:width=4", "--steps", "6",
            "--selection-epochs", "1", "--evaluations", "1", "--device", "cpu", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "rows at 2 % (3 per class); none at 10 % (the classes' budgets differ there" in printed

    rows = read_results(out / "results.csv")
    by = {(r["method"], r["fraction"]): r for r in rows}
    assert set(by) == {("uniform", 0.02), ("uniform", 0.1), ("lcmat_c", 0.02), ("dm", 0.02)}
    for method in ("lcmat_c", "dm"):
        r = by[(method, 0.02)]
        assert (r["kind"], r["augment"], r["n_selected"], r["weighted"]) == ("condensation", "dsa", 30, "False")
        assert r["selection_seconds"] > 0 and r["model"] == "mlp" and r["steps"] == 6
    assert by[("uniform", 0.02)]["kind"] == "selection" and by[("uniform", 0.02)]["augment"] == "none"
    # LCMat-C's multi-formation (factor 2) trains on 4 x 30 decoded images: epochs from that count
    assert by[("lcmat_c", 0.02)]["epochs"] == experiment.epochs_for_steps(6, 120, 128)
    assert by[("dm", 0.02)]["epochs"] == experiment.epochs_for_steps(6, 30, 128)

    diffs = paired_differences(rows, "final_acc")
    key = ("digits, step budget", "mlp", "lcmat_c(batch_net=16 batch_real=4 iterations=2 net_steps=1 outer_loop=2 "
                                          "width=4)", 0.02)
    assert diffs[key] == pytest.approx({0: by[("lcmat_c", 0.02)]["final_acc"] - by[("uniform", 0.02)]["final_acc"]})
    summary = (out / "summary.md").read_text()
    assert "‡ condensation (kind = condensation)" in summary and "Condensation rows at 2 %; none at 10 %" in summary
    assert "| dm(iterations=2 width=4) ‡ |" in summary and "| uniform |" in summary
    assert sorted(p.name for p in (out / "condensed").iterdir()) == [
        "digits-dm-iterations=2_width=4-ipc3-s0.pt",
        "digits-lcmat_c-batch_net=16_batch_real=4_iterations=2_net_steps=1_outer_loop=2_width=4-ipc3-s0.pt"]


def test_condensation_rows_resume_and_use_the_cached_set(tmp_path, monkeypatch):
    from lcmat.condense.methods import Condenser

    condensations = []
    original = Condenser.condense

    def counted(self, *args, **kwargs):
        condensations.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Condenser, "condense", counted)
    trainings = spy(monkeypatch, experiment, "train_on_coreset")
    pretrainings = spy(monkeypatch, experiment, "train_selection_model")
    out = tmp_path / "run"
    settings = dict(dataset="digits", model="mlp", methods=["uniform", "dm:iterations=2:width=4"],
                    fractions=[0.02], out_dir=out, selection_epochs=1, epochs=None, steps=3, evaluations=1,
                    progress=False, log=lambda *a: None)
    first = run_experiment(seeds=[0, 1], **settings)
    assert condensations == ["dm", "dm"] and len(trainings) == 4 and not pretrainings  # uniform + dm need none
    assert sorted(p.name for p in (out / "condensed").iterdir()) == [
        "digits-dm-iterations=2_width=4-ipc3-s0.pt", "digits-dm-iterations=2_width=4-ipc3-s1.pt"]

    run_experiment(seeds=[0, 1], resume=True, **settings)  # nothing left to do
    assert len(condensations) == 2 and len(trainings) == 4

    # a lost row is retrained from the cached synthetic set, which is not learnt again
    path = out / "results.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line for line in lines if not line.startswith("digits,mlp,dm,") or ",0.02,1," not in line))
    rows = run_experiment(seeds=[0, 1], resume=True, **settings)
    assert len(condensations) == 2 and len(trainings) == 5
    old = {(r["method"], r["seed"]): r["final_acc"] for r in first}
    new = {(r["method"], r["seed"]): r["final_acc"] for r in rows}
    assert new == old  # the same synthetic set, the same initial weights, the same DSA draws

    # another setting of the method is another set
    run_experiment(seeds=[0], resume=True, **dict(settings, methods=["dm:iterations=3:width=4"]))
    assert len(condensations) == 3


def test_condensation_methods_parse_as_their_kind():
    specs = parse_methods("uniform,LCMat-C:rho=0,dsa,dm:preset=paper", {"lcmat_c": {"factor": "1"}})
    assert [(s.name, s.kind) for s in specs] == [("uniform", "selection"), ("lcmat_c", "condensation"),
                                                ("dsa", "condensation"), ("dm", "condensation")]
    assert specs[1].options == {"rho": 0.0, "factor": 1} and specs[3].options == {"preset": "paper"}
    assert not [s for s in parse_methods("all") if s.kind == "condensation"]  # 'all' is the selectors
    with pytest.raises(ValueError, match="'rhoo' is not an option of lcmat_c"):
        parse_methods("lcmat_c:rhoo=1")
    with pytest.raises(ValueError, match="condensation method, not a selector"):
        lcmat.methods.get_method("dm", fraction=0.1)
    with pytest.raises(SystemExit):
        main(["select", "--method", "lcmat-c", "--features", "x.npz", "--fraction", "0.1", "--out", "y"])


def test_rows_without_kind_read_as_selection_or_ceiling(tmp_path):
    header = ("dataset,model,method,options,fraction,seed,n_selected,weighted,selection_epochs,epochs,steps,"
              "batch_size,lr,final_acc,best_acc,selection_seconds,training_seconds\n")
    path = tmp_path / "results.csv"
    path.write_text(header + "digits,mlp,uniform,,0.1,0,18,False,1,1,,128,0.1,50.0,51.0,0.0,1.0\n"
                    + "digits,mlp,full,,1,0,1438,False,1,1,,128,0.1,90.0,91.0,0.0,1.0\n")
    uniform, full = read_results(path)
    assert (uniform["kind"], full["kind"], uniform["augment"]) == ("selection", "full", None)
    text = path.read_text().replace(header.strip(), header.strip() + ",kind")
    path.write_text(text.replace("1.0\n", "1.0,selected\n"))
    with pytest.warns(RuntimeWarning, match="unknown kind 'selected'"):
        assert read_results(path) == []
