"""Loaders, dataset class and augmentation of lcmat.data.

Tests on the real offline datasets skip when the data directory is absent; the digits loader and the
tests on small hand-made files always run.
"""

import gzip
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lcmat import data as lcdata
from lcmat.data import (ArrayDataset, RandomCropFlip, dataset_targets, default_data_dir, load_dataset,
                        load_idx, wrap_torchvision)

DATA_DIR = default_data_dir()


def sha256_of_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of_array(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def require(subdir):
    if DATA_DIR is None or not (Path(DATA_DIR) / subdir).is_dir():
        pytest.skip(f"offline data directory {subdir!r} not available (set LCMAT_DATA_DIR)")
    return Path(DATA_DIR) / subdir


# --------------------------------------------------------------------------------------------------
# Real datasets (checksums and counts from shared/data/README.md)
# --------------------------------------------------------------------------------------------------

GZ_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}


@pytest.mark.parametrize("name", sorted(GZ_SHA256))
def test_idx_files_match_published_sha256(name):
    folder = require(name)
    for filename, expected in GZ_SHA256[name].items():
        assert sha256_of_file(folder / filename) == expected, filename


def test_mnist_shapes_and_label_counts():
    require("mnist")
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    assert train.data.shape == (60000, 28, 28) and train.data.dtype == np.uint8
    assert test.data.shape == (10000, 28, 28)
    assert train.targets.dtype == np.int64
    assert np.bincount(train.targets).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(test.targets).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 5  # the famous first "5"
    assert train.num_classes == 10 and train.in_channels == 1 and train.im_size == (28, 28)


def test_fashion_mnist_balanced():
    require("fashion-mnist")
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion_mnist", "test")
    assert train.data.shape == (60000, 28, 28) and test.data.shape == (10000, 28, 28)
    assert np.bincount(train.targets).tolist() == [6000] * 10
    assert np.bincount(test.targets).tolist() == [1000] * 10
    assert train.classes[9] == "Ankle boot"


def test_emnist_letters_relabelled_and_upright():
    folder = require("emnist-letters")
    train, test = load_dataset("emnist-letters", "train"), load_dataset("emnist-letters", "test")
    assert train.data.shape == (124800, 28, 28) and test.data.shape == (20800, 28, 28)
    assert np.bincount(train.targets).tolist() == [4800] * 26
    assert np.bincount(test.targets).tolist() == [800] * 26
    raw_labels = load_idx(folder / "emnist-letters-test-labels-idx1-ubyte.gz", 2049)
    np.testing.assert_array_equal(test.targets, raw_labels.astype(np.int64) - 1)
    raw_images = load_idx(folder / "emnist-letters-test-images-idx3-ubyte.gz", 2051)
    np.testing.assert_array_equal(test.data[:50], raw_images[:50].transpose(0, 2, 1))
    assert train.classes[0] == "a" and train.classes[25] == "z"


@pytest.fixture(scope="module")
def cifar_train():
    require("cifar10")
    return load_dataset("cifar10", "train")  # about 10 s the first time, then read from the cache


def test_cifar10_train_decoded_as_documented(cifar_train):
    assert cifar_train.data.shape == (50000, 32, 32, 3) and cifar_train.data.dtype == np.uint8
    assert np.bincount(cifar_train.targets).tolist() == [5000] * 10
    # Rows are sorted by (class, NNNN); these are the README's hashes of the decoded arrays.
    assert sha256_of_array(cifar_train.targets) == \
        "a2084e87c76d1d22ef5ac30a81addb49027565cdc65f0e1b451ae5969d56117e"
    assert sha256_of_array(cifar_train.data) == \
        "bf3aabd52be912dae02a0435296c4dab5289524b57f55cd162dc4796935a611b"
    x, y = cifar_train[0]
    assert x.shape == (3, 32, 32) and y == 0
    assert cifar_train.classes[6] == "frog"


def test_cifar10_test_split():
    require("cifar10")
    test = load_dataset("cifar10", "test")
    assert test.data.shape == (10000, 32, 32, 3)
    assert np.bincount(test.targets).tolist() == [1000] * 10
    assert sha256_of_array(test.data) == "5a6aa8185204d80b65d3dfb540696dadd5f10d185ded226a96665d3e0fc6259f"


def test_missing_files_raise_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist.*train-images-idx3-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar10"):
        load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "nope")


def test_bad_names_and_splits():
    with pytest.raises(ValueError, match="name"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", split="val")


def test_default_data_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LCMAT_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("LCMAT_DATA_DIR")
    found = default_data_dir()
    assert found is None or found.is_dir()


# --------------------------------------------------------------------------------------------------
# digits (always available)
# --------------------------------------------------------------------------------------------------

def test_digits_split_is_deterministic_stratified_and_complete():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797
    assert len(train) == 1438
    assert train.data.shape[1:] == (8, 8) and train.data.dtype == np.uint8
    counts = np.bincount(train.targets) + np.bincount(test.targets)
    assert (np.abs(np.bincount(train.targets) - 0.8 * counts) <= 1).all()
    again = load_dataset("digits", "train")
    np.testing.assert_array_equal(train.data, again.data)
    np.testing.assert_array_equal(train.targets, again.targets)
    x, y = train[3]
    assert x.shape == (1, 8, 8) and isinstance(y, int)
    stacked, _ = train.get_batch(np.arange(len(train)))
    assert abs(stacked.mean().item()) < 0.01 and abs(stacked.std().item() - 1) < 0.01


# --------------------------------------------------------------------------------------------------
# IDX parsing and a fake CIFAR tar
# --------------------------------------------------------------------------------------------------

def write_idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def test_load_idx_gz_and_plain(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    write_idx(tmp_path / "a.gz", images, 2051)
    write_idx(tmp_path / "b", images[:, 0, 0], 2049)
    np.testing.assert_array_equal(load_idx(tmp_path / "a.gz", 2051), images)
    np.testing.assert_array_equal(load_idx(tmp_path / "b", 2049), images[:, 0, 0])
    with pytest.raises(ValueError, match="magic"):
        load_idx(tmp_path / "a.gz", 2049)
    with open(tmp_path / "c", "wb") as f:
        f.write((2051).to_bytes(4, "big") + b"".join((2).to_bytes(4, "big") for _ in range(3)) + b"\0")
    with pytest.raises(ValueError, match="header"):
        load_idx(tmp_path / "c")


def test_torchvision_layout_is_found(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28).astype(np.uint8)
    write_idx(raw / "t10k-images-idx3-ubyte", images, 2051)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array([3, 7], dtype=np.uint8), 2049)
    ds = load_dataset("mnist", "test", data_dir=tmp_path)
    assert ds.targets.tolist() == [3, 7]
    np.testing.assert_array_equal(ds.data, images)


def jpeg_bytes(value):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), value, dtype=np.uint8)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def make_fake_cifar_tar(folder, members):
    path = folder / "cifar10"
    path.mkdir(parents=True)
    with tarfile.open(path / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        for name, value in members:
            blob = jpeg_bytes(value)
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def test_fake_cifar_tar_sorted_by_class_then_number_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LCMAT_CACHE_DIR", str(tmp_path / "cache"))
    # Scrambled member order; pixel value encodes (class, number).
    members = [("train/cat/0001.jpg", 41), ("train/airplane/0010.jpg", 12), ("train/cat/0000.jpg", 40),
               ("train/airplane/0002.jpg", 11), ("test/dog/0000.jpg", 200), ("train/truck/0000.jpg", 90)]
    make_fake_cifar_tar(tmp_path / "data", members)
    train = load_dataset("cifar10", "train", data_dir=tmp_path / "data")
    assert train.targets.tolist() == [0, 0, 3, 3, 9]
    assert (np.abs(train.data[:, 5, 5, 0].astype(int) - [11, 12, 40, 41, 90]) <= 2).all()
    cached = list((tmp_path / "cache").glob("cifar10-jpeg-train-*.npz"))
    assert len(cached) == 1

    def fail(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(lcdata, "decode_cifar10_tar", fail)
    again = load_dataset("cifar10", "train", data_dir=tmp_path / "data")
    np.testing.assert_array_equal(again.data, train.data)
    monkeypatch.undo()
    monkeypatch.setenv("LCMAT_CACHE_DIR", str(tmp_path / "cache"))
    test = load_dataset("cifar10", "test", data_dir=tmp_path / "data", cache=False)  # no npz: from the tar
    assert test.targets.tolist() == [5]


def test_cifar_pickles_are_preferred(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    flat = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        flat[name] = rng.integers(0, 256, (2, 3 * 32 * 32), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": flat[name], b"labels": [1, 8]}, f)
    train = load_dataset("cifar10", "train", data_dir=tmp_path)
    assert train.data.shape == (10, 32, 32, 3) and train.targets.tolist() == [1, 8] * 5
    np.testing.assert_array_equal(train.data[0, :, :, 2], flat["data_batch_1"][0, 2048:].reshape(32, 32))
    test = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert len(test) == 2


# --------------------------------------------------------------------------------------------------
# ArrayDataset, foreign datasets, augmentation
# --------------------------------------------------------------------------------------------------

def small_rgb_dataset(n=6, transform=None):
    rng = np.random.default_rng(2)
    return ArrayDataset(rng.integers(0, 256, (n, 5, 6, 3), dtype=np.uint8), np.arange(n) % 3,
                        mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), transform=transform)


def test_array_dataset_item_matches_batch_and_normalises():
    ds = small_rgb_dataset()
    x, y = ds[4]
    xb, yb = ds.get_batch([4, 1])
    assert x.shape == (3, 5, 6) and y == 1 and yb.tolist() == [1, 1]
    torch.testing.assert_close(xb[0], x)
    expected = (ds.data[4, 2, 3, 1] / 255.0 - 0.4) / 0.25
    assert abs(x[1, 2, 3].item() - expected) < 1e-6


def test_array_dataset_validates_arguments():
    with pytest.raises(ValueError, match="data"):
        ArrayDataset(np.zeros((2, 3, 3), dtype=np.float32), [0, 1])
    with pytest.raises(ValueError, match="targets"):
        ArrayDataset(np.zeros((2, 3, 3), dtype=np.uint8), [0, 1, 2])
    with pytest.raises(ValueError, match="mean/std"):
        ArrayDataset(np.zeros((2, 3, 3), dtype=np.uint8), [0, 1], mean=(0.1, 0.2), std=(1, 1))


def test_transform_applied_per_item_and_per_batch():
    ds = small_rgb_dataset(transform=lambda t: t * 0)
    assert ds[0][0].abs().sum() == 0
    assert ds.get_batch([0, 1])[0].abs().sum() == 0
    assert ds.get_batch([0, 1], apply_transform=False)[0].abs().sum() > 0


def test_dataset_targets_sources():
    class WithTargets(torch.utils.data.Dataset):
        def __init__(self, targets):
            self.targets = targets

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return torch.zeros(1), self.targets[i]

    for targets in ([3, 1, 2], torch.tensor([3, 1, 2]), np.array([3, 1, 2], dtype=np.uint8)):
        out = dataset_targets(WithTargets(targets))
        assert out.dtype == np.int64 and out.tolist() == [3, 1, 2]
    subset = torch.utils.data.Subset(WithTargets([3, 1, 2]), [2, 0])
    assert dataset_targets(subset).tolist() == [2, 3]
    plain = [(torch.zeros(1), 4), (torch.zeros(1), 0)]
    assert dataset_targets(plain).tolist() == [4, 0]


def test_wrap_torchvision_style_datasets():
    class MNIST:  # mimics torchvision.datasets.MNIST's attributes
        data = torch.zeros((3, 28, 28), dtype=torch.uint8)
        targets = torch.tensor([1, 0, 2])
        classes = ["0 - zero", "1 - one", "2 - two"]

        def __len__(self):
            return 3

    ds = wrap_torchvision(MNIST())
    assert ds.mean == (0.1307,) and ds.targets.tolist() == [1, 0, 2] and ds.name == "mnist"

    class EMNIST:
        split = "letters"
        data = torch.arange(2 * 28 * 28).reshape(2, 28, 28).to(torch.uint8)
        targets = torch.tensor([1, 26])
        classes = ["N/A"] + [chr(97 + i) for i in range(26)]

        def __len__(self):
            return 2

    letters = wrap_torchvision(EMNIST())
    assert letters.targets.tolist() == [0, 25]
    np.testing.assert_array_equal(letters.data, EMNIST.data.numpy().transpose(0, 2, 1))

    class Other:
        data = np.full((4, 6, 6, 3), 128, dtype=np.uint8)
        targets = [0, 1, 0, 1]
        classes = ["a", "b"]

        def __len__(self):
            return 4

    other = wrap_torchvision(Other())
    assert other.name is None and other.classes == ["a", "b"] and len(other.mean) == 3


def brute_force_is_crop_or_flip(out, image, padding):
    padded = torch.nn.functional.pad(image[None], (padding,) * 4, mode="reflect")[0]
    _, h, w = image.shape
    for oy in range(2 * padding + 1):
        for ox in range(2 * padding + 1):
            crop = padded[:, oy:oy + h, ox:ox + w]
            if torch.equal(out, crop) or torch.equal(out, crop.flip(-1)):
                return True
    return False


def test_random_crop_flip_gives_valid_crops():
    images = torch.randn(16, 3, 8, 8)
    torch.manual_seed(0)
    out = RandomCropFlip(padding=2)(images)
    assert out.shape == images.shape
    assert all(brute_force_is_crop_or_flip(out[i], images[i], 2) for i in range(16))
    assert not torch.equal(out, images)
    single = RandomCropFlip(padding=2)(images[0])
    assert single.shape == (3, 8, 8) and brute_force_is_crop_or_flip(single, images[0], 2)


def test_random_crop_flip_is_seeded_and_identity_without_padding_or_flip():
    images = torch.randn(8, 1, 6, 6)
    a = RandomCropFlip(4, generator=torch.Generator().manual_seed(5))(images)
    b = RandomCropFlip(4, generator=torch.Generator().manual_seed(5))(images)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(RandomCropFlip(0, flip=False)(images), images)
    with pytest.raises(ValueError, match="padding"):
        RandomCropFlip(-1)
    with pytest.raises(ValueError, match="padding"):
        RandomCropFlip(8)(images)


def test_random_crop_flip_as_dataset_transform():
    ds = small_rgb_dataset(transform=RandomCropFlip(padding=2))
    x, _ = ds[0]
    plain = ds.get_batch([0], apply_transform=False)[0][0]
    assert x.shape == plain.shape and brute_force_is_crop_or_flip(x, plain, 2)


def test_long_tail_profile_and_clean_test_split():
    train = load_dataset("digits", "train", imbalance=10.0, corruption_seed=3)
    full = load_dataset("digits", "train")
    full_counts = np.bincount(full.targets, minlength=10)
    counts = np.bincount(train.targets, minlength=10)
    n_max = full_counts.max()
    expected = [min(full_counts[c], max(int(n_max * 10.0 ** (-c / 9)), 1)) for c in range(10)]
    assert counts.tolist() == expected
    assert counts[0] == full_counts[0] and counts[9] == int(n_max / 10)
    assert train.corruption == {"imbalance": 10.0, "label_noise": 0.0, "corruption_seed": 3}
    np.testing.assert_array_equal(train.clean_targets, train.targets)
    # every kept image is an image of the full set with the same label
    rows = {img.tobytes(): int(t) for img, t in zip(full.data, full.targets)}
    assert all(rows[img.tobytes()] == int(t) for img, t in zip(train.data, train.targets))
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "test", imbalance=10.0)


def test_symmetric_label_noise_flips_exact_fraction_to_other_classes():
    clean = load_dataset("digits", "train")
    noisy = load_dataset("digits", "train", label_noise=0.4, corruption_seed=1)
    np.testing.assert_array_equal(noisy.clean_targets, clean.targets)
    flipped = noisy.targets != noisy.clean_targets
    assert flipped.sum() == round(0.4 * len(clean))
    assert noisy.targets.min() >= 0 and noisy.targets.max() < 10
    again = load_dataset("digits", "train", label_noise=0.4, corruption_seed=1)
    np.testing.assert_array_equal(again.targets, noisy.targets)
    other = load_dataset("digits", "train", label_noise=0.4, corruption_seed=2)
    assert (other.targets != noisy.targets).any()
    # the new labels spread over the other classes
    pairs = np.stack([noisy.clean_targets[flipped], noisy.targets[flipped]], 1)
    assert len({tuple(p) for p in pairs}) > 50


@pytest.mark.parametrize("kwargs, name", [({"imbalance": 0.5}, "imbalance"), ({"imbalance": float("inf")}, "imbalance"),
                                          ({"label_noise": 1.0}, "label_noise"), ({"label_noise": -0.1}, "label_noise"),
                                          ({"corruption_seed": -1, "label_noise": 0.1}, "corruption_seed"),
                                          ({"imbalance": "x"}, "imbalance")])
def test_corruption_arguments_are_validated(kwargs, name):
    with pytest.raises(ValueError, match=name):
        load_dataset("digits", "train", **kwargs)
