"""`lcmat demo`: the experiment pipeline in miniature.

Per seed: pre-train a small network on a small real dataset, select coresets with every method at
two fractions, train a fresh network on each for a fixed number of SGD steps, and print test accuracy,
the paired difference to Uniform (same seed, same selection model) and the selection time; the plot
goes to ``<out_dir>/accuracy.png``. On sklearn's 8x8 digits (the default: no files needed) it takes
about a minute on 2 CPU cores; ``dataset="fashion-mnist"`` (needs the offline data) a few minutes.
"""
from pathlib import Path

import numpy as np

from .experiment import run_experiment
from .results import paired_differences, summarize

# Per dataset: model, fractions, selection-model epochs, SGD steps per coreset.
DEMO_SETTINGS = {
    "digits": dict(model="mlp", fractions=(0.02, 0.1), selection_epochs=10, steps=150),
    "other": dict(model="lenet", fractions=(0.005, 0.05), selection_epochs=2, steps=200),
}


def run_demo(dataset="digits", methods=None, fractions=None, seeds=(0, 1), device="cpu", selection_epochs=None,
             steps=None, model=None, out_dir=None, data_dir=None, seed=None, progress=False):
    """Run the demo and print its table; returns the rows of results.csv (see lcmat.experiment).

    methods: names or "all" (default all). seeds: one selection model per seed (``seed=`` runs one).
    Results go to ``out_dir`` (default ``results/demo-<dataset>`` under the current directory),
    replacing an earlier demo there.
    """
    defaults = DEMO_SETTINGS["digits" if dataset == "digits" else "other"]
    if seed is not None:
        seeds = (seed,)
    out_dir = Path(out_dir) if out_dir is not None else Path("results") / f"demo-{dataset}"
    rows = run_experiment(
        dataset=dataset, model=model or defaults["model"], methods=methods or ["all"],
        fractions=fractions or defaults["fractions"], seeds=seeds, out_dir=out_dir,
        selection_epochs=selection_epochs or defaults["selection_epochs"], epochs=None,
        steps=steps or defaults["steps"], evaluations=4, device=device, data_dir=data_dir,
        overwrite=True, progress=progress)
    print_table(rows)
    print(f"\nresults: {out_dir / 'results.csv'}, {out_dir / 'summary.md'}; plot: {out_dir / 'accuracy.png'}")
    return rows


def print_table(rows):
    """One line per method and fraction: mean over seeds, and the paired difference to Uniform."""
    stats = summarize(rows)
    diffs = paired_differences(rows, "final_acc")
    print("\n| fraction | method | samples | final test acc (%) | best test acc (%) | final − uniform (paired) "
          "| selection (ms) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for s in sorted(stats, key=lambda s: s["fraction"]):
        per_seed = diffs.get((s["dataset"], s["model"], s["label"], s["fraction"]))
        if per_seed:
            values = np.array(list(per_seed.values()))
            spread = f" ± {values.std(ddof=1):.1f}" if len(values) > 1 else ""
            diff = f"{values.mean():+.1f}{spread} ({int((values > 0).sum())}/{len(values)} seeds)"
        else:
            diff = "-" if s["label"] != "uniform" else "0"
        print(f"| {100 * s['fraction']:g} % | {s['label']} | {s['n_selected']:.0f} "
              f"| {_pm(s['final_mean'], s['final_std'])} | {_pm(s['best_mean'], s['best_std'])} | {diff} "
              f"| {1000 * s['selection_seconds']:.1f} |")


def _pm(mean, std):
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"
