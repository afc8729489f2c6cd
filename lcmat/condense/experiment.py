"""Condensation rows of `lcmat experiment`: a condensation method at a fraction f learns as many
synthetic images per class as the selectors keep at f, and the experiment trains its network on them.

Images per class: the selectors' per-class budget at f, k_c = round(f n_c) (lcmat.coreset.class_budgets,
the same rounding), when it is one whole number ipc >= 1 for every class; at a fraction that gives the
classes different budgets (an imbalanced training set, or classes of unequal size where the rounding
differs) a condenser has no single ipc and the method has no row there. The synthetic set has the
storage of the selectors' coreset (ipc images per class, ``n_selected``); with multi-formation
(factor f > 1, LCMat-C) each stored image decodes into f^2 training images.

Learning: the method's preset (``preset`` option, lcmat.condense.preset_config: 'cpu' by default) with
the method's options over it, on ConvNet-3 (the condensation papers' matching network, whatever the
experiment's network), seeded by the experiment's seed. Each set is cached in ``OUT/condensed/`` under
a name of its method, options, images per class and seed, with its settings (configuration, dataset,
training-set size and a digest of the labels) stored beside it: a cached set is used only when they
match, and an interrupted condensation continues from its checkpoint.

Training: the experiment's protocol (its network, epochs or step budget, lr, batch size, seed,
evaluations) on the decoded images, with DSA on every batch and its own parameters per image (the
condensation papers' evaluation protocol) in place of the selectors' crop + flip; the row records
``augment = dsa`` so the difference is visible.
"""
import hashlib
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import torch

from ..coreset import class_budgets
from ..methods import CONDENSATION, CONDENSATION_PRESET
from .methods import get_condenser
from .presets import preset_config
from .synthetic import CondensedSet, dsa_training_augment

CONDENSED_DIR = "condensed"
AUGMENT = "dsa"


def condensation_ipc(counts, fraction):
    """The images per class a condensation method learns at ``fraction``: the selectors' per-class
    budget when it is the same whole number (>= 1) for every class, else None (no row)."""
    budgets = class_budgets(counts, fraction)
    return int(budgets[0]) if len(budgets) and (budgets == budgets[0]).all() and budgets[0] >= 1 else None


def make_condenser(name, options, ipc, dataset_name, seed, device="cpu", backend=None, progress=False):
    """The condenser of a condensation method (CONDENSATION key) at ``ipc``: its preset's
    configuration for this dataset, then ``options`` over it."""
    options = dict(options)
    preset = options.pop("preset", CONDENSATION_PRESET)
    method = CONDENSATION[name]
    config, _ = preset_config(method, preset, dataset_name, ipc)
    config.update(options)
    if method == "lcmat-c":
        config["backend"] = backend
    return get_condenser(method, ipc, seed=seed, device=device, progress=progress, **config)


class CondensedCoreset:
    """A learnt synthetic set in the experiment's coreset shape: ``len`` is the stored images (the
    storage budget, n_selected); ``dataset`` the decoded images the network trains on, ``indices``
    all of them, no weights; ``augment`` the per-image DSA of training."""

    def __init__(self, condensed, seed, strategy=None):
        self.condensed = condensed
        self.dataset = condensed.dataset()
        self.indices = np.arange(len(self.dataset))
        self.weights = None
        self.augment = dsa_training_augment(seed, strategy)

    def __len__(self):
        return len(self.condensed)


def _labels_digest(labels):
    return hashlib.sha1(np.ascontiguousarray(np.asarray(labels, dtype=np.int64)).tobytes()).hexdigest()[:16]


def cache_stem(dataset_name, tag, name, options_text, ipc, seed):
    """The file name (without suffix) of a cached synthetic set."""
    parts = [dataset_name] + ([tag] if tag else []) + [name] + ([options_text] if options_text else [])
    stem = "-".join(parts + [f"ipc{ipc}", f"s{seed}"])
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", stem)


def learn_condensed(spec, ipc, train, dataset_name, seed, out_dir, tag="", device="cpu", backend=None,
                    progress=False, log=print):
    """(CondensedCoreset, seconds of condensation, whether it came from the cache) of one method at
    ``ipc`` images per class for one seed; see the module docstring for the cache."""
    condenser = make_condenser(spec.name, spec.options, ipc, dataset_name, seed, device, backend, progress)
    settings = json.dumps({"method": spec.name, "options": spec.options_text, "config": condenser.config(),
                           "dataset": dataset_name, "corruption": tag, "train_size": len(train),
                           "labels": _labels_digest(train.targets)}, sort_keys=True, default=str)
    folder = Path(out_dir) / CONDENSED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stem = cache_stem(dataset_name, tag, spec.name, spec.options_text, ipc, seed)
    path, ckpt_path = folder / f"{stem}.pt", folder / f"{stem}.checkpoint.pt"
    strategy = getattr(condenser, "dsa_strategy", None)
    if path.is_file():
        cached = CondensedSet.load(path)
        if cached.meta.get("settings") == settings:
            return CondensedCoreset(cached, seed, strategy), float(cached.meta.get("seconds", 0.0)), True
        log(f"  {path.name}: learnt with other settings; learning it again")
    resume = None
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state.get("settings") == settings:
            resume = state
            log(f"  {ckpt_path.name}: continuing {spec.name} at outer iteration {int(state['iteration'])}")

    def on_checkpoint(state, partial):
        state = dict(state, settings=settings, seconds=elapsed())
        torch.save(state, f"{ckpt_path}.tmp")
        os.replace(f"{ckpt_path}.tmp", ckpt_path)

    before = float(resume.get("seconds", 0.0)) if resume is not None else 0.0
    start = time.perf_counter()

    def elapsed():
        return before + time.perf_counter() - start

    condensed = condenser.condense(train, resume=resume, on_checkpoint=on_checkpoint,
                                   meta={"dataset": dataset_name, "settings": settings})
    seconds = elapsed()
    condensed.meta["seconds"] = seconds
    condensed.save(path)
    if ckpt_path.is_file():
        ckpt_path.unlink()
    return CondensedCoreset(condensed, seed, strategy), seconds, False
