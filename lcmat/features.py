"""Feature extraction: the embeddings (the input of a model's last ``nn.Linear``, read by a forward
hook) and logits of a trained model over a dataset, as the selectors take them.

Two passes: :func:`extract_features`, the model in eval mode (the paper's protocol), and
:func:`extract_features_train_bn`, BatchNorm layers in train mode over per-class batches (what
LCMat's released code does). Both leave the model as they found it. The dataset is read in batches
by :func:`iterate_batches` (shared with training, lcmat.train), ignoring an ArrayDataset's transform.
Selectors and training both import this module; it imports neither.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .data import dataset_targets
from .models import find_last_linear
from .validation import check_positive

__all__ = [
    "extract_features",
    "extract_features_train_bn",
    "iterate_batches",
    "load_batch",
    "training_flags",
    "restore_training_flags",
]


# --------------------------------------------------------------------------------------------------
# Reading a dataset in batches
# --------------------------------------------------------------------------------------------------

def load_batch(dataset, idx, apply_transform=False):
    """Images and labels of the samples ``idx`` as ``(x float [B, ...], y int64 [B])``: one call of
    ``dataset.get_batch`` where the dataset has it (an ArrayDataset), else item by item.
    apply_transform: apply an ArrayDataset's transform (training augmentation)."""
    if hasattr(dataset, "get_batch"):
        return dataset.get_batch(idx, apply_transform=apply_transform)
    xs, ys = [], []
    for i in idx:
        x, y = dataset[int(i)]
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(np.asarray(x))
            except (TypeError, ValueError) as err:
                raise ValueError(f"dataset: item {int(i)} is a {type(x).__name__}, not a tensor; give the "
                                 f"dataset a transform that returns tensors") from err
        xs.append(x)
        ys.append(int(y))
    return torch.stack(xs).float(), torch.tensor(ys, dtype=torch.int64)


def iterate_batches(dataset, indices=None, batch_size=128, shuffle=False, generator=None,
                    apply_transform=False):
    """Yield ``(positions, x, y)``: positions into ``indices`` (np.int64), images and labels.

    indices: dataset indices to visit (default all, in order). shuffle: permute them with
    ``generator`` (a CPU torch.Generator) first. apply_transform: apply an ArrayDataset's transform.
    """
    n = len(indices) if indices is not None else len(dataset)
    indices = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n, dtype=np.int64)
    for start in range(0, n, batch_size):
        positions = order[start:start + batch_size]
        x, y = load_batch(dataset, indices[positions], apply_transform)
        yield positions, x, y


def training_flags(model):
    """The train/eval flag of every module of ``model``, for :func:`restore_training_flags`."""
    return {module: module.training for module in model.modules()}


def restore_training_flags(flags):
    for module, training in flags.items():
        module.training = training


# --------------------------------------------------------------------------------------------------
# Embeddings and logits
# --------------------------------------------------------------------------------------------------

class _EmbeddingHook:
    """Captures the input of a module (the embedding) at each forward call."""

    def __init__(self, layer):
        self.value = None
        self.handle = layer.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output):
        self.value = inputs[0].detach()

    def take(self):
        value, self.value = self.value, None
        if value is None:
            raise ValueError("model: its last nn.Linear was not called in forward; cannot read the embedding")
        if value.ndim != 2:
            raise ValueError(f"model: the last nn.Linear received a {value.ndim}-D input {tuple(value.shape)}; "
                             f"expected an embedding [batch, features]")
        return value

    def close(self):
        self.handle.remove()


def _forward_features(model, x, hook):
    logits = model(x)
    embedding = hook.take()
    return embedding.float().cpu().numpy(), logits.detach().float().cpu().numpy()


@torch.no_grad()
def extract_features(model, dataset, batch_size=256, device="cpu", progress=True):
    """One eval-mode pass: embeddings (input of the last nn.Linear), logits and labels.

    Returns ``(H, Z, y)``: float32 [N, D], float32 [N, C], np.int64 [N], in dataset order.
    """
    batch_size = int(check_positive("batch_size", batch_size, integer=True))
    n = len(dataset)
    if n == 0:
        raise ValueError("dataset: is empty")
    device = torch.device(device)
    hook = _EmbeddingHook(find_last_linear(model))
    flags = training_flags(model)
    model.eval()
    embeddings = logits = None
    labels = np.empty(n, dtype=np.int64)
    try:
        batches = iterate_batches(dataset, None, batch_size)
        for positions, x, y in tqdm(batches, total=math.ceil(n / batch_size), desc="features",
                                    disable=not progress, leave=False):
            h, z = _forward_features(model, x.to(device, non_blocking=True), hook)
            if embeddings is None:
                embeddings = np.empty((n, h.shape[1]), dtype=np.float32)
                logits = np.empty((n, z.shape[1]), dtype=np.float32)
            embeddings[positions], logits[positions] = h, z
            labels[positions] = y.numpy()
    finally:
        hook.close()
        restore_training_flags(flags)
    return embeddings, logits, labels


def _batchnorm_layers(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def extract_features_train_bn(model, dataset, labels=None, batch_size=128, device="cpu"):
    """Features as LCMat's released code takes them ("compat" mode, docs/design.md, "LCMat-S").

    For each class (ascending label), the class's samples in dataset order are cut into batches of
    ``batch_size`` (the last one may be smaller); each batch is passed with BatchNorm layers in train
    mode (normalising by the batch's own statistics) and all other layers in eval mode, without
    gradients. BatchNorm running statistics are saved before and restored after, so the model is left
    unchanged. labels: np.int64 [N] (default: :func:`lcmat.data.dataset_targets`).

    Returns ``(H, Z, b)``: float32 [N, D] embeddings, float32 [N, C] logits and np.int64 [N], the size
    of the batch each sample fell in, all in dataset order.
    """
    batch_size = int(check_positive("batch_size", batch_size, integer=True))
    n = len(dataset)
    if n == 0:
        raise ValueError("dataset: is empty")
    labels = dataset_targets(dataset) if labels is None else np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected {n} integer labels, got shape {labels.shape}, dtype {labels.dtype}")
    device = torch.device(device)
    bn_layers = _batchnorm_layers(model)
    saved = [{name: buf.clone() for name, buf in bn.named_buffers(recurse=False) if buf is not None}
             for bn in bn_layers]
    flags = training_flags(model)
    hook = _EmbeddingHook(find_last_linear(model))
    model.eval()
    for bn in bn_layers:
        bn.train()
    embeddings = logits = None
    batch_sizes = np.zeros(n, dtype=np.int64)
    try:
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            for start in range(0, len(members), batch_size):
                chunk = members[start:start + batch_size]
                x, _ = load_batch(dataset, chunk, apply_transform=False)
                h, z = _forward_features(model, x.to(device, non_blocking=True), hook)
                if embeddings is None:
                    embeddings = np.empty((n, h.shape[1]), dtype=np.float32)
                    logits = np.empty((n, z.shape[1]), dtype=np.float32)
                embeddings[chunk], logits[chunk] = h, z
                batch_sizes[chunk] = len(chunk)
    finally:
        hook.close()
        for bn, buffers in zip(bn_layers, saved):
            for name, value in buffers.items():
                getattr(bn, name).copy_(value)
        restore_training_flags(flags)
    return embeddings, logits, batch_sizes
