"""The accuracy experiment: pre-train, select with every method and fraction, train on each coreset.

Protocol (the LCMat and DeepCore papers'), per seed:

1. pre-train one selection model on the whole training set (SGD lr 0.1, momentum 0.9, weight decay
   5e-4, Nesterov, batch 128, no schedule, no augmentation; forgetting counts recorded), cached on
   disk by (dataset, model, selection epochs, seed);
2. extract its features once (embeddings, logits; the train-BatchNorm features of LCMat's compat
   mode only when a method asks for them);
3. for every method and fraction: select, then train a fresh network (initialised from ``seed``, so
   every method of a seed starts from the same weights) on the coreset for a fixed number of epochs
   with SGD (momentum 0.9, Nesterov, weight decay 5e-4) and per-iteration cosine annealing, weighted
   loss when the coreset has weights, crop + flip augmentation on CIFAR-10; the pseudo-method
   ``full`` trains the same way on the whole training set, once per seed: the ceiling;
4. append one row per (dataset, model, method, fraction, seed) to ``results.csv`` as soon as it is
   done, so that ``resume=True`` can continue an interrupted run.

Then ``summary.md`` (mean +- std over seeds, and the paired difference to Uniform: for each seed,
method minus uniform trained on the same seed's selection model) and ``accuracy.png``.

The step-budget protocol (``steps``): train every coreset for a fixed number of SGD steps rather than
a fixed number of epochs, ``epochs = ceil(steps / ceil(k / batch_size))``. It is not the papers'
protocol (theirs gives a 10 % coreset ten times the updates of a 1 % one) and can rank methods
differently; every row records its ``protocol`` and rows of the two are never averaged or paired.

Condensation methods (``lcmat_c``, ``dc``, ``dsa``, ``dm``; lcmat.methods.CONDENSATION) run as rows beside
the selectors where a fraction gives every class the same whole number of images ipc: they learn ipc
synthetic images per class (cached per seed in ``OUT/condensed/``) and the network trains on them under
the same protocol, with DSA augmentation (``kind`` and ``augment`` columns; see
lcmat.condense.experiment). Uniform is their random-real-images baseline and the paired differences
include them.

Corrupted training sets: ``label_noise``, ``imbalance`` and ``corruption_seed`` go to the training
split's loader (the test split stays clean), are recorded in every row, key the selection-model cache
and must match on ``resume``.

A per-class pool (``pool``, ``pool_seed``): the training set is a seeded draw of ``pool`` images per
class, made once per experiment from ``pool_seed`` (independent of the method seeds and of
``corruption_seed``, so every method and seed selects from the same pool and trains on it); the
selection model is pre-trained on the pool, and ``full`` trains on the whole pool. The pool is drawn
first and then corrupted (imbalance and label noise act on the pool). Recorded, cached and checked on
``resume`` like the corruption.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .coreset import class_budgets
from .validation import check_positive
from .data import load_dataset
from .features import extract_features, extract_features_train_bn
from .models import get_model
from .methods import MethodSpec, get_method, parse_methods, parse_model_option, parse_option  # noqa: F401
from .methods import CONDENSATION_KIND
from .results import (BASELINE, CONFIG_COLUMNS, EPOCHS_PROTOCOL, FULL, KEY_COLUMNS,  # noqa: F401
                      PLOT_FILE, RESULT_COLUMNS, RESULTS_FILE, STEPS_PROTOCOL, SUMMARY_FILE, append_row, check_same_config, format_seconds,
                      fraction_header, fraction_text, paired_differences, read_results, repair_results,
                      row_key, summarize, summary_markdown, write_summary)
from .train import cached_selection_model, train_on_coreset, train_selection_model

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


# Selection-model protocol of the papers (fixed; the cache key assumes it).
SELECTION_MODELS_FILE = "selection_models.json"
SELECTION_LR = 0.1
SELECTION_BATCH = 128
FEATURE_BATCH = 256

PRESETS = {
    # The papers' protocol, for a GPU: ResNet-18 on CIFAR-10, selection model 10 epochs on the full set,
    # 200 epochs over every coreset (SGD lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4, cosine,
    # crop + flip), evaluated every epoch.
    "paper": dict(dataset="cifar10", model="resnet18", selection_epochs=10, epochs=200, steps=None,
                  seeds=(0, 1, 2, 3, 4), fractions=(0.001, 0.005, 0.01, 0.05, 0.1), batch_size=128,
                  lr=0.1, evaluations=None, device="cuda"),
    # The papers' protocol sized for 2 CPU cores: the same fixed epoch count for every fraction, the
    # largest that keeps the largest fraction's run (10 %) within a few minutes of LeNet on
    # Fashion-MNIST (measured epoch time: docs/BENCHMARKS, docs/experiments.md). 4 test evaluations per
    # coreset. Coreset lr 0.05: LeNet has no normalisation, and at 0.1 (with momentum 0.9, Nesterov)
    # some coreset trainings collapse.
    "cpu": dict(dataset="fashion-mnist", model="lenet", selection_epochs=10, epochs=50, steps=None,
                seeds=(0, 1, 2), fractions=(0.005, 0.01, 0.05, 0.1), batch_size=128, lr=0.05,
                evaluations=4, device="cpu"),
    # The step-budget protocol (not the papers'): 300 SGD steps per coreset whatever its size, so the
    # small coresets get as many updates as the large ones. Otherwise as "cpu".
    "cpu-steps": dict(dataset="fashion-mnist", model="lenet", selection_epochs=10, epochs=None, steps=300,
                      seeds=(0, 1, 2), fractions=(0.005, 0.01, 0.05, 0.1), batch_size=128, lr=0.05,
                      evaluations=4, device="cpu"),
}


# --------------------------------------------------------------------------------------------------
# Small arithmetic
# --------------------------------------------------------------------------------------------------

def epochs_for_steps(steps, k, batch_size):
    """Epochs that give at least ``steps`` SGD steps on ``k`` samples: ceil(steps / ceil(k / batch))."""
    steps = check_positive("steps", steps, integer=True)
    return math.ceil(steps / math.ceil(k / batch_size))


def eval_every_for(epochs, evaluations):
    """Evaluate every this many epochs so that about ``evaluations`` evaluations happen (None: every
    epoch). The last epoch is always evaluated (train_on_coreset does it)."""
    if evaluations is None:
        return 1
    return max(1, epochs // int(evaluations))



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
    if not seeds:
        raise ValueError("seeds: no seed given")
    for seed in seeds:
        check_positive("seeds", seed, integer=True, allow_zero=True)
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
    if len({fraction_text(f) for f in checked}) != len(checked):
        raise ValueError(f"fractions: listed more than once in {fractions!r}")
    return sorted(checked)


def corruption_tag(corruption):
    """'' for the whole clean training set, else e.g. 'noise0.2-imb10-cs0', 'pool1000-ps0' or
    'pool1000-ps0-noise0.2-imb1-cs0' (the selection-model cache keys on it: a model trained on corrupted
    labels or on a pool is never reused for another training set)."""
    parts = []
    if corruption.get("pool") is not None:
        parts.append(f"pool{int(corruption['pool'])}-ps{int(corruption['pool_seed'])}")
    imbalance, noise = float(corruption["imbalance"]), float(corruption["label_noise"])
    if imbalance != 1.0 or noise != 0.0:
        parts.append(f"noise{noise:g}-imb{imbalance:g}-cs{int(corruption['corruption_seed'])}")
    return "-".join(parts)


def _split_full(methods):
    """(the methods without the pseudo-method 'full', whether 'full' was listed)."""
    entries = methods.split(",") if isinstance(methods, str) else list(methods)
    entries = [str(m).strip() for m in entries if str(m).strip()]
    kept = [m for m in entries if m.lower() != FULL]
    if len(entries) - len(kept) > 1:
        raise ValueError(f"methods: listed more than once: {FULL}")
    return kept, len(kept) < len(entries)


class _FullSet:
    """The whole training set as an unweighted coreset (the ceiling row)."""

    def __init__(self, indices):
        self.indices, self.weights = indices, None

    def __len__(self):
        return len(self.indices)


def format_model_label(model, model_options):
    if not model_options:
        return str(model)
    return f"{model}(" + " ".join(f"{k}={model_options[k]}" for k in sorted(model_options)) + ")"


class SelectionFeatures:
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
    if spec.name == FULL or spec.kind == CONDENSATION_KIND:
        return False
    return spec.name != "uniform" or bool(spec.options.get("coverage"))


def select_coreset(spec, fraction, seed, labels, features, stats, backend, attacks=None):
    """(Coreset, wall seconds) of one method at one fraction."""
    options = dict(spec.options)
    selector = get_method(spec.name, fraction=fraction, seed=seed, progress=False, backend=backend, **options)
    extra, H, Z = {}, None, None
    if stats.get("forgetting") is not None:  # Forgetting, and difficulty="forgetting" under coverage
        extra["forgetting"] = stats["forgetting"]
    if getattr(selector, "needs_model", False):  # DeepFool attacks the selection model itself
        scores, attack_seconds = _attack_scores(spec, selector, features, attacks)
        start = time.perf_counter()
        coreset = selector.select(features.model, features.train, device=features.device, scores=scores, **extra)
        return coreset, attack_seconds + time.perf_counter() - start
    if selector.required():
        if getattr(selector, "mode", "paper") == "compat":
            H, Z = features.train_bn(selector.batch_size)
        else:
            H, Z, _ = features.eval_mode()
    start = time.perf_counter()
    coreset = selector.select_features(embeddings=H, logits=Z, labels=labels, **extra)
    return coreset, time.perf_counter() - start


def _attack_scores(spec, selector, features, attacks):
    """(scores, seconds) of a model-attacking method (DeepFool) on this seed's selection model: the
    attack does not depend on the budget, so it runs once per method variant and seed and every
    fraction reuses it (`attacks`, a dict kept per seed); each fraction's selection time still
    counts the attack's seconds, as if it had run again."""
    if attacks is None:
        attacks = {}
    key = (spec.name, spec.options_text)
    if key not in attacks:
        start = time.perf_counter()
        scores = selector.attack_scores(features.model, features.train, features.device)
        attacks[key] = (scores, time.perf_counter() - start)
    return attacks[key]


def run_experiment(dataset="fashion-mnist", model="lenet", methods=("uniform", "lcmat", "fdmat"),
                   fractions=(0.005, 0.01, 0.05, 0.1), seeds=(0, 1, 2), out_dir="results",
                   selection_epochs=10, epochs=200, steps=None, batch_size=128, lr=0.1, device="cpu",
                   data_dir=None, resume=False, progress=True, method_options=None, evaluations=None,
                   backend=None, augment=None, model_options=None, cache_dir=None, overwrite=False,
                   label_noise=0.0, imbalance=1.0, corruption_seed=0, selection_model=None,
                   selection_model_options=None, pool=None, pool_seed=0, log=print):
    """Run the coreset-accuracy experiment and write results.csv, summary.md and accuracy.png.

    dataset, model: names for :func:`lcmat.data.load_dataset` and :func:`lcmat.models.get_model`
    (model_options: extra constructor arguments, e.g. ``{"width": 32}``). methods: names, ``"all"``
    or ``"name:key=value"`` variants (see :func:`parse_methods`), plus the pseudo-method ``"full"`` (the
    whole training set, once per seed, recorded at fraction 1: the ceiling); method_options: ``{method: {key:
    value}}``. fractions: per-class fractions in (0, 1]. seeds: one selection model per seed.
    selection_epochs: selection-model epochs (cached). epochs / steps: coreset training length; steps
    (when given) overrides epochs with ``ceil(steps / ceil(k / batch_size))``. evaluations: number of
    test evaluations per coreset training (None: after every epoch; the last epoch is always
    evaluated). augment: crop + flip on the coreset (default: on for CIFAR-10 only). backend: the
    selectors' kernel backend. cache_dir: selection-model checkpoints (default the package cache).
    selection_model, selection_model_options: the network that is pre-trained and selects, when it is
    not ``model`` (selection across architectures; default: ``model`` with ``model_options``).
    label_noise, imbalance, corruption_seed: corruption of the training split (see
    :func:`lcmat.data.load_dataset`; the test split stays clean), recorded in every row.
    pool, pool_seed: train and select on ``pool`` images per class of the training split drawn from
    ``pool_seed`` (before the corruption; None: the whole split), recorded in every row.

    resume: skip the (dataset, model, method, options, fraction, seed) rows already in
    ``out_dir/results.csv`` (the run's settings must match them). Without resume an existing
    results.csv is an error unless overwrite=True, which starts it afresh.

    Returns the list of all rows in results.csv (dicts, see :func:`read_results`).
    """
    out_dir = Path(out_dir)
    methods, ceiling = _split_full(methods)
    specs = parse_methods(methods, method_options) if methods else []
    if not specs and not ceiling:
        raise ValueError("methods: no method given")
    seeds = _check_seeds(seeds)
    if steps is None and epochs is None:
        raise ValueError("epochs: give epochs or steps")
    if steps is not None:
        check_positive("steps", steps, integer=True)
    else:
        check_positive("epochs", epochs, integer=True)
    check_positive("selection_epochs", selection_epochs, integer=True)
    if evaluations is not None:
        check_positive("evaluations", evaluations, integer=True)
    device = _check_device(device)
    model_options = dict(model_options or {})

    train = load_dataset(dataset, "train", data_dir, imbalance=imbalance, label_noise=label_noise,
                         corruption_seed=corruption_seed, pool=pool, pool_seed=pool_seed)
    corruption = dict(train.corruption, **train.pool)
    test = load_dataset(dataset, "test", data_dir)
    dataset_name = train.name
    labels = train.targets
    counts = np.bincount(labels, minlength=train.num_classes)
    fractions = _check_fractions(fractions, counts)
    if augment is None:
        augment = dataset_name == "cifar10"
    model_label = format_model_label(model, model_options)
    in_channels, im_size = train.in_channels, train.im_size

    def build():
        return get_model(model, train.num_classes, in_channels, im_size, **model_options)

    if selection_model is None:
        selection_model, selection_model_options = model, model_options
    selection_model_options = dict(selection_model_options or {})
    selection_label = format_model_label(selection_model, selection_model_options)

    def build_selection():
        return get_model(selection_model, train.num_classes, in_channels, im_size, **selection_model_options)

    build()  # fail on a bad model name or size before any work
    build_selection()
    config = dict(dataset=dataset_name, model=model_label, selection_model=selection_label,
                  protocol=EPOCHS_PROTOCOL if steps is None else STEPS_PROTOCOL,
                  selection_epochs=int(selection_epochs), epochs=None if steps is not None else int(epochs),
                  steps=None if steps is None else int(steps), batch_size=int(batch_size), lr=float(lr),
                  imbalance=float(corruption["imbalance"]), label_noise=float(corruption["label_noise"]),
                  corruption_seed=int(corruption["corruption_seed"]), pool=corruption["pool"],
                  pool_seed=corruption["pool_seed"])
    cache_tag = corruption_tag(corruption)

    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS_FILE
    done = set()
    if results_path.is_file() and results_path.stat().st_size > 0:
        if resume:
            existing = repair_results(results_path)  # torn or invalid rows are dropped and redone
            check_same_config(existing, config, results_path)
            done = {row_key(r) for r in existing}
        elif overwrite:
            results_path.unlink()
        else:
            raise ValueError(f"out_dir: {str(results_path)!r} already exists; pass resume=True (--resume) to "
                             f"continue it, overwrite=True (--overwrite) to start afresh, or another out_dir")

    condensation_ipc, condensation_text = _condensation_plan(specs, counts, fractions)
    plan = [(seed, fraction, spec) for seed in seeds for fraction in fractions for spec in specs
            if spec.kind != CONDENSATION_KIND or condensation_ipc[fraction] is not None]
    if ceiling:
        plan += [(seed, 1.0, MethodSpec(FULL)) for seed in seeds]
        plan.sort(key=lambda p: p[0])  # seed by seed: one selection model in memory at a time
    pending = [p for p in plan if (dataset_name, model_label, p[2].name, p[2].options_text,
                                   fraction_text(p[1]), p[0]) not in done]
    log(f"experiment: {dataset_name} ({len(train)} train / {len(test)} test), model {model_label}"
        + (f" selected with {selection_label}" if selection_label != model_label else "") + ", "
        f"{len(specs)} methods x {len(fractions)} fractions x {len(seeds)} seeds"
        + (" + the full-set ceiling" if ceiling else "") + f" = {len(plan)} runs, "
        + (f"{steps} SGD steps per coreset (step budget)" if steps is not None else f"{epochs} epochs per coreset")
        + (f", training set {cache_tag}" if cache_tag else "")
        + (f", {len(plan) - len(pending)} already done" if len(pending) < len(plan) else "")
        + f"; device {device}")
    if condensation_text:
        log(condensation_text)

    selection_log = {}
    bar = tqdm(total=len(pending), desc="experiment", unit="run", disable=not progress)
    for seed in seeds:
        todo = [p for p in pending if p[0] == seed]
        if not todo:
            continue
        stats, features, attacks = {}, None, {}
        if any(_needs_selection_model(spec) for _, _, spec in todo):
            net, stats = pretrained_selection_model(dataset_name, selection_label, build_selection, train,
                                                    selection_epochs, seed, device, progress, cache_dir, cache_tag)
            features = SelectionFeatures(net, train, device, progress)
            selection_log[seed] = {k: stats.get(k) for k in ("seconds", "from_cache", "cache_path")}
            selection_log[seed]["train_acc"] = stats["epoch_acc"][-1] if stats.get("epoch_acc") else None
            log(f"seed {seed}: selection model {'loaded from cache' if stats.get('from_cache') else 'trained'}"
                f" ({selection_epochs} epochs, last-epoch train accuracy {selection_log[seed]['train_acc']:.1f} %)")
        for _, fraction, spec in todo:
            data, run_augment, kind = train, augment, (FULL if spec.name == FULL else spec.kind)
            if spec.name == FULL:
                coreset, selection_seconds = _FullSet(np.arange(len(train))), 0.0
            elif spec.kind == CONDENSATION_KIND:  # learn (or load) the synthetic set, train on it with DSA
                from .condense.experiment import learn_condensed
                coreset, selection_seconds, _ = learn_condensed(
                    spec, condensation_ipc[fraction], train, dataset_name, seed, out_dir, cache_tag, device,
                    backend, progress, log)
                data, run_augment = coreset.dataset, coreset.augment
            else:
                coreset, selection_seconds = select_coreset(spec, fraction, seed, labels, features, stats, backend, attacks)
            k = len(coreset)
            run_epochs = epochs_for_steps(steps, len(coreset.indices), batch_size) if steps is not None else int(epochs)
            result = train_on_coreset(build, data, coreset.indices, coreset.weights, epochs=run_epochs, lr=lr,
                                      batch_size=batch_size, test_dataset=test, seed=seed, device=device,
                                      augment=run_augment, eval_every=eval_every_for(run_epochs, evaluations),
                                      progress=progress)
            row = dict(config, method=spec.name, options=spec.options_text, fraction=fraction_text(fraction),
                       seed=seed, n_selected=k, weighted=coreset.weights is not None, epochs=run_epochs,
                       final_acc=round(result["final_acc"], 4), best_acc=round(result["best_acc"], 4),
                       selection_seconds=round(selection_seconds, 4),
                       training_seconds=round(result["seconds"], 3), kind=kind,
                       augment="dsa" if kind == CONDENSATION_KIND else augment_label(augment))
            append_row(results_path, row)
            bar.update(1)
            bar.set_postfix(last=f"{spec.label} {fraction_header(fraction)} s{seed}: {row['final_acc']:.2f}")
            message = (f"  seed {seed} {fraction_header(fraction):>7} {spec.label:<18} n={k:<6} "
                       f"final {row['final_acc']:6.2f}  best {row['best_acc']:6.2f}  "
                       f"select {format_seconds(selection_seconds):>8}  train {format_seconds(result['seconds']):>7}")
            if progress:
                tqdm.write(message)
            else:
                log(message)
        if features is not None:
            selection_log[seed]["feature_seconds"] = round(features.seconds, 3)
    bar.close()

    if selection_log:
        _update_selection_log(out_dir / SELECTION_MODELS_FILE, dataset_name + (f"/{cache_tag}" if cache_tag else ""),
                              selection_label, selection_epochs, selection_log)
    rows = read_results(results_path) if results_path.is_file() else []
    if rows:
        summary_path, plot_path = write_summary(rows, out_dir)
        log(f"wrote {results_path}, {summary_path}, {plot_path}")
    return rows


def _condensation_plan(specs, counts, fractions):
    """({fraction: images per class of the condensation rows, or None where there are none}, the line
    that says which fractions have condensation rows and which not, and why ('' without them))."""
    from .condense.experiment import condensation_ipc

    ipc = {f: condensation_ipc(counts, f) for f in fractions}
    names = [s.label for s in specs if s.kind == CONDENSATION_KIND]
    if not names:
        return ipc, ""
    with_rows = [f"{fraction_header(f)} ({ipc[f]} per class)" for f in fractions if ipc[f] is not None]
    without = [fraction_header(f) for f in fractions if ipc[f] is None]
    return ipc, (f"condensation methods {', '.join(names)}: rows at " + (", ".join(with_rows) or "no fraction")
                 + (f"; none at {', '.join(without)} (the classes' budgets differ there: no single number of "
                    f"images per class)" if without else ""))


def augment_label(augment):
    """The augmentation column of a selection row: 'crop_flip', 'none', or 'custom' (a callable)."""
    if augment is None or augment is False:
        return "none"
    if augment is True or augment == "crop_flip":
        return "crop_flip"
    return augment if isinstance(augment, str) else "custom"


def pretrained_selection_model(dataset_name, model_label, build, train, selection_epochs, seed, device, progress,
                     cache_dir, tag=""):
    def train_fn(net):
        return train_selection_model(net, train, epochs=selection_epochs, lr=SELECTION_LR,
                                     batch_size=SELECTION_BATCH, seed=seed, device=device,
                                     record_forgetting=True, progress=progress)

    def build_seeded():
        torch.manual_seed(seed)  # the same initial weights whether or not the cache is warm
        return build()

    net, stats = cached_selection_model(dataset_name, model_label, selection_epochs, seed, build_seeded, train_fn,
                                        cache_dir=cache_dir, tag=tag)
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
