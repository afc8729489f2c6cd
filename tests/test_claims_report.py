"""bench/claims_report.py on hand-made results files: per-claim tables of paired differences (bold rule,
wins/seeds), partial results, the ceiling, the paper's Table 1 beside ours, and no pairs across hosts."""
import numpy as np
import pytest

from helpers import load_bench_script
from lcmat.results import append_row

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report():
    return load_bench_script("claims_report")


def row(method, fraction, seed, final, best=None, options="", host="h1", **extra):
    values = dict(dataset="cifar10", model="convnet(width=32)", method=method, options=options, fraction=fraction,
                  seed=seed, n_selected=50, weighted=False, selection_model="convnet(width=32)", protocol="epochs",
                  selection_epochs=10, epochs=50, steps=None, batch_size=128, lr=0.05, imbalance=1.0,
                  label_noise=0.0, corruption_seed=0, pool=None, pool_seed=None, final_acc=final,
                  best_acc=final if best is None else best, selection_seconds=1.0, training_seconds=2.0,
                  host=host, date=f"2026-12-0{6 + seed}T10:00:00Z")
    values.update(extra)
    return values


def write(folder, rows):
    folder.mkdir(parents=True)
    for r in rows:
        append_row(folder / "results.csv", r)


@pytest.fixture()
def runs(tmp_path):
    runs = tmp_path / "runs"
    uniform = {0.001: [20.0, 22.0, 21.0], 0.01: [35.0, 36.0, 34.0]}
    lcmat = {0.001: [24.0, 25.0, 23.0], 0.01: [36.0, 35.0, 37.0]}   # 0.1 %: +4, +3, +2 (bold); 1 %: +1, -1, +3
    adacore = {0.001: [23.0, 26.0, 20.0], 0.01: [36.0]}             # 1 %: one seed only (in progress)
    rows = []
    for f in (0.001, 0.01):
        for s in range(3):
            rows += [row("uniform", f, s, uniform[f][s]), row("lcmat", f, s, lcmat[f][s], best=lcmat[f][s] + 1)]
        rows += [row("adacore", f, s, v) for s, v in enumerate(adacore[f])]
    rows.append(row("herding", 0.001, 0, 99.0, host="h2"))  # another host: never paired with h1's Uniform
    write(runs / "table1-c10-convnet", rows)
    write(runs / "table1-c10-convnet-ceiling", [row("full", 1.0, 0, 80.0, best=81.0, n_selected=50000)])
    # The same ceiling run again in a later folder (e.g. an older plan that listed it): counted once.
    write(runs / "table1-c10-convnet-zz-older", [row("full", 1.0, 0, 70.0, n_selected=50000, host="")])
    noisy = dict(dataset="fashion-mnist", model="lenet", selection_model="lenet", pool=1000, pool_seed=0,
                 label_noise=0.2)
    write(runs / "robust-fm-pool1000-noise0.2",
          [row("uniform", 0.05, s, 70.0 + s, **noisy) for s in range(3)]
          + [row("fdmat", 0.05, s, 60.0 + s, **noisy) for s in range(3)]
          + [row("kcenter", 0.05, s, 71.0 + s, **noisy) for s in range(3)]
          + [row("margin", 0.05, s, 50.0 + s, **noisy) for s in range(3)]
          + [row("full", 1.0, s, 85.0, **noisy) for s in range(3)])
    mnist = dict(dataset="mnist", model="lenet", selection_model="lenet", pool=1000, pool_seed=0)
    write(runs / "coverage-mnist-pool1000-heldout",
          [row("uniform", 0.1, s, 90.0, **mnist) for s in range(2)]
          + [row("uniform", 0.1, s, 90.5 - s, options="coverage=True", **mnist) for s in range(2)])
    (runs / "unrelated").mkdir()
    return runs


def test_folders_of_two_epoch_counts_are_neither_merged_nor_paired(report, tmp_path):
    """A claim run twice on one setting, 50 and 200 epochs per coreset: two tables, each paired
    within itself, titled with their epochs; the second folder's rows are not taken as duplicates."""
    fm = dict(dataset="fashion-mnist", model="lenet", selection_model="lenet", pool=1000, pool_seed=0)
    runs = tmp_path / "runs"
    write(runs / "coverage-fm-pool1000",
          [row("uniform", 0.05, s, 76.0, **fm) for s in range(2)]
          + [row("uniform", 0.05, s, 75.0, options="coverage=True", **fm) for s in range(2)])
    write(runs / "coverage-fm-pool1000-e200",
          [row("uniform", 0.05, s, 78.0, epochs=200, **fm) for s in range(2)]
          + [row("uniform", 0.05, s, 80.0 + s, options="coverage=True", epochs=200, **fm) for s in range(2)])
    text = report.claims_report(runs, plot=False)
    assert "### fashion-mnist, pool 1000/class (pool seed 0), lenet, 50 epochs" in text
    assert "### fashion-mnist, pool 1000/class (pool seed 0), lenet, 200 epochs" in text
    assert "| uniform(coverage=True) | -1.00 ± 0.00 (0/2) |" in text        # 50 epochs: 75 - 76
    assert "| uniform(coverage=True) | **+2.50 ± 0.71 (2/2)** |" in text    # 200 epochs: 80, 81 - 78


def test_report_tables_on_partial_results(report, runs, tmp_path):
    text = report.claims_report(runs, tmp_path / "plots", report_dir=tmp_path)
    # Claim 1: Uniform's accuracy with its seeds, paired differences, bold only for the clear win.
    assert "| uniform (final accuracy, %, (seeds)) | 21.00 ± 1.00 (3) | 35.00 ± 1.00 (3) |" in text
    d = np.array([4.0, 3.0, 2.0])
    assert f"| lcmat | **{d.mean():+.2f} ± {d.std(ddof=1):.2f} (3/3)** | +1.00 ± 2.00 (2/3) |" in text
    assert "| adacore | +2.00 ± 2.65 (2/3) | +1.00 (1/1) |" in text  # one seed so far: no std
    assert "| herding |" in text and "| herding | -" in text  # h2's row has no h1 Uniform to pair with
    # Best accuracy is its own table.
    assert f"| lcmat | **{d.mean() + 1:+.2f} ± {d.std(ddof=1):.2f} (3/3)** | +2.00 ± 2.00 (2/3) |" in text
    # The ceiling from its own folder, on fewer seeds than the methods, says so.
    assert "Ceiling (`full`, every training sample of this setting, 50000 samples, same protocol): final 80.00 %, best 81.00 % " \
           "over 1 seed(s); the methods have 3 seed(s)" in text
    # The paper beside ours, and the ranking.
    assert "| uniform | 20.42 | 21.00 (3) | 36.47 | 35.00 (3) |" in text
    assert "| cdiv |  | - |  | - |" in text  # not found in the paper sources: blank
    assert "| LCMat-S − Uniform (ours paired, wins/seeds) | +3.45 | **+4.00 ± 1.00 (3/3)** | +3.07 |" in text
    assert "- 0.1 %: LCMat-S is first; over Uniform **+3.00 ± 1.00 (3/3)**, over AdaCore +1.00 ± 2.00 (2/3)" in text
    assert "- 1 %: LCMat-S is first" in text
    # Claim 2 has no run; claim 3 says plainly whether FDMat beats Uniform; claim 4 names the held-out set.
    assert "## Claim 2. LCMat across architectures: select with one network, train another\n\nNo runs yet." in text
    assert "### fashion-mnist, pool 1000/class (pool seed 0), label noise 20 %, corruption seed 0, lenet" in text
    assert "- fdmat: 5 % loses to Uniform (-10.00 ± 0.00, 0/3 seeds won)." in text
    assert ("| fashion-mnist, pool 1000/class (pool seed 0), label noise 20 %, corruption seed 0, lenet | 5 % | "
            "-10.00 ± 0.00 (0/3) | - | - | - | - | kcenter **+1.00 ± 0.00 (3/3)** |") in text  # the better of two others
    assert "Ceiling (`full`, every training sample of this setting, 50 samples, same protocol): final 85.00 % over" not in text
    assert "final 85.00 ± 0.00 %, best 85.00 ± 0.00 % over 3 seed(s)." in text
    assert "(the held-out dataset: no setting was chosen on it)" in text
    assert "- uniform(coverage=True): 10 % within the seed spread of Uniform (+0.00 ± 0.71, 1/2 seeds won)." in text
    assert "host(s) h1, h2" in text and "written 2026-12-06 to 2026-12-08" in text
    # One plot per claim that has runs, linked relative to the report.
    for number in ("1", "3", "4"):
        assert (tmp_path / "plots" / f"claim{number}.png").read_bytes()[:8] == PNG_MAGIC
        assert f"![claim {number}](plots/claim{number}.png)" in text
    assert not (tmp_path / "plots" / "claim2.png").exists()


def test_report_on_no_runs_and_the_command_line(report, runs, tmp_path, monkeypatch, capsys):
    empty = report.claims_report(tmp_path / "nothing", plot=False)
    assert empty.count("No runs yet.") == 4
    out = tmp_path / "REPORT.md"
    monkeypatch.setattr("sys.argv", ["claims_report.py", "--runs", str(runs), "--out", str(out), "--no-plots"])
    report.main()
    assert out.read_text().startswith("# The claims of issue 18")
    assert "![claim" not in out.read_text()


def test_claim2_sets_selection_with_the_trained_network_beside_selection_with_another(report, tmp_path):
    """Two folders train LeNet on one pool, one selecting with LeNet, one with the MLP: two tables (never
    merged: the same method, fraction and seed in both), and one table with the two side by side."""
    fm = dict(dataset="fashion-mnist", model="lenet", pool=1000, pool_seed=0)
    runs = tmp_path / "runs"
    for selector, lcmat in (("lenet", [82.0, 83.0]), ("mlp", [79.0, 81.0])):
        write(runs / f"arch-fm-pool1000-{selector}-to-lenet",
              [row("uniform", 0.05, s, 80.0, selection_model=selector, **fm) for s in range(2)]
              + [row("lcmat", 0.05, s, lcmat[s], selection_model=selector, **fm) for s in range(2)])
    text = report.claims_report(runs, plot=False)
    assert "### fashion-mnist, pool 1000/class (pool seed 0), lenet\n" in text
    assert "### fashion-mnist, pool 1000/class (pool seed 0), selected with mlp, trained lenet\n" in text
    assert "Trained lenet on fashion-mnist, pool 1000/class (pool seed 0): the coreset selected with" in text
    assert "| lcmat | lenet (itself) | **+2.50 ± 0.71 (2/2)** |" in text   # 82, 83 - 80
    assert "| lcmat | mlp | +0.00 ± 1.41 (1/2) |" in text                 # 79, 81 - 80


def test_claim4_recommends_only_what_wins_on_both_tuning_datasets_and_the_held_out_one(report, tmp_path):
    """coverage=True wins every seed on Fashion-MNIST and CIFAR-10 at 5 and 10 % and not on both at 20 %;
    on the held-out MNIST it wins at 5 % (a recommendation) and not at 10 % (none)."""
    runs = tmp_path / "runs"
    gains = {"fashion-mnist": {0.05: [1.0, 1.5], 0.1: [2.0, 3.0], 0.2: [1.0, -1.0]},
             "cifar10": {0.05: [2.0, 2.5], 0.1: [1.0, 2.0], 0.2: [2.0, 3.0]},
             "mnist": {0.05: [1.0, 2.0], 0.1: [-1.0, 0.5], 0.2: [1.0, 1.0]}}
    for name, by_fraction in gains.items():
        data = dict(dataset=name, model="lenet", selection_model="lenet", pool=1000, pool_seed=0)
        rows = []
        for f, values in by_fraction.items():
            rows += [row("uniform", f, s, 50.0, **data) for s in range(2)]
            rows += [row("uniform", f, s, 50.0 + v, options="coverage=True", **data) for s, v in enumerate(values)]
        write(runs / f"coverage-{name}-pool1000", rows)
    text = report.claims_report(runs, plot=False)
    assert "Chosen on fashion-mnist, cifar10 (50 epochs per coreset)" in text or \
           "Chosen on cifar10, fashion-mnist (50 epochs per coreset)" in text
    assert ("- 10 %: uniform(coverage=True); on mnist within the seed spread of Uniform (-0.25 ± 1.06, 1/2 seeds "
            "won): not a recommendation.") in text
    assert ("- 5 %: uniform(coverage=True); on mnist beats Uniform (+1.50 ± 0.71, 2/2 seeds won): a "
            "recommendation.") in text
    assert "- 20 %: none." in text  # fashion-mnist lost a seed at 20 %: not chosen, whatever mnist says
