"""CondensedSet: the learnt synthetic images (stored, before decoding), their labels and history.

Saved with torch.save as a dict of tensors, numbers and strings only (loaded back with
``weights_only=True``; no code objects are pickled).
"""
import json
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from .decode import check_factor, decode


class TensorImages(Dataset):
    """Float images [N, C, H, W] (normalised) and int64 labels served as a torch Dataset, with the
    batch access of lcmat.train (``get_batch``)."""

    def __init__(self, images, labels, transform=None):
        images = torch.as_tensor(images).detach().float().cpu()
        labels = torch.as_tensor(labels).detach().long().cpu()
        if images.dim() != 4 or labels.shape != (len(images),):
            raise ValueError(f"images, labels: expected [N, C, H, W] and [N], got {tuple(images.shape)} and "
                             f"{tuple(labels.shape)}")
        self.images, self.labels, self.transform = images, labels, transform
        self.targets = labels.numpy()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        x = self.images[int(index)]
        return (self.transform(x) if self.transform else x), int(self.labels[int(index)])

    def get_batch(self, indices, apply_transform=True):
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        x = self.images[idx]
        if apply_transform and self.transform is not None:
            x = torch.stack([self.transform(xi) for xi in x])
        return x, self.labels[idx]

    @property
    def num_classes(self):
        return int(self.labels.max()) + 1 if len(self.labels) else 0


class CondensedSet:
    """images [n, C, H, W] as stored (each holds factor^2 training images), labels [n], the
    multi-formation factor, the history (one dict per outer iteration) and metadata (method,
    dataset, configuration: JSON-serialisable values)."""

    def __init__(self, images, labels, factor=1, history=None, meta=None):
        self.images = torch.as_tensor(images).detach().float().cpu()
        self.labels = torch.as_tensor(labels).detach().long().cpu()
        if self.images.dim() != 4 or self.labels.shape != (len(self.images),):
            raise ValueError(f"images, labels: expected [n, C, H, W] and [n], got {tuple(self.images.shape)} "
                             f"and {tuple(self.labels.shape)}")
        self.factor = check_factor(factor)
        self.history = list(history or [])
        self.meta = dict(meta or {})

    def __len__(self):
        return len(self.images)

    def __repr__(self):
        return (f"CondensedSet(method={self.meta.get('method')!r}, images={tuple(self.images.shape)}, "
                f"factor={self.factor}, decoded={len(self) * self.factor ** 2})")

    @property
    def images_per_class(self):
        counts = torch.bincount(self.labels)
        return int(counts.max()) if len(counts) else 0

    def decoded(self):
        """(images, labels) after multi-formation decoding: what a network trains on."""
        with torch.no_grad():
            return decode(self.images, self.labels, self.factor)

    def dataset(self, transform=None):
        """The decoded images as a torch Dataset (TensorImages)."""
        return TensorImages(*self.decoded(), transform=transform)

    # -- persistence -------------------------------------------------------------------------
    def state(self):
        return {"images": self.images, "labels": self.labels, "factor": self.factor,
                "history": json.dumps(self.history), "meta": json.dumps(self.meta)}

    @classmethod
    def from_state(cls, state):
        return cls(state["images"], state["labels"], int(state["factor"]), json.loads(state["history"]),
                   json.loads(state["meta"]))

    def save(self, path):
        """Write to `path` (torch.save of tensors and strings); the parent folder must exist."""
        tmp = f"{path}.tmp"
        torch.save(self.state(), tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path):
        return cls.from_state(torch.load(path, map_location="cpu", weights_only=True))

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, test_dataset, model="convnet3", width=128, epochs=300, lr=0.01, momentum=0.9,
                 weight_decay=5e-4, batch_size=256, dsa=True, seed=0, device="cpu", progress=True):
        """Train a fresh network on the decoded images (the papers' protocol: SGD, DSA on every
        batch with per-image parameters) and return lcmat.train.train_on_coreset's dict
        (final_acc, best_acc, history, seconds, model)."""
        from .. import train
        from ..models import get_model

        data = self.dataset()
        C, H, W = data.images.shape[1:]
        num_classes = max(int(self.meta.get("num_classes", 0)), data.num_classes)
        kwargs = {"width": width} if model in ("convnet3", "convnet") else {}

        def build():
            return get_model(model, num_classes, C, (H, W), **kwargs)

        augment = dsa_training_augment(seed) if dsa else None
        return train.train_on_coreset(build, data, np.arange(len(data)), epochs=epochs, lr=lr, momentum=momentum,
                                      weight_decay=weight_decay, nesterov=False, batch_size=batch_size,
                                      test_dataset=test_dataset, seed=seed, device=device, augment=augment,
                                      eval_every=epochs, progress=progress)


def dsa_training_augment(seed, strategy=None):
    """The papers' augmentation for training a network on synthetic images: DSA with its own
    parameters for every image of a batch, drawn from a generator seeded by ``seed`` (a callable
    on batches [B, C, H, W]). strategy: DSA's operations (default all of them)."""
    from .augment import DSA, DSA_STRATEGY

    generator = torch.Generator().manual_seed(int(seed) + 7919)
    aug = DSA(strategy or DSA_STRATEGY, batch=False)

    def augment(x):
        return aug(x, generator)
    return augment
