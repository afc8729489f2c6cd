"""The accuracy experiment: pre-train, select with every method and fraction, train on each coreset.

Protocol (the LCMat and DeepCore papers'), per seed:

1. pre-train one selection model on the whole training set (SGD lr 0.1, momentum 0.9, weight decay
   5e-4, Nesterov, batch 128, no schedule, no augmentation; forgetting counts recorded), cached on
   disk by (dataset, model, selection epochs, seed);
2. extract its features once (embeddings, logits; the train-BatchNorm features of LCMat's compat
   mode only when a method asks for them);
3. for every method and fraction: select, then train a fresh network (initialised from ``seed``, so
   every method of a seed starts from the same weights) on the coreset with SGD and per-iteration
   cosine annealing, weighted loss when the coreset has weights, crop + flip augmentation on CIFAR-10;
4. append one row per (dataset, model, method, fraction, seed) to ``results.csv`` as soon as it is
   done, so that ``resume=True`` can continue an interrupted run.

Then ``summary.md`` (mean +- std over seeds, and the paired difference to Uniform: for each seed,
method minus uniform trained on the same seed's selection model) and ``accuracy.png``.

``steps``: train every coreset for a fixed number of SGD steps rather than a fixed number of epochs,
``epochs = ceil(steps / ceil(k / batch_size))``. A fixed epoch count gives a 0.5 % coreset 200 times
fewer updates than a 100 % one; on a CPU budget the small coresets would not be trained at all.
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .coreset import class_budgets
from .data import load_dataset
from .models import get_model
from .selectors import METHODS, get_method
from .train import (cached_selection_model, extract_features, extract_features_train_bn,
                    train_on_coreset, train_selection_model)

__all__ = [
    "run_experiment",
    "PRESETS",
    "RESULT_COLUMNS",
    "MethodSpec",
    "parse_methods",
    "parse_option",
    "epochs_for_steps",
    "read_results",
    "summarize",
    "paired_differences",
    "write_summary",
    "summary_markdown",
]

RESULTS_FILE = "results.csv"
SUMMARY_FILE = "summary.md"
PLOT_FILE = "accuracy.png"
SELECTION_MODELS_FILE = "selection_models.json"

RESULT_COLUMNS = ["dataset", "model", "method", "options", "fraction", "seed", "n_selected", "weighted",
                  "selection_epochs", "epochs", "steps", "batch_size", "lr", "final_acc", "best_acc",
                  "selection_seconds", "training_seconds"]
KEY_COLUMNS = ("dataset", "model", "method", "options", "fraction", "seed")
# Columns that must agree between the rows of one results.csv (a resumed run continues the same run).
CONFIG_COLUMNS = ("selection_epochs", "epochs", "steps", "batch_size", "lr")

BASELINE = "uniform"

# Selection-model protocol of the papers (fixed; the cache key assumes it).
SELECTION_LR = 0.1
SELECTION_BATCH = 128
FEATURE_BATCH = 256

PRESETS = {
    # The papers' protocol, for a GPU: ResNet-18 on CIFAR-10, 200 epochs, evaluated every epoch.
    "paper": dict(dataset="cifar10", model="resnet18", selection_epochs=10, epochs=200, steps=None,
                  seeds=(0, 1, 2, 3, 4), fractions=(0.001, 0.005, 0.01, 0.05, 0.1), batch_size=128,
                  lr=0.1, evaluations=None, device="cuda"),
    # Sized for 2 CPU cores in about an hour with every method on Fashion-MNIST (single-thread
    # estimate; see docs/experiments.md and bench/results/quality.md for the measured wall time):
    # LeNet, 10 selection epochs, 300 SGD steps per coreset whatever its size, 4 test evaluations per
    # coreset. Coreset lr 0.05: LeNet has no normalisation, and at 0.1 (with momentum 0.9, Nesterov)
    # some coreset trainings collapse (uniform 5 %, seed 0: 46 % against 82 % at 0.05).
    "cpu": dict(dataset="fashion-mnist", model="lenet", selection_epochs=10, epochs=None, steps=300,
                seeds=(0, 1, 2), fractions=(0.005, 0.01, 0.05, 0.1), batch_size=128, lr=0.05,
                evaluations=4, device="cpu"),
}

_METHOD_ALIASES = {"lcmat_s": "lcmat", "lcmats": "lcmat", "kcentergreedy": "kcenter", "k_center": "kcenter",
                   "kcenter_greedy": "kcenter", "leastconfidence": "least_confidence", "random": "uniform",
                   "contextual_diversity": "cdiv", "contextualdiversity": "cdiv", "moderate_ds": "moderate",
                   "moderateds": "moderate", "graph_cut": "graphcut", "log_determinant": "logdet",
                   "logdeterminant": "logdet"}
# Constructor arguments the experiment sets itself; they are not method options.
_RESERVED = {"self", "fraction", "seed", "progress", "backend", "dtype"}


# --------------------------------------------------------------------------------------------------
# Methods and their options
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MethodSpec:
    """One method of an experiment: a selector name and its options (as passed to the selector)."""
    name: str
    options: dict = field(default_factory=dict)

    @property
    def options_text(self):
        """Canonical text of the options, e.g. ``"num_coords=50 rho=1.0"`` ('' for none)."""
        return " ".join(f"{k}={self.options[k]}" for k in sorted(self.options))

    @property
    def label(self):
        return self.name if not self.options else f"{self.name}({self.options_text})"


def canonical_method(name):
    """The METHODS key for a method name ("LCMat-S", "kCenterGreedy", ... are accepted)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"methods: expected a method name, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    key = _METHOD_ALIASES.get(key, key)
    if key not in METHODS:
        raise ValueError(f"methods: unknown method {name!r}; choose from {', '.join(METHODS)} or 'all'")
    return key


def method_option_defaults(name):
    """{option: default} of a selector's own constructor options."""
    params = inspect.signature(METHODS[name].__init__).parameters
    return {k: p.default for k, p in params.items()
            if k not in _RESERVED and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _parse_text(text, default, where):
    """Convert option text to the type of its default (bool, int, float or str)."""
    if not isinstance(text, str):
        return text
    value = text.strip()
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise ValueError(f"{where}: cannot read {text!r} as {type(default).__name__}") from None
    if default is None:  # untyped default: best guess
        for convert in (int, float):
            try:
                return convert(value)
            except ValueError:
                pass
    return value


def _check_options(name, options, where):
    allowed = method_option_defaults(name)
    checked = {}
    for key, value in options.items():
        if key not in allowed:
            raise ValueError(f"{where}: {key!r} is not an option of {name} "
                             f"(its options: {', '.join(allowed) or 'none'})")
        try:
            checked[key] = _parse_text(value, allowed[key], f"{where} {name}.{key}")
        except ValueError:
            if not _selector_accepts(name, key, value):
                raise
            checked[key] = value.strip()  # a word the option also takes, e.g. lcmat's rho=auto
    return checked


def _selector_accepts(name, key, value):
    """Does the selector take this text as it is for the option (e.g. LCMat(rho="auto"))?"""
    if not isinstance(value, str):
        return False
    try:
        METHODS[name](**{key: value.strip()})
    except (ValueError, TypeError):
        return False
    return True


def parse_option(text):
    """``"lcmat.rho=1"`` -> ``("lcmat", "rho", "1")`` (the value is converted later)."""
    head, sep, value = str(text).partition("=")
    method, dot, key = head.partition(".")
    if not sep or not dot or not method.strip() or not key.strip():
        raise ValueError(f"option: expected METHOD.NAME=VALUE (e.g. lcmat.rho=1), got {text!r}")
    return canonical_method(method), key.strip(), value


def parse_model_option(text):
    """``"width=16"`` -> ``("width", 16)`` (ints and floats converted, anything else kept as text)."""
    key, sep, value = str(text).partition("=")
    if not sep or not key.strip():
        raise ValueError(f"model-option: expected NAME=VALUE (e.g. width=16), got {text!r}")
    value = value.strip()
    for convert in (int, float):
        try:
            return key.strip(), convert(value)
        except ValueError:
            pass
    return key.strip(), value


def parse_methods(methods, method_options=None):
    """Method specs from names, ``"all"``, or ``"name:key=value:key=value"`` variants.

    methods: a list (or comma-separated string) of entries. method_options: ``{method: {key: value}}``
    (values may be text, e.g. from ``--option lcmat.rho=1``), applied to every entry of that method;
    inline ``name:key=value`` options override them, so ``lcmat,lcmat:rho=1`` runs two variants.
    """
    if isinstance(methods, str):
        methods = methods.split(",")
    entries = [m.strip() for m in methods if str(m).strip()]
    if not entries:
        raise ValueError("methods: no method given")
    shared = {}
    for name, options in (method_options or {}).items():
        key = canonical_method(name)
        shared[key] = _check_options(key, dict(options), "option")
    specs = []
    for entry in entries:
        if entry.lower() == "all":
            specs += [MethodSpec(name, dict(shared.get(name, {}))) for name in METHODS]
            continue
        name, *pairs = entry.split(":")
        name = canonical_method(name)
        inline = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"methods: expected NAME:KEY=VALUE in {entry!r}, got {pair!r}")
            inline[key.strip()] = value
        options = dict(shared.get(name, {}))
        options.update(_check_options(name, inline, "methods"))
        specs.append(MethodSpec(name, options))
    labels = [s.label for s in specs]
    duplicates = sorted({l for l in labels if labels.count(l) > 1})
    if duplicates:
        raise ValueError(f"methods: listed more than once: {', '.join(duplicates)}")
    return specs


# --------------------------------------------------------------------------------------------------
# Small arithmetic
# --------------------------------------------------------------------------------------------------

def epochs_for_steps(steps, k, batch_size):
    """Epochs that give at least ``steps`` SGD steps on ``k`` samples: ceil(steps / ceil(k / batch))."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")
    return math.ceil(int(steps) / math.ceil(k / batch_size))


def eval_every_for(epochs, evaluations):
    """Evaluate every this many epochs so that about ``evaluations`` evaluations happen (None: every
    epoch). The last epoch is always evaluated (train_on_coreset does it)."""
    if evaluations is None:
        return 1
    return max(1, epochs // int(evaluations))


def _fraction_text(fraction):
    return f"{float(fraction):g}"


def _row_key(row):
    return (str(row["dataset"]), str(row["model"]), str(row["method"]), str(row["options"] or ""),
            _fraction_text(row["fraction"]), int(row["seed"]))


# --------------------------------------------------------------------------------------------------
# Results file
# --------------------------------------------------------------------------------------------------

def _to_number(text, kind):
    if text in (None, "", "None", "nan"):
        return None
    return kind(text)


def read_results(path):
    """Rows of a results.csv as dicts with typed values (fraction float, seed int, accuracies float)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results: no such file {str(path)!r}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in KEY_COLUMNS + ("final_acc", "best_acc") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"results: {str(path)!r} lacks the column(s) {', '.join(missing)}")
        rows = []
        for raw in reader:
            row = dict(raw)
            row["options"] = row.get("options") or ""
            row["fraction"] = float(row["fraction"])
            row["seed"] = int(row["seed"])
            for column in ("final_acc", "best_acc", "selection_seconds", "training_seconds"):
                row[column] = _to_number(row.get(column), float)
            for column in ("n_selected", "selection_epochs", "epochs", "steps", "batch_size"):
                row[column] = _to_number(row.get(column), int)
            row["lr"] = _to_number(row.get("lr"), float)
            rows.append(row)
    return rows


def _append_row(path, row):
    """Append one row (writing the header first when the file is new), flushed to disk at once."""
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in RESULT_COLUMNS})
        f.flush()


def _check_same_config(rows, config, path):
    for row in rows:
        if (row["dataset"], row["model"]) != (config["dataset"], config["model"]):
            continue
        # With a step budget the epochs vary with the coreset size, so only steps are compared.
        columns = tuple(c for c in CONFIG_COLUMNS if c != "epochs" or config["steps"] is None)
        for column in columns:
            if row.get(column) != config[column]:
                raise ValueError(
                    f"resume: {str(path)!r} holds rows with {column}={row.get(column)} but this run has "
                    f"{column}={config[column]}; resume with the same settings or choose another --out")


# --------------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------------

def _label(row):
    return row["method"] if not row["options"] else f"{row['method']}({row['options']})"


def _mean_std(values):
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if len(values) == 0:
        return None, None, 0
    std = float(values.std(ddof=1)) if len(values) > 1 else None
    return float(values.mean()), std, len(values)


def summarize(rows):
    """Mean and sample std over seeds per (dataset, model, method label, fraction).

    Returns a list of dicts: dataset, model, label, method, options, fraction, n (seeds), final_mean,
    final_std, best_mean, best_std (std None for one seed), n_selected (mean), selection_seconds,
    training_seconds (means); in first-seen order of the labels, fractions ascending.
    """
    groups = {}
    for row in rows:
        key = (row["dataset"], row["model"], _label(row), float(row["fraction"]))
        groups.setdefault(key, []).append(row)
    out = []
    for (dataset, model, label, fraction), members in groups.items():
        final_mean, final_std, n = _mean_std(r["final_acc"] for r in members)
        best_mean, best_std, _ = _mean_std(r["best_acc"] for r in members)
        out.append(dict(dataset=dataset, model=model, label=label, method=members[0]["method"],
                        options=members[0]["options"], fraction=fraction, n=n,
                        final_mean=final_mean, final_std=final_std, best_mean=best_mean, best_std=best_std,
                        n_selected=_mean_std(r.get("n_selected") for r in members)[0],
                        selection_seconds=_mean_std(r.get("selection_seconds") for r in members)[0],
                        training_seconds=_mean_std(r.get("training_seconds") for r in members)[0]))
    order = {}
    for item in out:
        order.setdefault(item["label"], len(order))
    out.sort(key=lambda s: (s["dataset"], s["model"], order[s["label"]], s["fraction"]))
    return out


def paired_differences(rows, metric="final_acc", baseline=BASELINE):
    """Per-seed differences (method - baseline) for the same dataset, model, fraction and seed.

    The baseline row of a seed is the one with method == baseline and no options; it was trained on
    coresets drawn from the same seed's selection model, from the same initial weights. Seeds without
    a baseline row (or without the method) are left out. Returns ``{(dataset, model, label, fraction):
    {seed: difference}}`` for every label other than the baseline itself.
    """
    if metric not in ("final_acc", "best_acc"):
        raise ValueError(f"metric: expected 'final_acc' or 'best_acc', got {metric!r}")
    base = {}
    for row in rows:
        if row["method"] == baseline and not row["options"] and row[metric] is not None:
            base[(row["dataset"], row["model"], float(row["fraction"]), int(row["seed"]))] = row[metric]
    out = {}
    for row in rows:
        label = _label(row)
        if label == baseline or row[metric] is None:
            continue
        ref = base.get((row["dataset"], row["model"], float(row["fraction"]), int(row["seed"])))
        if ref is None:
            continue
        key = (row["dataset"], row["model"], label, float(row["fraction"]))
        out.setdefault(key, {})[int(row["seed"])] = row[metric] - ref
    return out


def _fmt(mean, std, signed=False):
    if mean is None:
        return "-"
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return text if std is None else f"{text} ± {std:.2f}"


def _fraction_header(fraction):
    return f"{100 * fraction:g} %"


def _table(title, labels, fractions, cell):
    lines = [f"### {title}", "", "| method | " + " | ".join(_fraction_header(f) for f in fractions) + " |",
             "|---|" + "---:|" * len(fractions)]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(cell(label, f) for f in fractions) + " |")
    return lines + [""]


def _config_line(rows):
    def values(column):
        return sorted({r.get(column) for r in rows if r.get(column) is not None})

    parts = []
    if values("selection_epochs"):
        parts.append(f"selection model: {'/'.join(map(str, values('selection_epochs')))} epochs")
    epochs = values("epochs")
    epochs_text = (f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}") if epochs else "?"
    if values("steps"):
        parts.append(f"coreset training: {'/'.join(map(str, values('steps')))} SGD steps per coreset "
                     f"({epochs_text} epochs)")
    else:
        parts.append(f"coreset training: {epochs_text} epochs")
    if values("lr"):
        parts[-1] += f", lr {'/'.join(f'{v:g}' for v in values('lr'))}"
    if values("batch_size"):
        parts[-1] += f", batch {'/'.join(map(str, values('batch_size')))}"
    seeds = sorted({int(r["seed"]) for r in rows})
    parts.append(f"seeds {', '.join(map(str, seeds))}")
    return "; ".join(parts)


def summary_markdown(rows, baseline=BASELINE):
    """The markdown of summary.md for these rows (one section per dataset and model)."""
    stats = summarize(rows)
    diffs = {metric: paired_differences(rows, metric, baseline) for metric in ("final_acc", "best_acc")}
    lines = ["# Coreset accuracy", "",
             "Test accuracy in %, mean ± sample std over seeds. Paired difference: for each seed, "
             f"method − {baseline} (same seed, same selection model, same initial weights), then mean ± std "
             f"over seeds and the number of seeds where the method is higher (wins/pairs). "
             "'Best' is the best of the evaluated epochs on the test set (optimistic; the papers report it).", ""]
    for dataset, model in dict.fromkeys((s["dataset"], s["model"]) for s in stats):
        group = [s for s in stats if (s["dataset"], s["model"]) == (dataset, model)]
        group_rows = [r for r in rows if (r["dataset"], r["model"]) == (dataset, model)]
        labels = list(dict.fromkeys(s["label"] for s in group))
        fractions = sorted({s["fraction"] for s in group})
        by = {(s["label"], s["fraction"]): s for s in group}
        lines += [f"## {dataset}, {model}", "", _config_line(group_rows), ""]

        n_seeds = len({int(r["seed"]) for r in group_rows})

        def stat_cell(prefix):
            def cell(label, fraction):
                s = by.get((label, fraction))
                if s is None:
                    return "-"
                text = _fmt(s[prefix + "_mean"], s[prefix + "_std"])
                return text if s["n"] == n_seeds else f"{text} ({s['n']})"  # show incomplete cells
            return cell

        def diff_cell(metric):
            def cell(label, fraction):
                per_seed = diffs[metric].get((dataset, model, label, fraction))
                if not per_seed:
                    return "-"
                values = list(per_seed.values())
                mean, std, n = _mean_std(values)
                wins = sum(v > 0 for v in values)
                return f"{_fmt(mean, std, signed=True)} ({wins}/{n})"
            return cell

        others = [l for l in labels if l != baseline]
        lines += _table("Final-epoch test accuracy (%)", labels, fractions, stat_cell("final"))
        lines += _table("Best test accuracy over evaluated epochs (%)", labels, fractions, stat_cell("best"))
        lines += _table(f"Paired difference to {baseline}, final accuracy (points, wins/pairs)", others,
                        fractions, diff_cell("final_acc"))
        lines += _table(f"Paired difference to {baseline}, best accuracy (points, wins/pairs)", others,
                        fractions, diff_cell("best_acc"))

        def size_cell(label, fraction):
            s = by.get((label, fraction))
            if s is None:
                return "-"
            return (f"{s['n_selected']:.0f} / {_seconds(s['selection_seconds'])} / "
                    f"{_seconds(s['training_seconds'])}")

        lines += _table("Coreset size / selection time / training time (mean per run)", labels, fractions,
                        size_cell)
    return "\n".join(lines)


def _seconds(value):
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def write_summary(rows, out_dir, baseline=BASELINE):
    """Write summary.md and accuracy.png for these rows into out_dir; returns their paths."""
    from .plots import plot_accuracy

    out_dir = Path(out_dir)
    summary_path = out_dir / SUMMARY_FILE
    summary_path.write_text(summary_markdown(rows, baseline) + "\n")
    plot_path = out_dir / PLOT_FILE
    plot_accuracy(rows, plot_path, baseline=baseline)
    return summary_path, plot_path


# --------------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------------

def _check_device(device):
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was requested but torch sees no CUDA device; "
                         "use device='cpu' (--device cpu)")
    return device


def _check_seeds(seeds):
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds or any(isinstance(s, bool) or int(s) != s or s < 0 for s in seeds):
        raise ValueError(f"seeds: expected non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: listed more than once in {seeds!r}")
    return [int(s) for s in seeds]


def _check_fractions(fractions, counts):
    fractions = [fractions] if isinstance(fractions, (int, float)) else list(fractions)
    if not fractions:
        raise ValueError("fractions: no fraction given")
    checked = []
    for f in fractions:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ValueError(f"fractions: each must be a number in (0, 1], got {f!r}")
        class_budgets(counts, float(f))  # raises naming the class whose budget rounds to zero
        checked.append(float(f))
    if len({_fraction_text(f) for f in checked}) != len(checked):
        raise ValueError(f"fractions: listed more than once in {fractions!r}")
    return sorted(checked)


def _model_label(model, model_options):
    if not model_options:
        return str(model)
    return f"{model}(" + " ".join(f"{k}={model_options[k]}" for k in sorted(model_options)) + ")"


class _Features:
    """Features of one seed's selection model, computed on first use."""

    def __init__(self, model, train, device, progress):
        self.model, self.train, self.device, self.progress = model, train, device, progress
        self.seconds = 0.0
        self._eval = None
        self._train_bn = {}

    def eval_mode(self):
        if self._eval is None:
            start = time.perf_counter()
            self._eval = extract_features(self.model, self.train, batch_size=FEATURE_BATCH, device=self.device,
                                          progress=self.progress)
            self.seconds += time.perf_counter() - start
        return self._eval

    def train_bn(self, batch_size):
        if batch_size not in self._train_bn:
            start = time.perf_counter()
            H, Z, _ = extract_features_train_bn(self.model, self.train, self.train.targets, batch_size=batch_size,
                                                device=self.device)
            self._train_bn[batch_size] = (H, Z)
            self.seconds += time.perf_counter() - start
        return self._train_bn[batch_size]


def _needs_selection_model(spec):
    """Every method but plain Uniform reads the selection model's features or forgetting counts
    (Uniform with coverage=True stratifies by their difficulty)."""
    return spec.name != "uniform" or bool(spec.options.get("coverage"))


def _select(spec, fraction, seed, labels, features, stats, backend):
    """(Coreset, wall seconds) of one method at one fraction."""
    options = dict(spec.options)
    selector = get_method(spec.name, fraction=fraction, seed=seed, progress=False, backend=backend, **options)
    extra, H, Z = {}, None, None
    if stats.get("forgetting") is not None:  # Forgetting, and difficulty="forgetting" under coverage
        extra["forgetting"] = stats["forgetting"]
    if getattr(selector, "needs_model", False):  # DeepFool attacks the selection model itself
        start = time.perf_counter()
        coreset = selector.select(features.model, features.train, device=features.device, **extra)
        return coreset, time.perf_counter() - start
    if selector.required():
        if getattr(selector, "mode", "paper") == "compat":
            H, Z = features.train_bn(selector.batch_size)
        else:
            H, Z, _ = features.eval_mode()
    start = time.perf_counter()
    coreset = selector.select_features(embeddings=H, logits=Z, labels=labels, **extra)
    return coreset, time.perf_counter() - start


def run_experiment(dataset="fashion-mnist", model="lenet", methods=("uniform", "lcmat", "fdmat"),
                   fractions=(0.005, 0.01, 0.05, 0.1), seeds=(0, 1, 2), out_dir="results",
                   selection_epochs=10, epochs=200, steps=None, batch_size=128, lr=0.1, device="cpu",
                   data_dir=None, resume=False, progress=True, method_options=None, evaluations=None,
                   backend=None, augment=None, model_options=None, cache_dir=None, overwrite=False,
                   log=print):
    """Run the coreset-accuracy experiment and write results.csv, summary.md and accuracy.png.

    dataset, model: names for :func:`lcmat.data.load_dataset` and :func:`lcmat.models.get_model`
    (model_options: extra constructor arguments, e.g. ``{"width": 32}``). methods: names, ``"all"``
    or ``"name:key=value"`` variants (see :func:`parse_methods`); method_options: ``{method: {key:
    value}}``. fractions: per-class fractions in (0, 1]. seeds: one selection model per seed.
    selection_epochs: selection-model epochs (cached). epochs / steps: coreset training length; steps
    (when given) overrides epochs with ``ceil(steps / ceil(k / batch_size))``. evaluations: number of
    test evaluations per coreset training (None: after every epoch; the last epoch is always
    evaluated). augment: crop + flip on the coreset (default: on for CIFAR-10 only). backend: the
    selectors' kernel backend. cache_dir: selection-model checkpoints (default the package cache).

    resume: skip the (dataset, model, method, options, fraction, seed) rows already in
    ``out_dir/results.csv`` (the run's settings must match them). Without resume an existing
    results.csv is an error unless overwrite=True, which starts it afresh.

    Returns the list of all rows in results.csv (dicts, see :func:`read_results`).
    """
    out_dir = Path(out_dir)
    specs = parse_methods(methods, method_options)
    seeds = _check_seeds(seeds)
    if steps is None and epochs is None:
        raise ValueError("epochs: give epochs or steps")
    if steps is not None and (isinstance(steps, bool) or int(steps) != steps or steps < 1):
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")
    if steps is None and (isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1):
        raise ValueError(f"epochs: expected a positive integer, got {epochs!r}")
    if isinstance(selection_epochs, bool) or int(selection_epochs) != selection_epochs or selection_epochs < 1:
        raise ValueError(f"selection_epochs: expected a positive integer, got {selection_epochs!r}")
    if evaluations is not None and (int(evaluations) != evaluations or evaluations < 1):
        raise ValueError(f"evaluations: expected a positive integer or None, got {evaluations!r}")
    device = _check_device(device)
    model_options = dict(model_options or {})

    train = load_dataset(dataset, "train", data_dir)
    test = load_dataset(dataset, "test", data_dir)
    dataset_name = train.name
    labels = train.targets
    counts = np.bincount(labels, minlength=train.num_classes)
    fractions = _check_fractions(fractions, counts)
    if augment is None:
        augment = dataset_name == "cifar10"
    model_label = _model_label(model, model_options)
    in_channels, im_size = train.in_channels, train.im_size

    def build():
        return get_model(model, train.num_classes, in_channels, im_size, **model_options)

    build()  # fail on a bad model name or size before any work
    config = dict(dataset=dataset_name, model=model_label, selection_epochs=int(selection_epochs),
                  epochs=None if steps is not None else int(epochs),
                  steps=None if steps is None else int(steps), batch_size=int(batch_size), lr=float(lr))

    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS_FILE
    done = set()
    if results_path.is_file() and results_path.stat().st_size > 0:
        if resume:
            existing = read_results(results_path)
            _check_same_config(existing, config, results_path)
            done = {_row_key(r) for r in existing}
        elif overwrite:
            results_path.unlink()
        else:
            raise ValueError(f"out_dir: {str(results_path)!r} already exists; pass resume=True (--resume) to "
                             f"continue it, overwrite=True (--overwrite) to start afresh, or another out_dir")

    plan = [(seed, fraction, spec) for seed in seeds for fraction in fractions for spec in specs]
    pending = [p for p in plan if (dataset_name, model_label, p[2].name, p[2].options_text,
                                   _fraction_text(p[1]), p[0]) not in done]
    log(f"experiment: {dataset_name} ({len(train)} train / {len(test)} test), model {model_label}, "
        f"{len(specs)} methods x {len(fractions)} fractions x {len(seeds)} seeds = {len(plan)} runs"
        + (f", {len(plan) - len(pending)} already done" if len(pending) < len(plan) else "")
        + f"; device {device}")

    selection_log = {}
    bar = tqdm(total=len(pending), desc="experiment", unit="run", disable=not progress)
    for seed in seeds:
        todo = [p for p in pending if p[0] == seed]
        if not todo:
            continue
        stats, features = {}, None
        if any(_needs_selection_model(spec) for _, _, spec in todo):
            selection_model, stats = _selection_model(dataset_name, model_label, build, train, selection_epochs,
                                                      seed, device, progress, cache_dir)
            features = _Features(selection_model, train, device, progress)
            selection_log[seed] = {k: stats.get(k) for k in ("seconds", "from_cache", "cache_path")}
            selection_log[seed]["train_acc"] = stats["epoch_acc"][-1] if stats.get("epoch_acc") else None
            log(f"seed {seed}: selection model {'loaded from cache' if stats.get('from_cache') else 'trained'}"
                f" ({selection_epochs} epochs, last-epoch train accuracy {selection_log[seed]['train_acc']:.1f} %)")
        for _, fraction, spec in todo:
            coreset, selection_seconds = _select(spec, fraction, seed, labels, features, stats, backend)
            k = len(coreset)
            run_epochs = epochs_for_steps(steps, k, batch_size) if steps is not None else int(epochs)
            result = train_on_coreset(build, train, coreset.indices, coreset.weights, epochs=run_epochs, lr=lr,
                                      batch_size=batch_size, test_dataset=test, seed=seed, device=device,
                                      augment=augment, eval_every=eval_every_for(run_epochs, evaluations),
                                      progress=progress)
            row = dict(config, method=spec.name, options=spec.options_text, fraction=_fraction_text(fraction),
                       seed=seed, n_selected=k, weighted=coreset.weights is not None, epochs=run_epochs,
                       final_acc=round(result["final_acc"], 4), best_acc=round(result["best_acc"], 4),
                       selection_seconds=round(selection_seconds, 4),
                       training_seconds=round(result["seconds"], 3))
            _append_row(results_path, row)
            bar.update(1)
            bar.set_postfix(last=f"{spec.label} {_fraction_header(fraction)} s{seed}: {row['final_acc']:.2f}")
            message = (f"  seed {seed} {_fraction_header(fraction):>7} {spec.label:<18} n={k:<6} "
                       f"final {row['final_acc']:6.2f}  best {row['best_acc']:6.2f}  "
                       f"select {_seconds(selection_seconds):>8}  train {_seconds(result['seconds']):>7}")
            if progress:
                tqdm.write(message)
            else:
                log(message)
        if features is not None:
            selection_log[seed]["feature_seconds"] = round(features.seconds, 3)
    bar.close()

    if selection_log:
        _update_selection_log(out_dir / SELECTION_MODELS_FILE, dataset_name, model_label, selection_epochs,
                              selection_log)
    rows = read_results(results_path) if results_path.is_file() else []
    if rows:
        summary_path, plot_path = write_summary(rows, out_dir)
        log(f"wrote {results_path}, {summary_path}, {plot_path}")
    return rows


def _selection_model(dataset_name, model_label, build, train, selection_epochs, seed, device, progress,
                     cache_dir):
    def train_fn(net):
        return train_selection_model(net, train, epochs=selection_epochs, lr=SELECTION_LR,
                                     batch_size=SELECTION_BATCH, seed=seed, device=device,
                                     record_forgetting=True, progress=progress)

    def build_seeded():
        torch.manual_seed(seed)  # the same initial weights whether or not the cache is warm
        return build()

    net, stats = cached_selection_model(dataset_name, model_label, selection_epochs, seed, build_seeded, train_fn,
                                        cache_dir=cache_dir)
    return net.to(device).eval(), stats


def _update_selection_log(path, dataset_name, model_label, selection_epochs, entries):
    """Record per-seed selection-model facts (time, accuracy, cache file) in selection_models.json."""
    log = {}
    if path.is_file():
        try:
            log = json.loads(path.read_text())
        except (OSError, ValueError):
            log = {}
    for seed, entry in entries.items():
        log[f"{dataset_name}/{model_label}/e{selection_epochs}/s{seed}"] = entry
    path.write_text(json.dumps(log, indent=1, sort_keys=True) + "\n")
