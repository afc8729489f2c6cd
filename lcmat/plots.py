"""Plots of experiment results (matplotlib's Agg canvas; the global backend is left alone)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

__all__ = ["plot_accuracy"]

_MARKERS = "osD^v<>pP*Xh"


_HIGHLIGHT = ("lcmat", "fdmat")


def _style(index, label, baseline):
    """Uniform in black and dashed, LCMat-S and FDMat (and their variants) drawn thicker."""
    from matplotlib import colormaps

    if label == baseline:
        return dict(color="black", marker="o", linestyle="--", linewidth=1.8, markersize=5)
    colors = colormaps["tab20"].colors
    thick = label.split("(")[0] in _HIGHLIGHT
    return dict(color=colors[(2 * index) % 20 if index < 10 else (2 * index + 1) % 20],
                marker=_MARKERS[index % len(_MARKERS)], linewidth=2.4 if thick else 1.2,
                markersize=6 if thick else 4)


def _series(stats, label, prefix):
    points = sorted((s["fraction"], s[prefix + "_mean"], s[prefix + "_std"] or 0.0)
                    for s in stats if s["label"] == label and s[prefix + "_mean"] is not None)
    return [np.array(v, dtype=np.float64) for v in zip(*points)] if points else None


def _format_fraction_axis(ax, fractions):
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(fractions))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{100 * f:g}%" for f in fractions])
    ax.set_xlabel("coreset fraction (per class)")
    ax.grid(True, which="major", alpha=0.3)


def _panel_title(setting, what, width=60):
    """The setting (dataset as trained, network, seeds) wrapped to the panel's width, then what it shows;
    a number and its "%" never go to different lines (a no-break space joins them)."""
    return textwrap.fill(setting.replace(" %", "\u00a0%"), width) + "\n" + what


def plot_accuracy(rows, path, baseline="uniform"):
    """Accuracy against fraction (log x axis), one line per method with error bars (std over seeds).

    Per dataset and model, three panels: final-epoch test accuracy, best test accuracy over the
    evaluated epochs, and the paired difference to ``baseline`` (method - baseline on the same seed,
    mean +- std over seeds). rows: dicts as read by :func:`lcmat.experiment.read_results`.
    Writes a PNG to ``path`` and returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .results import paired_differences, setting_title, summarize

    stats = summarize(rows)
    if not stats:
        raise ValueError("rows: nothing to plot")
    groups = list(dict.fromkeys((s["dataset"], s["model"]) for s in stats))
    labels = list(dict.fromkeys(s["label"] for s in stats))
    diffs = paired_differences(rows, "final_acc", baseline)

    fig = Figure(figsize=(16, 4.8 * len(groups)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 3, squeeze=False)
    for g, (dataset, model) in enumerate(groups):
        group = [s for s in stats if (s["dataset"], s["model"]) == (dataset, model)]
        fractions = sorted({s["fraction"] for s in group})
        seeds = max(s["n"] for s in group)
        for column, (prefix, title) in enumerate((("final", "final-epoch test accuracy"),
                                                  ("best", "best test accuracy over epochs"))):
            ax = axes[g, column]
            for i, label in enumerate(labels):
                series = _series(group, label, prefix)
                if series is None:
                    continue
                x, mean, std = series
                ax.errorbar(x, mean, yerr=std, label=label, capsize=3, **_style(i, label, baseline))
            _format_fraction_axis(ax, fractions)
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(_panel_title(f"{setting_title(dataset, model)}, {seeds} seed{'s' if seeds > 1 else ''}", title),
                         fontsize=10)
        ax = axes[g, 2]
        ax.axhline(0.0, color="black", linewidth=1.0)
        for i, label in enumerate(labels):
            points = []
            for fraction in fractions:
                per_seed = diffs.get((dataset, model, label, fraction))
                if per_seed:
                    values = np.array(list(per_seed.values()), dtype=np.float64)
                    points.append((fraction, values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0))
            if points:
                x, mean, std = (np.array(v) for v in zip(*points))
                ax.errorbar(x, mean, yerr=std, label=label, capsize=3, **_style(i, label, baseline))
        _format_fraction_axis(ax, fractions)
        ax.set_ylabel(f"final accuracy − {baseline} (points)")
        ax.set_title(_panel_title(setting_title(dataset, model), f"paired difference to {baseline}, same seed"),
                     fontsize=10)
    legend = {}  # every method once, from whichever panel first drew it
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, handle)
    fig.legend(list(legend.values()), list(legend), loc="outside right center", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
