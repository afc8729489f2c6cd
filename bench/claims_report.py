"""The report of issue 18's claims: per-claim tables and plots from the runs of run_claims.sh.

    python bench/claims_report.py                      # bench/results/claims/runs -> REPORT.md, claim*.png
    python bench/claims_report.py --runs DIR --out FILE --plots DIR

Reads every ``results.csv`` under the runs folder (one folder per run; the folder's name says its claim:
``table1-*`` claim 1, ``arch-*`` claim 2, ``robust-*`` claim 3, ``coverage-*`` claim 4) and writes, per claim
and per setting (the dataset as trained, with its pool and corruption, and the trained network), one table
per metric (final, then best test accuracy): Uniform's accuracy, then each method's paired difference to
Uniform (same seed, same selection model, same initial weights, same host) as mean ± sample std over
seeds and wins/seeds; **bold** only where every seed won and the mean exceeds the std. The ceiling
(``full``, the whole training set under the same protocol) is given under each table with its seeds.
Claim 1 also gets the LCMat paper's figures beside ours and the ranking compared; claim 2 each method
selected with the trained network itself beside selected with another; claim 3 one summary
table across the corrupted settings and a plain verdict on FDMat against Uniform; claim 4 the same for the coverage settings, with the held-out dataset named, and
which settings win on both tuning datasets and whether they also win on the held-out one.

Partial results are expected (the study runs for days): every cell says over how many seeds it is, a
method or seed missing is left out, and rows written on two different hosts are never paired
(:func:`lcmat.results.paired_differences`). A folder's results are read tolerantly (torn rows skipped).
"""
import argparse
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from lcmat.results import (BASELINE, FULL, RESULTS_FILE, paired_differences, read_results, row_label,
                           setting_label, setting_title, summarize)

CLAIMS = (
    ("1", "table1-", "LCMat Table 1: CIFAR-10 at 0.1, 0.5, 1, 5, 10 %"),
    ("2", "arch-", "LCMat across architectures: select with one network, train another"),
    ("3", "robust-", "FDMat's robustness: label noise and class imbalance"),
    ("4", "coverage-", "The coverage finding: coverage=True against Uniform at 5-20 %"),
)
HELD_OUT = "mnist"  # claim 4's held-out dataset: no setting is chosen on it

# The LCMat paper (Shin et al., AISTATS 2023, arXiv 2303.04449), Table 1: CIFAR-10, ResNet-18, 200 epochs
# per coreset, mean test accuracy (%) over 5 seeds. Only the rows found in the sources available to this
# project are filled (docs/quality.md and BENCHMARKS.md 4.2 quote them); the other methods of the table
# are left blank rather than guessed.
PAPER_FRACTIONS = (0.001, 0.005, 0.01, 0.05, 0.1)
PAPER_TABLE1 = {
    "uniform": (20.42, 31.98, 36.47, 64.21, 77.45),
    "lcmat": (23.87, 33.17, 39.54, 64.72, 77.41),
}
PAPER_METHODS = ("uniform", "cdiv", "herding", "kcenter", "least_confidence", "margin", "entropy", "forgetting",
                 "grand", "cal", "deepfool", "craig", "gradmatch", "glister", "adacore", "graphcut", "lcmat")
SMALL_FRACTIONS = (0.001, 0.005, 0.01)
METRICS = (("final_acc", "final"), ("best_acc", "best"))


# --------------------------------------------------------------------------------------------------
# Reading the runs
# --------------------------------------------------------------------------------------------------

def claim_of(folder_name):
    for number, prefix, _ in CLAIMS:
        if folder_name.startswith(prefix):
            return number
    return None


def discover(runs_dir):
    """{claim number: [(folder name, rows)]} for every folder of runs_dir holding a results.csv."""
    found = {}
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return found
    for path in sorted(runs_dir.glob(f"*/{RESULTS_FILE}")):
        claim = claim_of(path.parent.name)
        if claim is None:
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = read_results(path)
        if caught:
            print(f"{path}: {caught[0].message}")
        found.setdefault(claim, []).append((path.parent.name, rows))
    return found


def setting_key(row):
    """What makes two rows comparable here: the dataset as trained, the network and the epochs per
    coreset (one folder has one epoch count; two folders of one claim may differ in it)."""
    return setting_label(row), row["model"], row.get("epochs")


def merged_rows(folders):
    """The rows of several folders as one list. A run present in two folders (same setting, model,
    epochs, method, fraction and seed, e.g. a ceiling run both with the methods and in its own stage)
    counts once: the first folder's row, in folder-name order."""
    rows, seen = [], set()
    for _, folder_rows in folders:
        for row in folder_rows:
            key = (*setting_key(row), row_label(row), float(row["fraction"]), int(row["seed"]))
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------

def difference_stats(values):
    """(mean, sample std or None, wins, seeds) of per-seed differences."""
    a = np.asarray(values, dtype=np.float64)
    std = float(a.std(ddof=1)) if len(a) > 1 else None
    return float(a.mean()), std, int((a > 0).sum()), len(a)


def clear_win(values):
    """Every seed won and the mean exceeds the sample std (needs two seeds at least)."""
    mean, std, wins, n = difference_stats(values)
    return n > 1 and wins == n and mean > std


def clear_loss(values):
    mean, std, wins, n = difference_stats(values)
    return n > 1 and wins == 0 and all(v < 0 for v in values) and -mean > std


def difference_cell(values):
    if not values:
        return "-"
    mean, std, wins, n = difference_stats(values)
    text = f"{mean:+.2f}" + ("" if std is None else f" ± {std:.2f}") + f" ({wins}/{n})"
    return f"**{text}**" if clear_win(values) else text


def accuracy_cell(stat, prefix):
    if stat is None:
        return "-"
    mean, std = stat[prefix + "_mean"], stat[prefix + "_std"]
    return f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}") + f" ({stat['n']})"


def fraction_header(fraction):
    return f"{100 * fraction:g} %"


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------

class Setting:
    """The rows of one setting_key (dataset as trained, model, epochs): summaries and paired
    differences, both metrics."""

    def __init__(self, rows, name_epochs=False):
        self.rows = rows
        self.dataset, self.model = setting_label(rows[0]), rows[0]["model"]
        self.epochs = rows[0].get("epochs") if name_epochs else None
        stats = summarize(rows)
        self.stats = {(s["label"], s["fraction"]): s for s in stats}
        self.ceiling = next((s for s in stats if s["label"] == FULL), None)
        methods = [s for s in stats if s["label"] != FULL]
        self.fractions = sorted({s["fraction"] for s in methods})
        labels = list(dict.fromkeys(s["label"] for s in methods))
        self.labels = ([BASELINE] if BASELINE in labels else []) + [l for l in labels if l != BASELINE]
        self.diffs = {metric: paired_differences(rows, metric) for metric, _ in METRICS}
        self.seeds = sorted({int(r["seed"]) for r in rows if r["method"] != FULL})
        self.hosts = sorted({r.get("host") or "unknown" for r in rows})
        dates = sorted(r["date"] for r in rows if r.get("date"))
        self.dates = (dates[0][:10], dates[-1][:10]) if dates else None

    def differences(self, label, fraction, metric="final_acc"):
        return list(self.diffs[metric].get((self.dataset, self.model, label, fraction), {}).values())

    def title(self):
        return setting_title(self.dataset, self.model) + (f", {self.epochs} epochs" if self.epochs is not None else "")

    def facts(self):
        parts = [f"seeds {', '.join(map(str, self.seeds)) or '-'}", f"{len(self.rows)} rows",
                 f"host(s) {', '.join(self.hosts)}"]
        if self.dates:
            parts.append(f"written {self.dates[0]}" + (f" to {self.dates[1]}" if self.dates[1] != self.dates[0] else ""))
        epochs = sorted({r["epochs"] for r in self.rows if r.get("epochs") is not None})
        if epochs:
            parts.append(f"epochs per coreset: {'/'.join(map(str, epochs))}")
        return "; ".join(parts)

    def table(self, metric, prefix):
        head = "| method | " + " | ".join(fraction_header(f) for f in self.fractions) + " |"
        lines = [head, "|---|" + "---:|" * len(self.fractions)]
        if BASELINE in self.labels:
            cells = [accuracy_cell(self.stats.get((BASELINE, f)), prefix) for f in self.fractions]
            lines.append(f"| {BASELINE} ({prefix} accuracy, %, (seeds)) | " + " | ".join(cells) + " |")
        for label in self.labels:
            if label == BASELINE:
                continue
            cells = [difference_cell(self.differences(label, f, metric)) for f in self.fractions]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return lines

    def ceiling_line(self):
        if self.ceiling is None:
            return "Ceiling (`full`, every training sample of this setting): not run yet."
        c = self.ceiling
        few = (f"; the methods have {len(self.seeds)} seed(s), so the ceiling is a reference, not a paired "
               f"comparison" if c["n"] < len(self.seeds) else "")
        final = f"{c['final_mean']:.2f}" + ("" if c["final_std"] is None else f" ± {c['final_std']:.2f}")
        best = f"{c['best_mean']:.2f}" + ("" if c["best_std"] is None else f" ± {c['best_std']:.2f}")
        return (f"Ceiling (`full`, every training sample of this setting, {c['n_selected']:.0f} samples, same "
                f"protocol): final {final} %, best {best} % over {c['n']} seed(s){few}.")


def settings_of(rows):
    """One Setting per setting_key; a title names the epochs where one (dataset, network) was trained
    for several epoch counts."""
    groups = {}
    for row in rows:
        groups.setdefault(setting_key(row), []).append(row)
    epoch_counts = Counter(key[:2] for key in groups)
    return [Setting(group, name_epochs=epoch_counts[key[:2]] > 1) for key, group in groups.items()]


def setting_section(setting):
    lines = [f"### {setting.title()}", "", setting.facts() + ".", ""]
    if not setting.labels:
        return lines + [setting.ceiling_line(), ""]
    for metric, prefix in METRICS:
        lines += [f"Paired difference to Uniform, {prefix} accuracy (points; wins/seeds):", ""]
        lines += setting.table(metric, prefix) + [""]
    return lines + [setting.ceiling_line(), ""]


def verdict(values):
    if not values:
        return "no paired seed yet"
    mean, std, wins, n = difference_stats(values)
    spread = "" if std is None else f" ± {std:.2f}"
    if clear_win(values):
        word = "beats Uniform"
    elif clear_loss(values):
        word = "loses to Uniform"
    else:
        word = "within the seed spread of Uniform"
    return f"{word} ({mean:+.2f}{spread}, {wins}/{n} seeds won)"


# --------------------------------------------------------------------------------------------------
# Claim-specific parts
# --------------------------------------------------------------------------------------------------

def paper_comparison(setting):
    """Claim 1: the paper's Table 1 beside our best accuracy (the paper reports the best epoch)."""
    fractions = [f for f in PAPER_FRACTIONS if f in setting.fractions] or list(PAPER_FRACTIONS)
    lines = [f"The LCMat paper's Table 1 (CIFAR-10, ResNet-18, 200 epochs, 5 seeds) beside ours ({setting.model}, "
             "best accuracy, mean over our seeds (seeds)); a blank paper cell is a number not found in the "
             "sources available here:", "",
             "| method | " + " | ".join(f"paper {fraction_header(f)} | ours {fraction_header(f)}" for f in fractions)
             + " |", "|---|" + "---:|---:|" * len(fractions)]
    for method in PAPER_METHODS:
        paper = PAPER_TABLE1.get(method)
        cells = []
        for f in fractions:
            cells.append("" if paper is None else f"{paper[PAPER_FRACTIONS.index(f)]:.2f}")
            stat = setting.stats.get((method, f))
            cells.append("-" if stat is None else f"{stat['best_mean']:.2f} ({stat['n']})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    paper_lcmat, paper_uniform = PAPER_TABLE1["lcmat"], PAPER_TABLE1["uniform"]
    cells = []
    for f in fractions:
        i = PAPER_FRACTIONS.index(f)
        cells.append(f"{paper_lcmat[i] - paper_uniform[i]:+.2f}")
        cells.append(difference_cell(setting.differences("lcmat", f, "best_acc")))
    lines.append("| LCMat-S − Uniform (ours paired, wins/seeds) | " + " | ".join(cells) + " |")
    return lines + [""]


def ranking(setting, metric="final_acc"):
    """Claim 1: the methods ordered by their mean paired difference to Uniform, per small fraction; where
    LCMat-S stands, and its margin over Uniform and over AdaCore (paired on the same seeds)."""
    lines = []
    over_adacore = paired_differences(setting.rows, metric, baseline="adacore")
    for f in [f for f in SMALL_FRACTIONS if f in setting.fractions]:
        means = {BASELINE: 0.0}
        for label in setting.labels:
            values = setting.differences(label, f, metric)
            if values and label != BASELINE:
                means[label] = float(np.mean(values))
        order = sorted(means, key=lambda l: -means[l])
        text = f"- {fraction_header(f)}: "
        if "lcmat" not in means:
            lines.append(text + "LCMat-S not paired with Uniform yet.")
            continue
        rank = order.index("lcmat") + 1
        first = ("first" if rank == 1 else
                 f"rank {rank} of {len(order)} (first: {order[0]}, {means[order[0]]:+.2f})")
        adacore = list(over_adacore.get((setting.dataset, setting.model, "lcmat", f), {}).values())
        lines.append(text + f"LCMat-S is {first}; over Uniform {difference_cell(setting.differences('lcmat', f, metric))}"
                     f", over AdaCore {difference_cell(adacore) if adacore else 'not paired yet'} (points, "
                     f"{metric.split('_')[0]} accuracy, wins/seeds).")
    if lines:
        paper = ("In the paper LCMat-S is first at 0.1, 0.5 and 1 % and above Uniform by +3.45, +1.19 and +3.07 "
                 "points (its other rows, AdaCore's included, were not found here: the margin over AdaCore in "
                 "the paper is not given).")
        lines = [f"Ranking by mean paired difference to Uniform ({setting.model}):", ""] + lines + ["", paper, ""]
    return lines


def verdict_lines(setting, labels, fractions=None):
    lines = []
    for label in labels:
        if label not in setting.labels:
            continue
        parts = [f"{fraction_header(f)} {verdict(setting.differences(label, f))}"
                 for f in (fractions or setting.fractions)]
        lines.append(f"- {label}: " + "; ".join(parts) + ".")
    return lines


def trained_on(setting):
    """The setting's data and network without the selecting network: settings that differ only in
    which network selected share it."""
    row = dict(setting.rows[0], selection_model=setting.model)
    return setting_label(row), setting.model, row.get("epochs")


def selected_with(setting):
    return setting.rows[0].get("selection_model") or setting.model


def transfer_tables(settings):
    """Claim 2: per trained network that was also selected with itself, each method's paired difference
    to Uniform when the coreset was selected with that network and when with another, side by side."""
    groups = {}
    for setting in settings:
        groups.setdefault(trained_on(setting), []).append(setting)
    lines = []
    for (dataset, model, _), members in groups.items():
        same = [s for s in members if selected_with(s) == model]
        others = [s for s in members if selected_with(s) != model]
        if not same or not others:
            continue
        ordered = same + others
        fractions = sorted({f for s in ordered for f in s.fractions})
        labels = list(dict.fromkeys(l for s in ordered for l in s.labels if l != BASELINE))
        lines += [f"Trained {model} on {dataset}: the coreset selected with the trained network itself, then "
                  f"with another (paired difference to Uniform, final accuracy, points; wins/seeds):", "",
                  "| method | selected with | " + " | ".join(fraction_header(f) for f in fractions) + " |",
                  "|---|---|" + "---:|" * len(fractions)]
        for label in labels:
            for s in ordered:
                if label not in s.labels:
                    continue
                who = selected_with(s) + (" (itself)" if s in same else "")
                cells = [difference_cell(s.differences(label, f)) for f in fractions]
                lines.append(f"| {label} | {who} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


ROBUST_COLUMNS = ("fdmat", "fdmat(coverage=True)", "lcmat", "lcmat(coverage=True)", "uniform(coverage=True)")


def robustness_summary(settings):
    """Claim 3: one row per corrupted setting and fraction, the paired difference to Uniform of FDMat,
    LCMat-S and coverage beside each other (final accuracy), and the best of the other methods."""
    rows = []
    for s in settings:
        for f in s.fractions:
            cells = [difference_cell(s.differences(label, f)) for label in ROBUST_COLUMNS]
            others = {l: np.mean(s.differences(l, f)) for l in s.labels
                      if l != BASELINE and l not in ROBUST_COLUMNS and s.differences(l, f)}
            best = max(others, key=others.get) if others else None
            cells.append("-" if best is None else f"{best} {difference_cell(s.differences(best, f))}")
            rows.append(f"| {s.title()} | {fraction_header(f)} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return (["Against Uniform under corruption (paired difference, final accuracy, points; wins/seeds):", "",
             "| setting | fraction | " + " | ".join(ROBUST_COLUMNS) + " | best other |",
             "|---|---|" + "---:|" * (len(ROBUST_COLUMNS) + 1)] + rows + [""])


def dataset_name(setting):
    return setting.rows[0]["dataset"]


def coverage_recommendations(settings):
    """Claim 4: the coverage settings that win on every tuning dataset (every seed, mean above the std,
    final accuracy) at a fraction, then what they do on the held-out dataset under the same epochs. A
    setting counts as a recommendation only where it also wins there."""
    lines = []
    for epochs in dict.fromkeys(s.rows[0].get("epochs") for s in settings):
        group = [s for s in settings if s.rows[0].get("epochs") == epochs]
        tuning = [s for s in group if not dataset_name(s).startswith(HELD_OUT)]
        held = [s for s in group if dataset_name(s).startswith(HELD_OUT)]
        if len({dataset_name(s) for s in tuning}) < 2:
            continue  # one tuning dataset (e.g. a single longer-training check): nothing to choose across
        names = ", ".join(dict.fromkeys(dataset_name(s) for s in tuning))
        labels = list(dict.fromkeys(l for s in tuning for l in s.labels if "coverage=True" in l))
        fractions = sorted({f for s in tuning for f in s.fractions})
        lines += [f"Chosen on {names} ({epochs} epochs per coreset): the coverage settings that beat Uniform on "
                  f"every one of them (every seed won, mean above the std), then the held-out {HELD_OUT}:", ""]
        for f in fractions:
            chosen = [l for l in labels
                      if all(l in s.labels and s.differences(l, f) and clear_win(s.differences(l, f)) for s in tuning)]
            if not chosen:
                lines.append(f"- {fraction_header(f)}: none.")
                continue
            for label in chosen:
                if not held or label not in held[0].labels:
                    outcome = f"not run on {HELD_OUT} yet"
                else:
                    values = held[0].differences(label, f)
                    outcome = (f"on {HELD_OUT} {verdict(values)}: "
                               + ("a recommendation" if values and clear_win(values) else "not a recommendation"))
                lines.append(f"- {fraction_header(f)}: {label}; {outcome}.")
        lines.append("")
    return lines


# The claims' tables across their settings, written before the per-setting sections.
CLAIM_SUMMARIES = {"2": transfer_tables, "3": robustness_summary, "4": coverage_recommendations}


def claim_extra(number, setting):
    if number == "1":
        return paper_comparison(setting) + ranking(setting)
    if number == "3":
        lines = verdict_lines(setting, ["fdmat", "fdmat(coverage=True)"])
        if lines:
            return [f"Does FDMat beat Uniform here (final accuracy)?", ""] + lines + [""]
    if number == "4":
        held = " (the held-out dataset: no setting was chosen on it)" if setting.dataset.startswith(HELD_OUT) else ""
        labels = [l for l in setting.labels if "coverage=True" in l]
        lines = verdict_lines(setting, labels)
        if lines:
            return [f"Does coverage keep beating Uniform (final accuracy){held}?", ""] + lines + [""]
    return []


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------

def plot_claim(rows, path):
    """The claim's accuracy curves; where its folders differ in epochs per coreset, those of the most
    common epoch count (the plot groups by dataset and network only)."""
    from lcmat.plots import plot_accuracy

    rows = [r for r in rows if r["method"] != FULL]
    if rows:
        most = Counter(r.get("epochs") for r in rows).most_common(1)[0][0]
        rows = [r for r in rows if r.get("epochs") == most]
    if not rows:
        return None
    return plot_accuracy(rows, path)


def claims_report(runs_dir, plots_dir=None, plot=True, report_dir=None):
    """The markdown of REPORT.md; writes claim<N>.png into plots_dir when plot is true (linked relative to
    report_dir, default plots_dir)."""
    found = discover(runs_dir)
    lines = ["# The claims of issue 18 under the papers' protocol", "",
             "Written by `bench/claims_report.py` from the runs of `bench/results/claims/run_claims.sh` "
             "(docs/experiments.md, \"The claims of issue 18\"). Cells: Uniform's test accuracy (mean ± sample "
             "std over seeds, (seeds)), then each method's paired difference to Uniform in points (per seed: "
             "method − Uniform on the same selection model, initial weights and host; mean ± sample std, "
             "wins/seeds). **Bold**: every seed won and the mean exceeds the std. A cell over fewer seeds than "
             "its neighbours is a run still in progress.", ""]
    for number, _, title in CLAIMS:
        lines += [f"## Claim {number}. {title}", ""]
        folders = found.get(number, [])
        if not folders:
            lines += ["No runs yet.", ""]
            continue
        lines += ["Runs: " + ", ".join(f"`{name}` ({len(rows)} rows)" for name, rows in folders) + ".", ""]
        rows = merged_rows(folders)
        if plot and plots_dir is not None:
            path = plot_claim(rows, Path(plots_dir) / f"claim{number}.png")
            if path is not None:
                link = os.path.relpath(path, report_dir or plots_dir)
                lines += [f"![claim {number}]({link})", ""]
        settings = settings_of(rows)
        summary = CLAIM_SUMMARIES.get(number)
        if summary is not None:
            lines += summary(settings)
        for setting in settings:
            lines += setting_section(setting)
            lines += claim_extra(number, setting)
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parent / "results" / "claims"
    parser.add_argument("--runs", default=str(here / "runs"), help="folder of the run folders")
    parser.add_argument("--out", default=str(here / "REPORT.md"), help="the markdown file to write")
    parser.add_argument("--plots", default=None, help="folder of the claim<N>.png plots (default: beside --out)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    plots = Path(args.plots) if args.plots else out.parent
    text = claims_report(args.runs, plots, plot=not args.no_plots, report_dir=out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
