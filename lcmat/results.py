"""The results of an experiment: ``results.csv`` (written crash-safe, read tolerantly), the
per-method summaries, the paired differences to the baseline and the markdown of summary.md.

Crash safety: each row is appended as one complete line with a single write, then flushed and
fsynced, so a crash leaves the whole row or a torn tail. A reader skips a torn or invalid line
with a warning (its run is then redone by ``--resume``), and `repair_results` rewrites the file
without such lines (to a temporary file, then renamed over it) before new rows are appended.
"""
from __future__ import annotations

import csv
import datetime
import io
import math
import os
import platform
import warnings
from pathlib import Path

import numpy as np

RESULTS_FILE = "results.csv"
SUMMARY_FILE = "summary.md"
PLOT_FILE = "accuracy.png"
SELECTION_MODELS_FILE = "selection_models.json"

RESULT_COLUMNS = ["dataset", "model", "method", "options", "fraction", "seed", "n_selected", "weighted",
                  "selection_model", "protocol", "selection_epochs", "epochs", "steps", "batch_size", "lr",
                  "imbalance", "label_noise", "corruption_seed", "pool", "pool_seed", "final_acc", "best_acc",
                  "selection_seconds", "training_seconds", "kind", "augment", "host", "date"]
KEY_COLUMNS = ("dataset", "model", "method", "options", "fraction", "seed")
# Columns that must agree between the rows of one results.csv (a resumed run continues the same run).
CONFIG_COLUMNS = ("selection_model", "protocol", "selection_epochs", "epochs", "steps", "batch_size", "lr",
                  "imbalance", "label_noise", "corruption_seed", "pool", "pool_seed")
# The training-set corruption of a row; files written before these columns existed hold clean data.
CORRUPTION_DEFAULTS = {"imbalance": 1.0, "label_noise": 0.0, "corruption_seed": 0}
# The per-class pool the training set was drawn from (empty: the whole training split, as in files
# written before these columns existed).
POOL_COLUMNS = ("pool", "pool_seed")
# Where and when a row was written (stamped by append_row). Rows of two hosts are never paired; a row
# without a host (files written before the column existed) is an unknown host.
PROVENANCE_COLUMNS = ("host", "date")

# What a row trained on (``kind``): a selector's coreset, a condensation method's synthetic set
# (selection_seconds is then its condensation time, n_selected its stored images), or the whole set.
SELECTION, CONDENSATION = "selection", "condensation"

# Coreset training protocols: a fixed number of epochs over the coreset (the papers'), or a fixed
# number of SGD steps whatever the coreset size (the step budget).
EPOCHS_PROTOCOL = "epochs"
STEPS_PROTOCOL = "steps"

BASELINE = "uniform"
# The ceiling pseudo-method: a network trained on the whole training set (fraction 1).
FULL = "full"


def fraction_text(fraction):
    return f"{float(fraction):g}"


def row_key(row):
    return (str(row["dataset"]), str(row["model"]), str(row["method"]), str(row["options"] or ""),
            fraction_text(row["fraction"]), int(row["seed"]))



def _to_number(text, kind):
    if text in (None, "", "None", "nan"):
        return None
    return kind(text)


def _typed_row(header, fields):
    """A row dict with typed values, or ValueError when the line is not a valid row."""
    if len(fields) != len(header):
        raise ValueError(f"{len(fields)} fields, the header has {len(header)}")
    row = dict(zip(header, fields))
    row["options"] = row.get("options") or ""
    for column in ("dataset", "model", "method"):
        if not row[column]:
            raise ValueError(f"empty {column}")
    row["fraction"] = float(row["fraction"])
    row["seed"] = int(row["seed"])
    for column in ("final_acc", "best_acc", "selection_seconds", "training_seconds"):
        row[column] = _to_number(row.get(column), float)
    for column in ("n_selected", "selection_epochs", "epochs", "steps", "batch_size") + POOL_COLUMNS:
        row[column] = _to_number(row.get(column), int)
    row["lr"] = _to_number(row.get("lr"), float)
    for column, default in CORRUPTION_DEFAULTS.items():
        value = _to_number(row.get(column), type(default))
        row[column] = default if value is None else value
    if row["pool"] is None:
        row["pool_seed"] = None
    for column in PROVENANCE_COLUMNS:
        row[column] = row.get(column) or ""
    if not row.get("kind"):  # older files: selectors and the ceiling only
        row["kind"] = FULL if row["method"] == FULL else SELECTION
    if row["kind"] not in (SELECTION, CONDENSATION, FULL):
        raise ValueError(f"unknown kind {row['kind']!r}")
    row["augment"] = row.get("augment") or None  # older files did not record it
    if not row.get("selection_model"):  # older files: the trained network selected too
        row["selection_model"] = row["model"]
    if not row.get("protocol"):  # older files: the steps column tells the step budget
        row["protocol"] = STEPS_PROTOCOL if row.get("steps") is not None else EPOCHS_PROTOCOL
    if row["protocol"] not in (EPOCHS_PROTOCOL, STEPS_PROTOCOL):
        raise ValueError(f"unknown protocol {row['protocol']!r}")
    if not (0 < row["fraction"] <= 1) or row["seed"] < 0:
        raise ValueError("fraction or seed out of range")
    for column in ("final_acc", "best_acc"):
        if row[column] is None or not (math.isfinite(row[column]) and 0 <= row[column] <= 100):
            raise ValueError(f"{column} is not an accuracy")
    return row


def _scan(path):
    """(header, [(line text, row)], number of skipped lines) of a results file. A line is
    skipped when it is torn (no final newline: a crash mid-write) or does not parse as a row."""
    text = Path(path).read_bytes().decode("utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    if not lines:
        return None, [], 0
    if not lines[0].endswith("\n"):
        warnings.warn(f"results: {str(path)!r}: skipped 1 torn or invalid row(s): the header is torn; no run "
                      f"counts as done", RuntimeWarning, stacklevel=3)
        return None, [], 1
    header = next(csv.reader([lines[0]]))
    missing = [c for c in KEY_COLUMNS + ("final_acc", "best_acc") if c not in header]
    if missing:
        raise ValueError(f"results: {str(path)!r} lacks the column(s) {', '.join(missing)}")
    good, skipped = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            if not line.endswith("\n"):
                raise ValueError("torn (no end of line)")
            good.append((line, _typed_row(header, next(csv.reader([line])))))
        except (ValueError, StopIteration, csv.Error) as err:
            skipped.append(f"line {number} ({err})")
    if skipped:
        warnings.warn(f"results: {str(path)!r}: skipped {len(skipped)} torn or invalid row(s): "
                      f"{', '.join(skipped[:5])}; their runs count as not done", RuntimeWarning, stacklevel=3)
    return header, good, len(skipped)


def read_results(path):
    """Rows of a results.csv as dicts with typed values (fraction float, seed int, accuracies
    float); torn or invalid rows are skipped with a warning."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results: no such file {str(path)!r}")
    header, good, _ = _scan(path)
    return [row for _, row in good]


def repair_results(path):
    """Rewrite results.csv without its torn or invalid rows (write a temporary file, fsync,
    rename over), so that rows appended next start on a line of their own. A file written before
    some of today's columns existed is rewritten with today's columns (protocol and corruption
    filled in as :func:`read_results` reads them), so that appended rows match its header.
    Returns the rows."""
    path = Path(path)
    header, good, skipped = _scan(path)
    upgrade = header is not None and list(header) != RESULT_COLUMNS
    if not skipped and not upgrade:
        return [row for _, row in good]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        if upgrade:
            f.write(_csv_line(RESULT_COLUMNS))
            f.writelines(_row_line(row) for _, row in good)
        else:
            f.write(_csv_line(RESULT_COLUMNS if header is None else header))
            f.writelines(line for line, _ in good)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return [row for _, row in good]


def _csv_line(values):
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _row_line(row):
    return _csv_line(["" if row.get(k) is None else row.get(k) for k in RESULT_COLUMNS])


def current_host():
    """This machine's network name (the ``host`` of the rows it writes)."""
    return platform.node() or "unknown"


def append_row(path, row):
    """Append one row as one complete line in a single write (the header first when the file
    is new), then flush and fsync: a crash leaves the whole row or a torn tail that readers skip.
    A row without ``host`` / ``date`` is stamped with this machine's name and the UTC time."""
    path = Path(path)
    row = dict(row)
    if not row.get("host"):
        row["host"] = current_host()
    if not row.get("date"):
        row["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    new = not path.is_file() or path.stat().st_size == 0
    text = _row_line(row)
    if new:
        text = _csv_line(RESULT_COLUMNS) + text
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)


def check_same_config(rows, config, path):
    """Refuse to continue ``path`` with another protocol (in any row) or, for the same dataset and
    model, other training settings or another training-set corruption."""
    for row in rows:
        if row.get("protocol") != config["protocol"]:
            raise ValueError(
                f"resume: {str(path)!r} holds rows trained under the {row.get('protocol')} protocol but this run "
                f"uses the {config['protocol']} protocol; rows of two protocols are never mixed in one "
                f"results.csv: choose another --out")
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

def setting_label(row):
    """The dataset as trained: its name, then the per-class pool, the training-set corruption, the step
    budget and the selecting network (when it is not the trained one) when present. Summaries group and
    pairs match on it, so rows of two pools, corruptions or protocols are never averaged or paired together."""
    parts = [str(row["dataset"])]
    if row.get("pool") is not None:
        parts.append(f"pool {row['pool']}/class (pool seed {row.get('pool_seed') or 0})")
    noise = row.get("label_noise") or 0.0
    imbalance = row.get("imbalance") or 1.0
    if noise:
        parts.append(f"label noise {100 * noise:g} %")
    if imbalance != 1.0:
        parts.append(f"imbalance {imbalance:g}")
    if noise or imbalance != 1.0:
        parts.append(f"corruption seed {row.get('corruption_seed') or 0}")
    if row.get("protocol") == STEPS_PROTOCOL:
        parts.append("step budget")
    if row.get("selection_model") and row["selection_model"] != row["model"]:
        parts.append(f"selected with {row['selection_model']}")
    return ", ".join(parts)


def setting_title(dataset_label, model):
    """A setting_label and the trained network, for titles: "trained <model>" where the label ends with
    the network that selected, so that the two are not read as one list."""
    network = f"trained {model}" if "selected with" in dataset_label else model
    return f"{dataset_label}, {network}"


def row_label(row):
    return row["method"] if not row["options"] else f"{row['method']}({row['options']})"


def _mean_std(values):
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if len(values) == 0:
        return None, None, 0
    std = float(values.std(ddof=1)) if len(values) > 1 else None
    return float(values.mean()), std, len(values)


def summarize(rows):
    """Mean and sample std over seeds per (dataset as trained, model, method label, fraction).

    Returns a list of dicts: dataset (the :func:`setting_label`), model, label, method, options, fraction, n (seeds), final_mean,
    final_std, best_mean, best_std (std None for one seed), n_selected (mean), selection_seconds,
    training_seconds (means); in first-seen order of the labels, fractions ascending.
    """
    groups = {}
    for row in rows:
        key = (setting_label(row), row["model"], row_label(row), float(row["fraction"]))
        groups.setdefault(key, []).append(row)
    out = []
    for (dataset, model, label, fraction), members in groups.items():
        final_mean, final_std, n = _mean_std(r["final_acc"] for r in members)
        best_mean, best_std, _ = _mean_std(r["best_acc"] for r in members)
        out.append(dict(dataset=dataset, model=model, label=label, method=members[0]["method"],
                        options=members[0]["options"], kind=members[0].get("kind") or SELECTION,
                        fraction=fraction, n=n,
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
    """Per-seed differences (method - baseline) for the same dataset (as trained: same pool, corruption
    and protocol, see :func:`setting_label`), model, fraction, seed and host.

    The baseline row of a seed is the one with method == baseline and no options; it was trained on
    coresets drawn from the same seed's selection model, from the same initial weights. Seeds without
    a baseline row (or without the method) are left out, and so are pairs written on two different
    hosts (see :func:`baseline_for`). Returns ``{(setting label, model, label, fraction): {seed:
    difference}}`` for every label other than the baseline itself.
    """
    if metric not in ("final_acc", "best_acc"):
        raise ValueError(f"metric: expected 'final_acc' or 'best_acc', got {metric!r}")
    base = {}
    for row in rows:
        if row["method"] == baseline and not row["options"] and row[metric] is not None:
            key = (setting_label(row), row["model"], float(row["fraction"]), int(row["seed"]))
            base.setdefault(key, {})[row.get("host") or ""] = row[metric]
    out = {}
    for row in rows:
        label = row_label(row)
        if label == baseline or row[metric] is None:
            continue
        ref = baseline_for(base.get((setting_label(row), row["model"], float(row["fraction"]), int(row["seed"]))),
                           row.get("host") or "")
        if ref is None:
            continue
        key = (setting_label(row), row["model"], label, float(row["fraction"]))
        out.setdefault(key, {})[int(row["seed"])] = row[metric] - ref
    return out


def baseline_for(by_host, host):
    """The baseline value that may be paired with a row written on ``host``: the one of the same host;
    failing that, when exactly one baseline row exists and one of the two hosts is unknown (''), that
    one. Two known, different hosts are never paired. by_host: {host: value} or None."""
    if not by_host:
        return None
    if host in by_host:
        return by_host[host]
    if len(by_host) == 1:
        (other, value), = by_host.items()
        if not host or not other:
            return value
    return None


def _fmt(mean, std, signed=False):
    if mean is None:
        return "-"
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return text if std is None else f"{text} ± {std:.2f}"


def fraction_header(fraction):
    return f"{100 * fraction:g} %"


CONDENSATION_MARK = " ‡"


def _table(title, labels, fractions, cell, marked=()):
    lines = [f"### {title}", "", "| method | " + " | ".join(fraction_header(f) for f in fractions) + " |",
             "|---|" + "---:|" * len(fractions)]
    for label in labels:
        shown = label + (CONDENSATION_MARK if label in marked else "")
        lines.append(f"| {shown} | " + " | ".join(cell(label, f) for f in fractions) + " |")
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
        parts.append(f"coreset training (step budget): {'/'.join(map(str, values('steps')))} SGD steps per "
                     f"coreset ({epochs_text} epochs)")
    else:
        parts.append(f"coreset training: {epochs_text} epochs over every coreset")
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
        group_rows = [r for r in rows if (setting_label(r), r["model"]) == (dataset, model)]
        ceiling = [s for s in group if s["label"] == FULL]
        group = [s for s in group if s["label"] != FULL]
        labels = list(dict.fromkeys(s["label"] for s in group))
        fractions = sorted({s["fraction"] for s in group})
        by = {(s["label"], s["fraction"]): s for s in group}
        lines += [f"## {setting_title(dataset, model)}", "", _config_line(group_rows), ""]
        condensed = list(dict.fromkeys(s["label"] for s in group if s["kind"] == CONDENSATION))
        if condensed:
            lines += [_condensation_note(group, group_rows, condensed), ""]
        if ceiling:
            c = ceiling[0]
            method_seeds = len({int(r["seed"]) for r in group_rows if r["method"] != FULL})
            fewer = (f"; the methods have {method_seeds} seed(s): the ceiling is a reference line, not a paired "
                     f"comparison" if 0 < c["n"] < method_seeds else "")
            lines += [f"Ceiling ({FULL}: the whole training set, {c['n_selected']:.0f} samples, same protocol): "
                      f"final {_fmt(c['final_mean'], c['final_std'])} %, best {_fmt(c['best_mean'], c['best_std'])} % "
                      f"({c['n']} seed(s){fewer}).", ""]
        if not group:
            continue

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
        lines += _table("Final-epoch test accuracy (%)", labels, fractions, stat_cell("final"), condensed)
        lines += _table("Best test accuracy over evaluated epochs (%)", labels, fractions, stat_cell("best"), condensed)
        lines += _table(f"Paired difference to {baseline}, final accuracy (points, wins/pairs)", others,
                        fractions, diff_cell("final_acc"), condensed)
        lines += _table(f"Paired difference to {baseline}, best accuracy (points, wins/pairs)", others,
                        fractions, diff_cell("best_acc"), condensed)

        def size_cell(label, fraction):
            s = by.get((label, fraction))
            if s is None:
                return "-"
            return (f"{s['n_selected']:.0f} / {format_seconds(s['selection_seconds'])} / "
                    f"{format_seconds(s['training_seconds'])}")

        lines += _table("Coreset size / selection time / training time (mean per run)", labels, fractions,
                        size_cell, condensed)
    return "\n".join(lines)


def _condensation_note(group, group_rows, condensed):
    """The paragraph that says which rows are condensation and at which fractions they are."""
    fractions = sorted({s["fraction"] for s in group})
    present = sorted({s["fraction"] for s in group if s["label"] in condensed})
    absent = [f for f in fractions if f not in present]
    selection_augment = sorted({str(r.get("augment")) for r in group_rows
                                if r.get("kind") == SELECTION and r.get("augment")})
    return (f"{CONDENSATION_MARK.strip()} condensation (kind = condensation): {', '.join(condensed)} learn as many "
            f"synthetic images per class as the selectors keep at the fraction (size = stored images, selection "
            f"time = condensation time), and the network trains on them under the same protocol with DSA "
            f"augmentation (augment = dsa)"
            + (f" where the selectors' coresets get {'/'.join(selection_augment)}" if selection_augment else "")
            + f". Condensation rows at {', '.join(map(fraction_header, present))}"
            + (f"; none at {', '.join(map(fraction_header, absent))} (a fraction that gives the classes different "
               f"budgets has no single number of images per class to learn; or the run has not reached it)"
               if absent else "") + ".")


def format_seconds(value):
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def write_summary(rows, out_dir, baseline=BASELINE):
    """Write summary.md and accuracy.png for these rows into out_dir; returns their paths."""
    from .plots import plot_accuracy  # matplotlib only when a plot is written

    out_dir = Path(out_dir)
    summary_path = out_dir / SUMMARY_FILE
    summary_path.write_text(summary_markdown(rows, baseline) + "\n")
    plot_path = out_dir / PLOT_FILE
    plot_accuracy(rows, plot_path, baseline=baseline)
    return summary_path, plot_path

