"""The DeepCore adapter: DeepCore's constructor and return format, driven as DeepCore's main.py does."""

import argparse
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset

import lcmat
from lcmat import deepcore as methods
from lcmat.models import get_model
from lcmat.features import extract_features
from lcmat.train import train_selection_model

COUNTS = (13, 9, 11)  # odd, unequal class sizes
FRACTION = 0.25
EPOCHS = 2


class TinyImages(Dataset):
    """A torchvision-like dataset (not an ArrayDataset): items are ([1, 8, 8] tensor, int label),
    with ``targets`` and ``classes``. Classes differ by a bright block in a class-specific place."""

    def __init__(self, counts=COUNTS, seed=0):
        g = torch.Generator().manual_seed(seed)
        labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
        labels = labels[torch.randperm(len(labels), generator=g).numpy()]  # classes interleaved
        x = 0.3 * torch.randn(len(labels), 1, 8, 8, generator=g)
        for i, c in enumerate(labels):
            x[i, 0, 2 * c:2 * c + 3, 1:6] += 1.5
        self.data, self.targets = x, labels.tolist()
        self.classes = [f"class{c}" for c in range(len(counts))]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.data[i], self.targets[i]


def deepcore_args(**changes):
    """The argparse namespace of DeepCore's main.py (the fields the methods read, plus others)."""
    args = argparse.Namespace(
        dataset="Tiny", model="MLP", selection="LCMat", num_exp=1, num_eval=1, epochs=200, data_path="data",
        gpu=None, print_freq=20, fraction=FRACTION, seed=0, workers=0, device="cpu", channel=1, im_size=(8, 8),
        num_classes=len(COUNTS), selection_epochs=EPOCHS, selection_momentum=0.9, selection_weight_decay=5e-4,
        selection_optimizer="SGD", selection_nesterov=True, selection_lr=0.1, selection_test_interval=1,
        selection_test_fraction=1.0, selection_batch=8, balance=True, submodular="GraphCut",
        submodular_greedy="LazyGreedy", uncertainty="Entropy", progress=False)
    for key, value in changes.items():
        setattr(args, key, value)
    return args


def main_py_select(name, dst_train, args):
    """What DeepCore's main.py does to obtain a subset."""
    selection_args = dict(epochs=args.selection_epochs, selection_method=args.uncertainty, specific_model=None,
                          balance=args.balance, torchvision_pretrain=False, greedy=args.submodular_greedy,
                          function=args.submodular, fraction_pretrain=1.)
    torch.random.manual_seed(args.seed)
    method = methods.__dict__[name](dst_train, args, args.fraction, args.seed, **selection_args)
    subset = method.select()
    if "weights" in subset:
        dst_subset = Subset(dst_train, subset["indices"])  # DeepCore wraps it in its WeightedSubset
    else:
        dst_subset = Subset(dst_train, subset["indices"])
    return method, subset, dst_subset


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny():
    return TinyImages()


def reference_features(dst_train, args, seed=0):
    """The selection model and features the adapter is documented to use, computed directly."""
    torch.manual_seed(seed)
    model = get_model("mlp", len(COUNTS), 1, (8, 8))
    model, stats = train_selection_model(model, dst_train, epochs=EPOCHS, lr=0.1, momentum=0.9, weight_decay=5e-4,
                                         nesterov=True, batch_size=8, seed=seed, device="cpu", progress=False)
    H, Z, y = extract_features(model, dst_train, batch_size=8, progress=False)
    return H, Z, y, stats


NAMES = ["Uniform", "LCMat", "LCMat_S", "FDMat", "Craig", "CRAIG", "Herding", "kCenterGreedy", "GraNd", "EL2N",
         "Uncertainty", "Forgetting"]


@pytest.mark.parametrize("name", NAMES)
def test_main_py_driving_and_return_format(name, tiny):
    args = deepcore_args(selection=name)
    method, subset, dst_subset = main_py_select(name, tiny, args)
    assert set(subset) <= {"indices", "weights", "scores"}
    idx = subset["indices"]
    assert isinstance(idx, np.ndarray) and idx.dtype == np.int64 and idx.ndim == 1
    assert len(np.unique(idx)) == len(idx) and idx.min() >= 0 and idx.max() < len(tiny)
    # balance=True: k_c = round(0.25 * n_c) per class = 3, 2, 3.
    labels = np.array(tiny.targets)
    np.testing.assert_array_equal(np.bincount(labels[idx], minlength=3), [3, 2, 3])
    assert len(dst_subset) == len(idx) and dst_subset[0][1] == labels[idx[0]]
    if "weights" in subset:
        w = subset["weights"]
        assert w.shape == idx.shape and np.all(w > 0)
        assert w.sum() == pytest.approx(len(tiny))  # every sample is represented by one pick
    if "scores" in subset:
        assert subset["scores"].shape == (len(tiny),)
    assert ("weights" in subset) == (name in ("Craig", "CRAIG"))
    assert ("scores" in subset) == (name in ("GraNd", "EL2N", "Uncertainty", "Forgetting", "FDMat"))
    assert (method.model is None) == (name == "Uniform")
    assert method.n_train == len(tiny) and method.num_classes == 3


@pytest.mark.parametrize("name,lcmat_name,options", [
    ("LCMat", "lcmat", {}),
    ("FDMat", "fdmat", {}),
    ("Craig", "craig", {}),
    ("Herding", "herding", {}),
    ("kCenterGreedy", "kcenter", {}),
    ("GraNd", "grand", {}),
    ("EL2N", "el2n", {}),
])
def test_adapter_equals_selector_on_the_pretrained_features(name, lcmat_name, options, tiny):
    args = deepcore_args()
    subset = methods.__dict__[name](tiny, args, FRACTION, 0, epochs=EPOCHS, balance=True).select()
    H, Z, y, _ = reference_features(tiny, args)
    expected = lcmat.get_method(lcmat_name, fraction=FRACTION, seed=0, progress=False, **options)
    expected = expected.select_features(embeddings=H, logits=Z, labels=y)
    np.testing.assert_array_equal(subset["indices"], expected.indices)


@pytest.mark.parametrize("selection_method,lcmat_name", [("LeastConfidence", "least_confidence"),
                                                         ("Entropy", "entropy"), ("Margin", "margin")])
def test_uncertainty_selection_methods(selection_method, lcmat_name, tiny):
    args = deepcore_args()
    subset = methods.Uncertainty(tiny, args, 0.4, 0, epochs=EPOCHS, balance=False,
                                 selection_method=selection_method).select()
    H, Z, y, _ = reference_features(tiny, args)
    expected = lcmat.get_method(lcmat_name, fraction=0.4, balance=False, progress=False)
    expected = expected.select_features(embeddings=H, logits=Z, labels=y)
    np.testing.assert_array_equal(subset["indices"], expected.indices)
    np.testing.assert_allclose(subset["scores"], expected.scores)
    assert len(subset["indices"]) == round(0.4 * len(tiny))  # one global budget


def test_uncertainty_rejects_an_unknown_selection_method(tiny):
    with pytest.raises(ValueError, match="selection_method"):
        methods.Uncertainty(tiny, deepcore_args(), 0.3, 0, selection_method="Confidence")


def test_forgetting_uses_the_counts_recorded_while_pretraining(tiny):
    subset = methods.Forgetting(tiny, deepcore_args(), FRACTION, 0, epochs=EPOCHS).select()
    _, _, y, stats = reference_features(tiny, deepcore_args())
    np.testing.assert_array_equal(subset["scores"], stats["forgetting"])
    with pytest.raises(ValueError, match="epochs"):
        methods.Forgetting(tiny, deepcore_args(), FRACTION, 0, epochs=0)


def test_options_are_passed_to_the_selector_and_unknown_keywords_warn(tiny):
    args = deepcore_args()
    H, Z, y, _ = reference_features(tiny, args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # DeepCore's own keywords are ignored silently
        subset = methods.LCMat(tiny, args, FRACTION, 0, epochs=EPOCHS, rho=5.0, num_coords=3, weights=True,
                               greedy="LazyGreedy", function="GraphCut", selection_method="Margin").select()
    expected = lcmat.LCMat(fraction=FRACTION, rho=5.0, num_coords=3, weights=True, progress=False)
    expected = expected.select_features(embeddings=H, logits=Z, labels=y)
    np.testing.assert_array_equal(subset["indices"], expected.indices)
    np.testing.assert_array_equal(subset["weights"], expected.weights)
    with pytest.warns(UserWarning, match="rh0"):
        methods.LCMat(tiny, args, FRACTION, 0, epochs=EPOCHS, rh0=1.0)


def test_seed_and_epochs_control_the_result(tiny):
    args = deepcore_args()
    a = methods.Herding(tiny, args, FRACTION, 3, epochs=EPOCHS, balance=True).select()
    b = methods.Herding(tiny, args, FRACTION, 3, epochs=EPOCHS, balance=True).select()
    np.testing.assert_array_equal(a["indices"], b["indices"])
    untrained = methods.Herding(tiny, args, FRACTION, 3, epochs=0, balance=True)
    untrained.select()
    assert untrained.train_stats["epochs"] == 0
    uniform = [methods.Uniform(tiny, args, FRACTION, s, balance=True).select()["indices"] for s in (0, 1)]
    assert not np.array_equal(uniform[0], uniform[1])


def test_specific_model_and_balance_defaults(tiny):
    args = deepcore_args(model="DoesNotExist")
    with pytest.raises(ValueError, match="unknown model"):
        methods.EL2N(tiny, args, FRACTION, 0, epochs=1).select()
    # specific_model overrides args.model; DeepCore's EL2N-like methods default to one global budget.
    method = methods.EL2N(tiny, args, 0.5, 0, epochs=1, specific_model="MLP")
    assert method.balance is False and method.coreset_size == round(0.5 * len(tiny))
    assert len(method.select()["indices"]) == method.coreset_size
    assert methods.Craig(tiny, args, 0.5).balance is True
    with pytest.raises(ValueError, match="fraction"):
        methods.Herding(tiny, args, 1.5)
