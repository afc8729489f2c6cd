"""Offline image-classification datasets as in-memory arrays.

Every loader returns an :class:`ArrayDataset`: uint8 images in ``.data`` ([N, H, W] or [N, H, W, 3]),
np.int64 labels in ``.targets``, class names in ``.classes``; indexing gives a normalised float
tensor [C, H, W] and an int label, like a torchvision dataset with ``ToTensor()`` + ``Normalize``.

Nothing here downloads. Files are looked up under ``data_dir`` (default: :func:`default_data_dir`) in
the layout of ``shared/data`` (see its README) or in torchvision's layout (``MNIST/raw/`` etc.).
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import re
import tarfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .validation import check_positive

__all__ = [
    "ArrayDataset",
    "RandomCropFlip",
    "DATASET_NAMES",
    "NORMALIZATION",
    "load_dataset",
    "load_digits",
    "load_idx",
    "default_data_dir",
    "default_cache_dir",
    "dataset_targets",
    "wrap_torchvision",
]

DATASET_NAMES = ("mnist", "fashion-mnist", "emnist-letters", "cifar10", "digits")

_ALIASES = {
    "fmnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "emnist": "emnist-letters",
    "emnistletters": "emnist-letters",
    "cifar-10": "cifar10",
}

# Per-channel (mean, std) of the training split in [0, 1] units. MNIST, Fashion-MNIST and CIFAR-10 use
# the customary published values (CIFAR-10's are those of the exact pixels; the JPEG copy differs in
# the third decimal). EMNIST-Letters and digits were measured on the training split loaded here.
NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "emnist-letters": ((0.1722,), (0.3309,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "digits": ((0.3056,), (0.3764,)),
}

CLASS_NAMES = {
    "mnist": ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
              "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "emnist-letters": [chr(ord("a") + i) for i in range(26)],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"],
    "digits": [str(i) for i in range(10)],
}

_IDX_FILES = {
    # name: (sub-directories to look in, {split: (image file, label file)})
    "mnist": (("mnist", "MNIST/raw"), {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }),
    "fashion-mnist": (("fashion-mnist", "FashionMNIST/raw"), {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }),
    "emnist-letters": (("emnist-letters", "EMNIST/raw", "emnist"), {
        "train": ("emnist-letters-train-images-idx3-ubyte", "emnist-letters-train-labels-idx1-ubyte"),
        "test": ("emnist-letters-test-images-idx3-ubyte", "emnist-letters-test-labels-idx1-ubyte"),
    }),
}

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


# --------------------------------------------------------------------------------------------------
# Dataset class and augmentation
# --------------------------------------------------------------------------------------------------

class ArrayDataset(Dataset):
    """Images held as a uint8 array, served as normalised float tensors.

    data: uint8 [N, H, W] (grey) or [N, H, W, C] (channels last, e.g. RGB).
    targets: N integer labels (stored as np.int64).
    classes: class names; mean, std: per-channel normalisation in [0, 1] units.
    transform: optional callable applied to each [C, H, W] tensor after normalisation. A transform with
    ``supports_batch = True`` (like :class:`RandomCropFlip`) is applied to whole batches by
    :meth:`get_batch`.
    """

    def __init__(self, data, targets, classes=None, mean=None, std=None, transform=None, name=None):
        data = np.asarray(data)
        if data.dtype != np.uint8:
            raise ValueError(f"data: expected a uint8 array, got dtype {data.dtype}")
        if data.ndim not in (3, 4):
            raise ValueError(f"data: expected shape [N, H, W] or [N, H, W, C], got {data.shape}")
        targets = np.asarray(targets)
        if targets.ndim != 1 or len(targets) != len(data):
            raise ValueError(f"targets: expected {len(data)} labels, got shape {targets.shape}")
        if not np.issubdtype(targets.dtype, np.integer):
            raise ValueError(f"targets: expected integer labels, got dtype {targets.dtype}")
        self.data = data
        self.targets = targets.astype(np.int64)
        n_classes = int(self.targets.max()) + 1 if len(self.targets) else 0
        self.classes = list(classes) if classes is not None else [str(c) for c in range(n_classes)]
        channels = 1 if data.ndim == 3 else data.shape[3]
        if mean is None or std is None:
            mean, std = channel_mean_std(data)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean/std: expected {channels} values each, got {self.mean} / {self.std}")
        if min(self.std) <= 0:
            raise ValueError(f"std: must be positive, got {self.std}")
        self.transform = transform
        self.name = name

    def __len__(self):
        return len(self.data)

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def in_channels(self):
        return 1 if self.data.ndim == 3 else self.data.shape[3]

    @property
    def im_size(self):
        return tuple(self.data.shape[1:3])

    def _to_tensor(self, images):
        """uint8 [B, H, W(, C)] -> normalised float [B, C, H, W]."""
        x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()

    def __getitem__(self, index):
        index = int(index)
        x = self._to_tensor(self.data[index][None])[0]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[index])

    def get_batch(self, indices, apply_transform=True):
        """Images and labels of ``indices`` as tensors ([B, C, H, W] float, [B] int64)."""
        indices = np.asarray(indices, dtype=np.int64)
        x = self._to_tensor(self.data[indices])
        if apply_transform and self.transform is not None:
            if getattr(self.transform, "supports_batch", False):
                x = self.transform(x)
            else:
                x = torch.stack([self.transform(xi) for xi in x])
        return x, torch.from_numpy(self.targets[indices])

    def __repr__(self):
        return (f"ArrayDataset(name={self.name!r}, n={len(self)}, image={tuple(self.data.shape[1:])}, "
                f"classes={self.num_classes})")


def channel_mean_std(data):
    """Per-channel mean and std of uint8 images [N, H, W(, C)] in [0, 1] units (float64 sums)."""
    x = np.asarray(data)
    axes = (0, 1, 2)
    if x.ndim == 3:
        x = x[..., None]
    count = x.shape[0] * x.shape[1] * x.shape[2]
    s1 = x.sum(axis=axes, dtype=np.float64) / 255.0
    s2 = (x.astype(np.float64) ** 2).sum(axis=axes) / 255.0 ** 2
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean ** 2, 0.0))
    return tuple(mean.tolist()), tuple(np.maximum(std, 1e-8).tolist())


class RandomCropFlip:
    """Random crop with reflect padding, then a random horizontal flip (CIFAR augmentation).

    Accepts one image [C, H, W] or a batch [B, C, H, W] (each image gets its own crop and flip). The
    random numbers are drawn on the CPU from ``generator`` (default: torch's global CPU generator), so
    a seed gives the same augmentation on any device.
    """

    supports_batch = True

    def __init__(self, padding=4, flip=True, generator=None):
        self.padding = int(check_positive("padding", padding, integer=True, allow_zero=True))
        self.flip = bool(flip)
        self.generator = generator

    def __call__(self, x):
        if x.ndim == 3:
            return self._batch(x.unsqueeze(0))[0]
        if x.ndim != 4:
            raise ValueError(f"x: expected [C, H, W] or [B, C, H, W], got shape {tuple(x.shape)}")
        return self._batch(x)

    def _batch(self, x):
        b, _, h, w = x.shape
        p = self.padding
        if p >= h or p >= w:
            raise ValueError(f"padding: reflect padding {p} needs images larger than {p}, got {h}x{w}")
        offsets_y = torch.randint(0, 2 * p + 1, (b,), generator=self.generator)
        offsets_x = torch.randint(0, 2 * p + 1, (b,), generator=self.generator)
        if self.flip:
            flipped = torch.rand(b, generator=self.generator) < 0.5
        else:
            flipped = torch.zeros(b, dtype=torch.bool)
        padded = F.pad(x, (p, p, p, p), mode="reflect") if p > 0 else x
        rows = offsets_y[:, None] + torch.arange(h)[None, :]
        ramp = torch.arange(w)[None, :]
        # A flipped crop reads its columns right to left.
        cols = offsets_x[:, None] + torch.where(flipped[:, None], w - 1 - ramp, ramp)
        rows, cols = rows.to(x.device), cols.to(x.device)
        batch = torch.arange(b, device=x.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
        return out.permute(0, 3, 1, 2).contiguous()

    def __repr__(self):
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"


# --------------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------------

def default_data_dir():
    """Where the offline datasets live.

    ``$LCMAT_DATA_DIR`` if set; else ``shared/data`` next to the repository that holds this package
    (``<repo>/../shared/data``) if it exists; else ``../shared/data`` relative to the current
    directory if it exists; else None.
    """
    env = os.environ.get("LCMAT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    beside_repo = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if beside_repo.is_dir():
        return beside_repo
    beside_cwd = Path.cwd().parent / "shared" / "data"
    if beside_cwd.is_dir():
        return beside_cwd.resolve()
    return None


def default_cache_dir():
    """``$LCMAT_CACHE_DIR`` if set, else ``~/.cache/lcmat``."""
    env = os.environ.get("LCMAT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lcmat"


def _resolve_data_dir(data_dir, name):
    if data_dir is None:
        data_dir = default_data_dir()
    if data_dir is None:
        raise FileNotFoundError(
            f"dataset {name!r}: no data directory found; pass data_dir=... or set LCMAT_DATA_DIR "
            f"(nothing is downloaded; 'digits' needs no files)")
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise FileNotFoundError(f"dataset {name!r}: data_dir {str(data_dir)!r} is not a directory")
    return data_dir


def _find_file(data_dir, subdirs, filename, name):
    """First existing ``data_dir/<subdir>/<filename>[.gz]``; FileNotFoundError naming what was tried."""
    tried = []
    for sub in subdirs:
        for candidate in (filename + ".gz", filename):
            path = data_dir / sub / candidate
            tried.append(str(path))
            if path.is_file():
                return path
    raise FileNotFoundError(f"dataset {name!r}: file {filename}[.gz] not found; looked for: "
                            + ", ".join(tried))


def _canonical_name(name):
    if not isinstance(name, str):
        raise ValueError(f"name: expected a dataset name string, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key.replace("-", ""), _ALIASES.get(key, key))
    if key not in DATASET_NAMES:
        raise ValueError(f"name: unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    return key


def _check_split(split):
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")


# --------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------

def load_dataset(name, split="train", data_dir=None, transform=None, cache=True, imbalance=1.0,
                 label_noise=0.0, corruption_seed=0, pool=None, pool_seed=0):
    """Load an offline dataset as an :class:`ArrayDataset`.

    name: "mnist", "fashion-mnist", "emnist-letters", "cifar10" or "digits" (sklearn's 8x8 digits,
    needs no files). split: "train" or "test". data_dir: folder holding the datasets (default
    :func:`default_data_dir`). transform: per-image callable (e.g. ``RandomCropFlip()``).
    cache: keep decoded CIFAR-10 JPEGs as .npz under :func:`default_cache_dir`.

    Corrupted training sets, for robustness studies (the test split is always the clean one):
    imbalance: ratio >= 1 between the largest and the smallest class, with the exponential
    long-tail profile n_c = n_max * imbalance^(-c / (C - 1)) (class 0 keeps all its samples);
    label_noise: fraction in [0, 1) of samples whose label is replaced by a different class drawn
    uniformly (symmetric noise), applied after the imbalance. Both are drawn from
    ``corruption_seed``; the dataset records them in ``.corruption`` and keeps the true labels in
    ``.clean_targets``.

    pool: keep only this many training images per class, drawn uniformly without replacement from
    ``pool_seed`` (its own generator, independent of ``corruption_seed``), before any corruption: the
    imbalance and the label noise then act on the pool. Every class must hold at least ``pool`` images.
    The dataset records them in ``.pool`` (``{"pool": None, "pool_seed": None}`` for the whole set).
    """
    key = _canonical_name(name)
    _check_split(split)
    imbalance, label_noise = _check_corruption(split, imbalance, label_noise, corruption_seed)
    pool, pool_seed = _check_pool(split, pool, pool_seed)
    if key == "digits":
        data, targets = _load_digits_arrays(split)
    elif key in _IDX_FILES:
        data, targets = _load_idx_dataset(key, split, _resolve_data_dir(data_dir, key))
    else:
        data, targets = _load_cifar10_arrays(split, _resolve_data_dir(data_dir, key), cache)
    mean, std = NORMALIZATION[key]
    if pool is not None:
        keep = per_class_pool_indices(targets, pool, np.random.default_rng(pool_seed))
        data, targets = data[keep], np.asarray(targets)[keep]
    clean = targets
    if imbalance != 1.0 or label_noise != 0.0:
        rng = np.random.default_rng(corruption_seed)
        keep = long_tail_indices(targets, imbalance, rng)
        data, clean = data[keep], np.asarray(targets)[keep]
        targets = symmetric_label_noise(clean, label_noise, len(CLASS_NAMES[key]), rng)
    dataset = ArrayDataset(data, targets, CLASS_NAMES[key], mean, std, transform=transform, name=key)
    dataset.clean_targets = np.asarray(clean, dtype=np.int64)
    dataset.corruption = {"imbalance": imbalance, "label_noise": label_noise, "corruption_seed": corruption_seed}
    dataset.pool = {"pool": pool, "pool_seed": pool_seed}
    return dataset


def _check_pool(split, pool, seed):
    """(pool, pool_seed) checked: (None, None) for the whole set, else positive integers."""
    if pool is None:
        return None, None
    if isinstance(pool, bool) or not isinstance(pool, (int, np.integer)) or pool < 1:
        raise ValueError(f"pool: expected a positive number of images per class, got {pool!r}")
    if split != "train":
        raise ValueError(f"split: pool applies to the training split only, got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"pool_seed: expected a non-negative integer, got {seed!r}")
    return int(pool), int(seed)


def per_class_pool_indices(targets, pool, rng):
    """Sorted indices of ``pool`` samples per class, drawn uniformly without replacement (class by class
    in label order, so the draw depends only on the labels and the generator)."""
    targets = np.asarray(targets)
    classes, counts = np.unique(targets, return_counts=True)
    smallest = int(counts.argmin())
    if pool > counts[smallest]:
        raise ValueError(f"pool: {pool} images per class, but class {int(classes[smallest])} has only "
                         f"{int(counts[smallest])}; use pool <= {int(counts.min())}")
    keep = [rng.choice(np.flatnonzero(targets == c), size=pool, replace=False) for c in classes]
    return np.sort(np.concatenate(keep))


def _check_corruption(split, imbalance, label_noise, seed):
    try:
        imbalance, label_noise = float(imbalance), float(label_noise)
    except (TypeError, ValueError):
        raise ValueError(f"imbalance/label_noise: expected numbers, got {imbalance!r} and {label_noise!r}") from None
    if not (math.isfinite(imbalance) and imbalance >= 1.0):
        raise ValueError(f"imbalance: must be a finite ratio >= 1 (1 = unchanged), got {imbalance}")
    if not (0.0 <= label_noise < 1.0):
        raise ValueError(f"label_noise: must lie in [0, 1), got {label_noise}")
    if split != "train" and (imbalance != 1.0 or label_noise != 0.0):
        raise ValueError(f"split: imbalance and label_noise apply to the training split only, got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"corruption_seed: expected a non-negative integer, got {seed!r}")
    return imbalance, label_noise


def long_tail_indices(targets, imbalance, rng):
    """Sorted indices of a long-tailed subset: class c keeps floor(n_max * imbalance^(-c/(C-1)))
    of its samples (at least one, at most all), chosen at random."""
    targets = np.asarray(targets)
    if imbalance == 1.0:
        return np.arange(len(targets))
    classes = np.unique(targets)
    n_max = max(int((targets == c).sum()) for c in classes)
    span = max(len(classes) - 1, 1)
    keep = []
    for rank, c in enumerate(classes):
        members = np.flatnonzero(targets == c)
        wanted = int(n_max * imbalance ** (-rank / span))
        keep.append(rng.choice(members, size=min(len(members), max(wanted, 1)), replace=False))
    return np.sort(np.concatenate(keep))


def symmetric_label_noise(targets, fraction, num_classes, rng):
    """Labels with round(fraction * N) of them, chosen at random, moved to a different class drawn
    uniformly among the other num_classes - 1."""
    targets = np.asarray(targets, dtype=np.int64)
    noisy = targets.copy()
    count = int(round(fraction * len(targets)))
    if count == 0 or num_classes < 2:
        return noisy
    flipped = rng.choice(len(targets), size=count, replace=False)
    shift = rng.integers(1, num_classes, size=count)  # never 0: the new class differs
    noisy[flipped] = (targets[flipped] + shift) % num_classes
    return noisy


def load_digits(split="train", transform=None):
    """sklearn's 8x8 digits (1797 images, 10 classes) as an ArrayDataset; see :func:`load_dataset`."""
    return load_dataset("digits", split, transform=transform)


DIGITS_SPLIT_SEED = 0
DIGITS_TRAIN_FRACTION = 0.8


def _load_digits_arrays(split):
    """Stratified 80/20 split with a fixed seed; indices kept in sklearn's order within each split."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    # Pixel values are 0..16; rescale to 0..255 so that all datasets share the uint8 convention.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    train_mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_train = int(round(DIGITS_TRAIN_FRACTION * len(members)))
        train_mask[rng.permutation(members)[:n_train]] = True
    keep = train_mask if split == "train" else ~train_mask
    return images[keep], labels[keep]


def load_idx(path, expected_magic=None):
    """Parse an IDX file (optionally gzipped) into a uint8 numpy array.

    The header is a big-endian int32 magic (0x0000 TT DD: TT = 0x08 for uint8, DD = number of
    dimensions; 2051 for image files, 2049 for label files) followed by DD big-endian int32 sizes.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4:
        raise ValueError(f"path: {path} is too short to be an IDX file")
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"path: {path} has IDX magic {magic}, expected {expected_magic}")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"path: {path} is not a uint8 IDX file (magic {magic})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header != expected:
        raise ValueError(f"path: {path} holds {len(raw) - header} data bytes, header says {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _load_idx_dataset(key, split, data_dir):
    subdirs, files = _IDX_FILES[key]
    image_file, label_file = files[split]
    images = load_idx(_find_file(data_dir, subdirs, image_file, key), IDX_IMAGES_MAGIC)
    labels = load_idx(_find_file(data_dir, subdirs, label_file, key), IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(f"dataset {key!r}: {len(images)} images but {len(labels)} labels ({split})")
    labels = labels.astype(np.int64)
    if key == "emnist-letters":
        # EMNIST stores images transposed and letters as 1..26.
        images = np.ascontiguousarray(images.transpose(0, 2, 1))
        labels = labels - 1
    return images, labels


CIFAR_JPEG_TAR = "cifar10/cifar10-jpeg.tar.gz"
CIFAR_TEST_NPZ = "cifar10/cifar10_test.npz"
_CIFAR_MEMBER = re.compile(r"(?:^|/)(train|test)/([A-Za-z_]+)/(\d+)\.(?:jpg|jpeg|png)$")


def _find_cifar_pickles(data_dir):
    for folder in (data_dir / "cifar-10-batches-py", data_dir / "cifar10" / "cifar-10-batches-py"):
        if (folder / "data_batch_1").is_file() and (folder / "test_batch").is_file():
            return folder
    return None


def _load_cifar10_arrays(split, data_dir, cache):
    """Exact pickles (``cifar-10-batches-py``) when present, else the JPEG tar (+ decoded test npz)."""
    pickles = _find_cifar_pickles(data_dir)
    if pickles is not None:
        return _load_cifar10_pickles(pickles, split)
    tar_path = data_dir / CIFAR_JPEG_TAR
    npz_path = data_dir / CIFAR_TEST_NPZ
    if split == "test" and npz_path.is_file():
        with np.load(npz_path, allow_pickle=False) as z:
            return z["x_test"].astype(np.uint8), z["y_test"].astype(np.int64)
    if not tar_path.is_file():
        raise FileNotFoundError(
            f"dataset 'cifar10': neither {tar_path} nor {data_dir / 'cifar-10-batches-py'} exists")
    return _cached_arrays(
        f"cifar10-jpeg-{split}-{tar_path.stat().st_size}",
        lambda: decode_cifar10_tar(tar_path, split),
        enabled=cache)


def _load_cifar10_pickles(folder, split):
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for batch_name in names:
        path = folder / batch_name
        if not path.is_file():
            raise FileNotFoundError(f"dataset 'cifar10': {path} is missing")
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    data = np.ascontiguousarray(np.concatenate(images).transpose(0, 2, 3, 1))
    return data, np.concatenate(labels)


def decode_cifar10_tar(tar_path, split):
    """Decode ``split/<class>/NNNN.jpg`` members, ordered by (class index, NNNN), to uint8 HWC RGB."""
    from PIL import Image

    class_index = {c: i for i, c in enumerate(CLASS_NAMES["cifar10"])}
    entries = []
    with tarfile.open(tar_path, "r:*") as tar:
        for member in tar:
            match = _CIFAR_MEMBER.search(member.name) if member.isfile() else None
            if match is None or match.group(1) != split:
                continue
            cls = match.group(2)
            if cls not in class_index:
                raise ValueError(f"tar_path: {tar_path} has an unknown CIFAR-10 class folder {cls!r}")
            entries.append((class_index[cls], int(match.group(3)), tar.extractfile(member).read()))
    if not entries:
        raise FileNotFoundError(f"dataset 'cifar10': no {split}/<class>/NNNN.jpg members in {tar_path}")
    entries.sort(key=lambda e: (e[0], e[1]))

    def decode(blob):
        return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"), dtype=np.uint8)

    # Pillow releases the GIL while decoding, so threads help.
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        images = list(pool.map(decode, (e[2] for e in entries), chunksize=256))
    return np.stack(images), np.array([e[0] for e in entries], dtype=np.int64)


def _cached_arrays(key, build, enabled=True):
    """(data, targets) from ``<cache>/<key>.npz``, building and storing it on a miss."""
    if not enabled:
        return build()
    path = default_cache_dir() / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return z["data"], z["targets"]
        except (OSError, ValueError, KeyError) as err:
            warnings.warn(f"ignoring unreadable cache file {path}: {err}")
    data, targets = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, data=data, targets=targets)
        os.replace(tmp, path)
    except OSError as err:
        warnings.warn(f"could not write cache file {path}: {err}")
    return data, targets


# --------------------------------------------------------------------------------------------------
# Foreign datasets
# --------------------------------------------------------------------------------------------------

def dataset_targets(dataset):
    """Labels of any classification dataset as np.int64 [N].

    Uses ``.targets`` (torchvision), then ``.labels`` (e.g. SVHN), follows ``torch.utils.data.Subset``,
    and otherwise reads ``dataset[i][1]`` for every i.
    """
    if isinstance(dataset, torch.utils.data.Subset):
        return dataset_targets(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    for attribute in ("targets", "labels"):
        values = getattr(dataset, attribute, None)
        if values is not None:
            if isinstance(values, torch.Tensor):
                values = values.cpu().numpy()
            labels = np.asarray(values)
            if labels.ndim == 1 and len(labels) == len(dataset):
                return labels.astype(np.int64)
    return np.array([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


_TORCHVISION_NAMES = {"MNIST": "mnist", "FashionMNIST": "fashion-mnist", "CIFAR10": "cifar10",
                      "EMNIST": "emnist-letters"}


def wrap_torchvision(dataset, name=None, transform=None):
    """Turn a torchvision-style dataset (``.data``, ``.targets``, ``.classes``) into an ArrayDataset.

    The known classes (MNIST, FashionMNIST, CIFAR10, EMNIST 'letters') get the package's normalisation
    and label conventions (EMNIST letters 1..26 -> 0..25; torchvision's EMNIST ``.data`` is stored
    transposed, as in the files, and is turned upright here). Others get mean/std measured on their data.
    Pass ``name`` to force a convention.
    """
    data = getattr(dataset, "data", None)
    if data is None:
        raise ValueError("dataset: expected a torchvision-style dataset with a .data array")
    if isinstance(data, torch.Tensor):
        data = data.cpu().numpy()
    data = np.asarray(data)
    if data.dtype != np.uint8:
        raise ValueError(f"dataset: .data must be uint8 images, got dtype {data.dtype}")
    targets = dataset_targets(dataset)
    classes = list(getattr(dataset, "classes", []) or [])
    key = _canonical_name(name) if name is not None else _TORCHVISION_NAMES.get(type(dataset).__name__)
    if key == "emnist-letters" and name is None and getattr(dataset, "split", "letters") != "letters":
        key = None
    if key == "emnist-letters":
        data = np.ascontiguousarray(data.transpose(0, 2, 1))
        if targets.min() >= 1:
            targets = targets - 1
    if key is not None:
        mean, std = NORMALIZATION[key]
        classes = CLASS_NAMES[key]
    else:
        mean, std = channel_mean_std(data)
        classes = classes or None
    return ArrayDataset(data, targets, classes, mean, std, transform=transform, name=key)
