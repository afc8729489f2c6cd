"""Training: selection-model training (with forgetting counts), coreset training, evaluation and a
checkpoint cache. Feature extraction (embeddings and logits of a trained model) is lcmat.features.

Everything is device-agnostic (pass ``device="cuda"`` or ``"cpu"``) and controlled by ``seed``:
the training functions seed torch's global RNGs with it (model initialisation when a builder is
passed, dropout, augmentation) and draw the shuffling order from a separate generator seeded with it.
On CUDA, bitwise reproducibility also needs deterministic kernels, which this module does not force.

Datasets: anything indexable that returns ``(image tensor, label)``; an ``ArrayDataset`` (lcmat.data)
is served batch by batch without per-item overhead. An ``ArrayDataset.transform`` counts as training
augmentation: :func:`train_on_coreset` applies it, while the selection protocol
(:func:`train_selection_model`), :func:`evaluate` and feature extraction (lcmat.features) ignore it. Other datasets
are used exactly as they return their items.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import RandomCropFlip, default_cache_dir
from .features import iterate_batches, load_batch, restore_training_flags, training_flags
from .validation import check_positive

__all__ = [
    "train_selection_model",
    "train_on_coreset",
    "evaluate",
    "cached_selection_model",
    "count_forgetting_events",
    "weighted_cross_entropy",
    "iterate_batches",
    "COSINE_ETA_MIN",
]

COSINE_ETA_MIN = 1e-4


# --------------------------------------------------------------------------------------------------
# Small pure pieces
# --------------------------------------------------------------------------------------------------

def count_forgetting_events(correct_history):
    """Forgetting events per sample (Toneva et al., 2019) from a correctness history.

    correct_history: bool array [T, N] (or [T] for one sample): entry [t, i] says whether sample i was
    classified correctly at its t-th presentation. A forgetting event is a transition from correct at
    presentation t to incorrect at presentation t + 1.

    Convention for samples never classified correctly in any of the T presentations ("never learnt"):
    they get T, which is more than any learnt sample can reach (at most T // 2 events), so sorting by
    count ranks them as the most forgettable, as Toneva et al. do by treating them as forgotten
    infinitely often. Returns np.int64 [N] (an int for a 1-D history).
    """
    history = np.asarray(correct_history, dtype=bool)
    single = history.ndim == 1
    if single:
        history = history[:, None]
    if history.ndim != 2:
        raise ValueError(f"correct_history: expected shape [T, N] or [T], got {history.shape}")
    presentations = history.shape[0]
    forgotten = (history[:-1] & ~history[1:]).sum(axis=0).astype(np.int64)
    never_learnt = ~history.any(axis=0)
    counts = np.where(never_learnt, presentations, forgotten).astype(np.int64)
    return int(counts[0]) if single else counts


def weighted_cross_entropy(logits, targets, weights=None):
    """Batch cross-entropy, optionally weighted per sample.

    Unweighted: mean_i l_i. Weighted: mean_i (w_i / mean_batch(w)) l_i, which equals
    sum_i w_i l_i / sum_i w_i; equal weights give the unweighted loss and a zero weight removes the
    sample's gradient. A batch whose weights are all zero contributes a loss of 0.
    """
    losses = F.cross_entropy(logits, targets, reduction="none")
    if weights is None:
        return losses.mean()
    w = torch.as_tensor(weights).to(device=losses.device, dtype=losses.dtype)
    if w.shape != losses.shape:
        raise ValueError(f"weights: expected shape {tuple(losses.shape)}, got {tuple(w.shape)}")
    scale = w / w.mean().clamp_min(torch.finfo(w.dtype).tiny)
    return (scale * losses).mean()


def _cosine_lr(base_lr, step, total_steps, eta_min):
    return eta_min + (base_lr - eta_min) * (1.0 + math.cos(math.pi * step / total_steps)) / 2.0


# --------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------

def _check_indices(indices, n):
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"indices: expected a non-empty 1-D array of sample indices, got shape {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices: expected integers, got dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"indices: values must lie in [0, {n}), got range [{idx.min()}, {idx.max()}]")
    return idx.astype(np.int64)


def _check_weights(weights, n):
    if weights is None:
        return None
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().numpy()
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights: expected one weight per index ({n}), got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights: must be finite and non-negative")
    if not np.any(w > 0):
        raise ValueError("weights: all weights are zero")
    return torch.from_numpy(w.astype(np.float32))


def _materialize(model, seed, argument="model"):
    """Seed torch's global RNGs, then build the model if a builder (zero-argument callable) was given."""
    torch.manual_seed(seed)
    if isinstance(model, nn.Module):
        return model
    if callable(model):
        built = model()
        if not isinstance(built, nn.Module):
            raise ValueError(f"{argument}: the builder returned {type(built).__name__}, not an nn.Module")
        return built
    raise ValueError(f"{argument}: expected an nn.Module or a zero-argument builder, got {type(model).__name__}")


def _sgd(model, lr, momentum, weight_decay, nesterov):
    lr = float(check_positive("lr", lr, allow_zero=True))
    momentum = float(check_positive("momentum", momentum, allow_zero=True))
    weight_decay = float(check_positive("weight_decay", weight_decay, allow_zero=True))
    nesterov = bool(nesterov) and momentum > 0  # torch rejects Nesterov without momentum
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                           weight_decay=weight_decay, nesterov=nesterov)


def _resolve_augment(augment):
    if augment is None or augment is False:
        return None
    if augment is True or augment in ("crop_flip", "cifar"):
        return RandomCropFlip(padding=4)
    if callable(augment):
        return augment
    raise ValueError(f"augment: expected None, True, 'crop_flip' or a callable on [B, C, H, W], got {augment!r}")


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------

def train_selection_model(model, dataset, epochs=10, lr=0.1, momentum=0.9, weight_decay=5e-4,
                          nesterov=True, batch_size=128, seed=0, device="cpu", record_forgetting=True,
                          progress=True, optimizer=None):
    """Train the selection model on the whole dataset (the papers' selection protocol).

    Constant learning rate (no schedule), no augmentation, SGD, reshuffled every epoch.
    optimizer: a function of the model's parameters returning another torch optimizer (then lr,
    momentum, weight_decay and nesterov are not used); None: SGD with those settings.
    model: an nn.Module (trained in place) or a zero-argument builder (built after seeding).
    While training, each sample's correctness at its presentation (argmax of the training-mode
    forward pass, before the step) is recorded, giving the forgetting counts of
    :func:`count_forgetting_events` (never-learnt samples get ``epochs``).

    Returns ``(model, stats)`` with stats: ``forgetting`` (np.int64 [N], None when
    record_forgetting=False), ``correct_history`` (bool [epochs, N] or None), ``epoch_loss`` and
    ``epoch_acc`` (per-epoch mean training loss and accuracy in percent), ``seconds``.
    """
    epochs = int(check_positive("epochs", epochs, integer=True))
    batch_size = int(check_positive("batch_size", batch_size, integer=True))
    n = len(dataset)
    if n == 0:
        raise ValueError("dataset: is empty")
    device = torch.device(device)
    model = _materialize(model, seed).to(device)
    optimizer = _sgd(model, lr, momentum, weight_decay, nesterov) if optimizer is None else optimizer(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    history = np.zeros((epochs, n), dtype=bool) if record_forgetting else None
    epoch_loss, epoch_acc = [], []
    steps_per_epoch = math.ceil(n / batch_size)
    start_time = time.perf_counter()
    bar = tqdm(total=epochs * steps_per_epoch, desc="selection model", disable=not progress, leave=False)
    model.train()
    for epoch in range(epochs):
        loss_sum = torch.zeros((), device=device)
        correct_sum = torch.zeros((), device=device, dtype=torch.int64)
        for step, (positions, x, y) in enumerate(iterate_batches(dataset, None, batch_size, True, generator)):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            correct = logits.detach().argmax(1) == y
            loss_sum += loss.detach() * len(y)
            correct_sum += correct.sum()
            if history is not None:
                history[epoch, positions] = correct.cpu().numpy()
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        epoch_loss.append(loss_sum.item() / n)
        epoch_acc.append(100.0 * correct_sum.item() / n)
        bar.set_postfix(epoch=epoch + 1, loss=f"{epoch_loss[-1]:.3f}", acc=f"{epoch_acc[-1]:.1f}")
    bar.close()
    model.eval()
    stats = {
        "forgetting": count_forgetting_events(history) if history is not None else None,
        "correct_history": history,
        "epoch_loss": epoch_loss,
        "epoch_acc": epoch_acc,
        "epochs": epochs,
        "seed": seed,
        "seconds": time.perf_counter() - start_time,
    }
    return model, stats


def train_on_coreset(model, dataset, indices, weights=None, epochs=200, lr=0.1, momentum=0.9,
                     weight_decay=5e-4, nesterov=True, batch_size=128, test_dataset=None, seed=0,
                     device="cpu", augment=None, eval_every=1, progress=True):
    """Train a model on ``dataset`` restricted to ``indices`` and track test accuracy.

    model: a fresh nn.Module (trained in place) or, better for reproducibility, a zero-argument builder
    called after seeding. SGD with cosine annealing stepped every iteration, from ``lr`` at the first
    step to 1e-4 (COSINE_ETA_MIN) after the last: lr_t = 1e-4 + (lr - 1e-4) (1 + cos(pi t / T)) / 2,
    t = 0..T-1 the iteration, T = epochs * ceil(len(indices) / batch_size). The last batch of an epoch
    may be smaller.

    weights: optional per-index weights (same length as indices, finite, >= 0). Each sample's loss is
    multiplied by w_i / mean(w over its batch), and the batch loss is the mean of those products, i.e.
    sum w_i l_i / sum w_i over the batch (see :func:`weighted_cross_entropy`).

    augment: None, True/'crop_flip' (RandomCropFlip(4)) or a callable applied to each batch
    [B, C, H, W] on the device; an ArrayDataset's own transform is applied as well.
    test_dataset: evaluated every ``eval_every`` epochs and after the last epoch.

    Returns a dict: ``final_acc`` and ``best_acc`` (test accuracy in percent after the last epoch and
    the best over evaluated epochs; None without test_dataset), ``history`` (one dict per epoch:
    epoch, lr, train_loss, train_acc, test_acc or None), ``seconds`` (wall time, evaluation
    included) and ``model``.
    """
    epochs = int(check_positive("epochs", epochs, integer=True))
    batch_size = int(check_positive("batch_size", batch_size, integer=True))
    eval_every = int(check_positive("eval_every", eval_every, integer=True))
    indices = _check_indices(indices, len(dataset))
    weights = _check_weights(weights, len(indices))
    augment = _resolve_augment(augment)
    device = torch.device(device)
    model = _materialize(model, seed).to(device)
    optimizer = _sgd(model, lr, momentum, weight_decay, nesterov)
    base_lr = optimizer.param_groups[0]["lr"]
    eta_min = min(COSINE_ETA_MIN, base_lr)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(indices) / batch_size)
    total_steps = epochs * steps_per_epoch
    history, step = [], 0
    best_acc = final_acc = None
    start_time = time.perf_counter()
    bar = tqdm(total=total_steps, desc="coreset training", disable=not progress, leave=False)
    for epoch in range(epochs):
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct_sum = torch.zeros((), device=device, dtype=torch.int64)
        batches = iterate_batches(dataset, indices, batch_size, True, generator, apply_transform=True)
        for positions, x, y in batches:
            for group in optimizer.param_groups:
                group["lr"] = _cosine_lr(base_lr, step, total_steps, eta_min)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if augment is not None:
                x = augment(x)
            logits = model(x)
            batch_weights = weights[positions] if weights is not None else None
            loss = weighted_cross_entropy(logits, y, batch_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct_sum += (logits.detach().argmax(1) == y).sum()
            step += 1
            bar.update(1)
        record = {
            "epoch": epoch + 1,
            "lr": _cosine_lr(base_lr, step, total_steps, eta_min),
            "train_loss": loss_sum.item() / len(indices),
            "train_acc": 100.0 * correct_sum.item() / len(indices),
            "test_acc": None,
        }
        last = epoch == epochs - 1
        if test_dataset is not None and ((epoch + 1) % eval_every == 0 or last):
            record["test_acc"] = evaluate(model, test_dataset, device=device)
            best_acc = record["test_acc"] if best_acc is None else max(best_acc, record["test_acc"])
            if last:
                final_acc = record["test_acc"]
        history.append(record)
        postfix = {"loss": f"{record['train_loss']:.3f}", "acc": f"{record['train_acc']:.1f}"}
        if record["test_acc"] is not None:
            postfix["test"] = f"{record['test_acc']:.2f}"
        bar.set_postfix(epoch=epoch + 1, **postfix)
    bar.close()
    model.eval()
    return {
        "final_acc": final_acc,
        "best_acc": best_acc,
        "history": history,
        "seconds": time.perf_counter() - start_time,
        "model": model,
    }


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model, dataset, batch_size=512, device="cpu"):
    """Top-1 accuracy of ``model`` (eval mode) on ``dataset``, in percent."""
    batch_size = int(check_positive("batch_size", batch_size, integer=True))
    if len(dataset) == 0:
        raise ValueError("dataset: is empty")
    device = torch.device(device)
    flags = training_flags(model)
    model.eval()
    try:
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for _, x, y in iterate_batches(dataset, None, batch_size):
            logits = model(x.to(device, non_blocking=True))
            correct += (logits.argmax(1) == y.to(device)).sum()
    finally:
        restore_training_flags(flags)
    return 100.0 * correct.item() / len(dataset)


# --------------------------------------------------------------------------------------------------
# Checkpoint cache
# --------------------------------------------------------------------------------------------------

def _safe_name(value):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(value))


def _stats_to_torch(value):
    """numpy arrays -> tensors (recursively) so that the file loads with ``weights_only=True``."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _stats_to_torch(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stats_to_torch(v) for v in value]
    return value


def _stats_from_torch(value):
    if isinstance(value, dict):
        if set(value) == {"__ndarray__"}:
            return value["__ndarray__"].numpy()
        return {k: _stats_from_torch(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stats_from_torch(v) for v in value]
    return value


def selection_checkpoint_path(dataset_name, model_name, epochs, seed, cache_dir=None, tag=""):
    """File used by :func:`cached_selection_model` for this key."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "checkpoints"
    parts = [_safe_name(dataset_name), _safe_name(model_name), f"e{int(epochs)}", f"s{int(seed)}"]
    if tag:
        parts.append(_safe_name(tag))
    return folder / ("-".join(parts) + ".pt")


def cached_selection_model(dataset_name, model_name, epochs, seed, build_fn, train_fn, cache_dir=None,
                           tag=""):
    """Load a trained selection model from the cache, or train and store it.

    Key: (dataset_name, model_name, epochs, seed[, tag]); use ``tag`` for anything else that changes
    the training (learning rate, subset, ...). File:
    ``<cache_dir or $LCMAT_CACHE_DIR|~/.cache/lcmat>/checkpoints/<dataset>-<model>-e<epochs>-s<seed>.pt``
    (directly under ``cache_dir`` when given).

    build_fn(): returns a fresh nn.Module (the architecture). train_fn(model): trains it and returns
    ``(model, stats)`` (e.g. a partial of :func:`train_selection_model`). Returns ``(model, stats)``;
    the model is on the CPU when loaded from the cache. stats gains ``from_cache`` and ``cache_path``.
    """
    path = selection_checkpoint_path(dataset_name, model_name, epochs, seed, cache_dir, tag)
    model = build_fn()
    if not isinstance(model, nn.Module):
        raise ValueError(f"build_fn: returned {type(model).__name__}, not an nn.Module")
    if path.is_file():
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint["state_dict"])
        model.eval()
        stats = _stats_from_torch(checkpoint["stats"])
        stats.update(from_cache=True, cache_path=str(path))
        return model, stats
    model, stats = train_fn(model)
    stats = dict(stats)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({"state_dict": state, "stats": _stats_to_torch(stats),
                "key": [str(dataset_name), str(model_name), int(epochs), int(seed), str(tag)]}, tmp)
    os.replace(tmp, path)
    stats.update(from_cache=False, cache_path=str(path))
    return model, stats
