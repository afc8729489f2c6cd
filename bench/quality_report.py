"""Tables and a plot for a chosen set of methods from one or more `lcmat experiment` results.csv files.

    python bench/quality_report.py results/study-fm/results.csv \
        --methods uniform,lcmat,lcmat:rho=1,lcmat:rho=1:coverage=True --plot docs/fm.png

Prints markdown: final-epoch accuracy (mean ± std over seeds) and the paired difference to Uniform
(mean ± std over seeds, wins/pairs), one row per method, one column per fraction; a cell in bold
beats Uniform by more than the seed spread (mean difference > its std, every seed a win).
Several files are read as one table (e.g. two halves of a grid run in parallel; their rows must
not overlap). The plot is `lcmat.plots.plot_accuracy` of the chosen methods only.
"""
import argparse

import numpy as np

from lcmat.experiment import paired_differences, parse_methods, read_results, summarize
from lcmat.results import setting_label
from lcmat.plots import plot_accuracy


def chosen_rows(paths, methods):
    rows, seen = [], set()
    for path in paths:
        for row in read_results(path):
            key = (row["dataset"], row["model"], row["method"], row["options"], row["fraction"], row["seed"])
            if key not in seen:  # Uniform is run in each half of a split grid: keep one copy
                seen.add(key)
                rows.append(row)
    if methods is None:
        return rows, list(dict.fromkeys(s["label"] for s in summarize(rows)))
    labels = [spec.label for spec in parse_methods(methods)]
    missing = set(labels) - {s["label"] for s in summarize(rows)}
    if missing:
        raise SystemExit(f"not in the results: {', '.join(sorted(missing))}")
    return [r for r in rows if _label(r) in labels], labels


def _label(row):
    return row["method"] if not row["options"] else f"{row['method']}({row['options']})"


def cell(values):
    a = np.asarray(values)
    std = a.std(ddof=1) if len(a) > 1 else 0.0
    text = f"{a.mean():+.2f} ± {std:.2f} ({int((a > 0).sum())}/{len(a)})"
    return f"**{text}**" if len(a) > 1 and a.mean() > std and (a > 0).all() else text


def tables(rows, labels):
    stats = summarize(rows)
    diffs = paired_differences(rows, "final_acc")
    fractions = sorted({s["fraction"] for s in stats})
    head = "| method | " + " | ".join(f"{100 * f:g} %" for f in fractions) + " |\n|---|" + "---:|" * len(fractions)
    by_key = {(s["label"], s["fraction"]): s for s in stats}
    acc = [head]
    for label in labels:
        cells = []
        for f in fractions:
            s = by_key.get((label, f))
            cells.append("-" if s is None else
                         f"{s['final_mean']:.2f}" + ("" if s["final_std"] is None else f" ± {s['final_std']:.2f}"))
        acc.append(f"| {label} | " + " | ".join(cells) + " |")
    dataset, model = setting_label(rows[0]), rows[0]["model"]  # the pairs key on the dataset as trained
    paired = [head]
    for label in labels:
        if label == "uniform":
            continue
        cells = [cell(list(diffs[(dataset, model, label, f)].values())) if diffs.get((dataset, model, label, f))
                 else "-" for f in fractions]
        paired.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(acc), "\n".join(paired)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results.csv files of one dataset and model")
    parser.add_argument("--methods", help="comma-separated method specs as in lcmat experiment (default: all)")
    parser.add_argument("--plot", help="write the accuracy plot of these methods here")
    args = parser.parse_args()
    rows, labels = chosen_rows(args.results, args.methods)
    if len({(r["dataset"], r["model"]) for r in rows}) != 1:
        raise SystemExit("results: give the runs of one dataset and model")
    accuracy, paired = tables(rows, labels)
    print("Final-epoch test accuracy (%), mean ± std over seeds:\n")
    print(accuracy)
    print("\nPaired difference to Uniform, final accuracy (points; wins/pairs; bold: above the seed spread):\n")
    print(paired)
    if args.plot:
        plot_accuracy(rows, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
