"""The DeepCore adapter: DeepCore's constructor and return format, driven as DeepCore's main.py does."""

import argparse
import io
import sys
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
         "Uncertainty", "Forgetting", "ContextualDiversity", "DeepFool", "Cal", "Submodular", "ModerateDS",
         "GradMatch", "Glister", "AdaCore"] + sorted(methods.REGISTRY)
SCORED = ("GraNd", "EL2N", "Uncertainty", "Forgetting", "FDMat", "DeepFool", "Cal", "ModerateDS")
WEIGHTED = ("Craig", "CRAIG")


def skip_unless_available(name):
    cls = methods.__dict__[name]
    if cls.method is not None and cls.method not in lcmat.METHODS:
        pytest.skip(f"{name}: lcmat.METHODS has no {cls.method!r} in this version")


@pytest.mark.parametrize("name", NAMES)
def test_main_py_driving_and_return_format(name, tiny):
    skip_unless_available(name)
    args = deepcore_args(selection=name)
    method, subset, dst_subset = main_py_select(name, tiny, args)
    cls = methods.__dict__[name]
    name = next((n for n in NAMES[:20] if methods.__dict__[n] is cls), name)  # the unprefixed name
    assert set(subset) <= {"indices", "weights", "scores"}
    idx = subset["indices"]
    assert isinstance(idx, np.ndarray) and idx.dtype == np.int64 and idx.ndim == 1
    assert len(np.unique(idx)) == len(idx) and idx.min() >= 0 and idx.max() < len(tiny)
    # balance=True: k_c = round(0.25 * n_c) per class = 3, 2, 3.
    labels = np.array(tiny.targets)
    np.testing.assert_array_equal(np.bincount(labels[idx], minlength=3), [3, 2, 3])
    assert len(dst_subset) == len(idx) and dst_subset[0][1] == labels[idx[0]]
    if name in WEIGHTED:
        w = subset["weights"]
        assert w.shape == idx.shape and np.all(w >= 2)
        # DeepCore's convention: 1 + cluster size, and every sample is in one cluster.
        assert w.sum() == pytest.approx(len(tiny) + len(idx))
    if "scores" in subset:
        assert subset["scores"].shape == (len(tiny),)
    if name in ("GradMatch", "Glister", "AdaCore"):
        return  # their weights and scores are the methods' own
    assert ("weights" in subset) == (name in WEIGHTED)
    assert ("scores" in subset) == (name in SCORED)
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


# ---------------------------------------------------------------------------------------------
# Faithful to DeepCore: its networks, its optimizer settings, its names, its weights

class DeepCoreStyleMLP(torch.nn.Module):
    """A network with DeepCore's constructor convention (channel, num_classes, im_size, ...,
    pretrained) and its get_last_layer(); deliberately narrower than lcmat's MLP."""

    def __init__(self, channel, num_classes, im_size, record_embedding=False, no_grad=False, pretrained=False):
        super().__init__()
        self.fc_1 = torch.nn.Linear(im_size[0] * im_size[1] * channel, 16)
        self.fc_2 = torch.nn.Linear(16, num_classes)

    def get_last_layer(self):
        return self.fc_2

    def forward(self, x):
        return self.fc_2(torch.relu(self.fc_1(x.flatten(1))))


@pytest.fixture
def fake_deepcore(monkeypatch):
    """A stand-in `deepcore` package with `nets` (two networks) and `methods` (two of DeepCore's names)."""
    import types
    package, nets, dc_methods = (types.ModuleType(n) for n in ("deepcore", "deepcore.nets", "deepcore.methods"))
    nets.MLP = DeepCoreStyleMLP
    nets.VGG11 = DeepCoreStyleMLP  # a name lcmat's get_model does not know
    dc_methods.Craig = object()
    dc_methods.Uniform = object()
    package.nets, package.methods = nets, dc_methods
    for name, module in (("deepcore", package), ("deepcore.nets", nets), ("deepcore.methods", dc_methods)):
        monkeypatch.setitem(sys.modules, name, module)
    return package


@pytest.mark.parametrize("model", ["MLP", "VGG11"])
def test_inside_deepcore_the_network_deepcore_names_is_trained(model, tiny, fake_deepcore):
    method = methods.EL2N(tiny, deepcore_args(model=model), FRACTION, 0, epochs=1)
    method.select()
    assert type(method.model) is DeepCoreStyleMLP
    torch.manual_seed(0)
    expected = sum(p.numel() for p in DeepCoreStyleMLP(1, 3, (8, 8)).parameters())
    assert sum(p.numel() for p in method.model.parameters()) == expected
    # specific_model names a network the same way
    method = methods.Herding(tiny, deepcore_args(model="DoesNotExist"), FRACTION, 0, epochs=0, specific_model=model)
    method.select()
    assert type(method.model) is DeepCoreStyleMLP


def test_outside_deepcore_a_name_is_an_lcmat_network(tiny):
    method = methods.EL2N(tiny, deepcore_args(model="MLP"), FRACTION, 0, epochs=0)
    method.select()
    assert type(method.model) is type(get_model("mlp", 3, 1, (8, 8)))


def test_selection_optimizer_is_honoured_and_ignored_settings_warn_once(tiny, monkeypatch):
    monkeypatch.setattr(methods, "_warned", set())
    args = deepcore_args(selection_optimizer="Adam", selection_lr=0.01, selection_weight_decay=1e-4)
    with pytest.warns(UserWarning) as record:
        method = methods.EL2N(tiny, args, FRACTION, 0, epochs=EPOCHS)
        method.select()
        methods.EL2N(tiny, args, FRACTION, 0, epochs=EPOCHS).select()
    ignored = sorted(str(w.message).split()[1] for w in record if "is ignored" in str(w.message))
    assert ignored == ["args.selection_momentum", "args.selection_nesterov"]  # once each
    torch.manual_seed(0)
    model = get_model("mlp", len(COUNTS), 1, (8, 8))
    model, _ = train_selection_model(model, tiny, epochs=EPOCHS, batch_size=8, seed=0, device="cpu", progress=False,
                                     optimizer=lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-4))
    for a, b in zip(method.model.parameters(), model.parameters()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="selection_optimizer"):
        methods.EL2N(tiny, deepcore_args(selection_optimizer="Sgd2"), FRACTION, 0, epochs=1).select()


def test_selection_batch_and_lr_reach_the_training(tiny, monkeypatch):
    seen = {}

    def spy(model, dataset, **kwargs):
        seen.update(kwargs)
        return train_selection_model(model, dataset, **kwargs)

    monkeypatch.setattr(methods, "train_selection_model", spy)
    methods.EL2N(tiny, deepcore_args(selection_batch=5, selection_lr=0.03, selection_momentum=0.5,
                                     selection_weight_decay=0.0, selection_nesterov=False), FRACTION, 0,
                 epochs=1).select()
    assert (seen["batch_size"], seen["lr"], seen["momentum"], seen["weight_decay"], seen["nesterov"]) == \
        (5, 0.03, 0.5, 0.0, False)


def test_no_progress_bars_when_stderr_is_not_a_terminal(tiny, monkeypatch):
    args = deepcore_args()
    del args.progress
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    method = methods.Herding(tiny, args, FRACTION, 0, epochs=1)
    assert method.progress is False
    method.select()
    assert "\r" not in sys.stderr.getvalue()
    assert methods.Herding(tiny, deepcore_args(progress=True), FRACTION, 0).progress is True


def test_register_adds_lcmat_methods_beside_deepcores(fake_deepcore):
    dc_methods = fake_deepcore.methods
    craig, uniform = dc_methods.Craig, dc_methods.Uniform
    added = methods.register()
    assert dc_methods.Craig is craig and dc_methods.Uniform is uniform  # DeepCore's own untouched
    assert dc_methods.LcmatCraig is methods.Craig and dc_methods.LCMat is methods.LCMat
    assert dc_methods.ModerateDS is methods.ModerateDS and dc_methods.LcmatSubmodular is methods.Submodular
    assert set(added) == set(methods.REGISTRY)
    assert methods.register(dc_methods) == []  # a second call adds nothing


def test_craig_weights_are_deepcores_one_plus_cluster_size(tiny):
    args = deepcore_args()
    subset = methods.Craig(tiny, args, FRACTION, 0, epochs=EPOCHS).select()
    H, Z, y, _ = reference_features(tiny, args)
    expected = lcmat.CRAIG(fraction=FRACTION, progress=False).select_features(embeddings=H, logits=Z, labels=y)
    np.testing.assert_array_equal(subset["indices"], expected.indices)
    np.testing.assert_array_equal(subset["weights"], expected.weights + 1)


@pytest.mark.parametrize("function,greedy,lcmat_name,options", [
    ("GraphCut", "LazyGreedy", "graphcut", {"lazy": True}),
    ("GraphCut", "NaiveGreedy", "graphcut", {"lazy": False}),
    ("LogDeterminant", "NaiveGreedy", "logdet", {"lazy": False}),
])
def test_submodular_maps_function_and_greedy(function, greedy, lcmat_name, options, tiny):
    args = deepcore_args()
    subset = methods.Submodular(tiny, args, FRACTION, 0, epochs=EPOCHS, balance=True, function=function,
                                greedy=greedy).select()
    H, Z, y, _ = reference_features(tiny, args)
    expected = lcmat.get_method(lcmat_name, fraction=FRACTION, progress=False, **options)
    np.testing.assert_array_equal(subset["indices"], expected.select_features(embeddings=H, logits=Z, labels=y).indices)
    with pytest.raises(ValueError, match="function"):
        methods.Submodular(tiny, args, FRACTION, 0, function="FacilityLocation")
    with pytest.raises(ValueError, match="greedy"):
        methods.Submodular(tiny, args, FRACTION, 0, greedy="Greedy")


def test_cal_neighbors_keyword_and_deepfool_on_the_trained_model(tiny):
    args = deepcore_args()
    cal = methods.Cal(tiny, args, FRACTION, 0, epochs=EPOCHS, neighbors=3)
    assert cal.options == {"neighbours": 3}
    subset = cal.select()
    H, Z, y, _ = reference_features(tiny, args)
    expected = lcmat.Cal(fraction=FRACTION, neighbours=3, progress=False)
    expected = expected.select_features(embeddings=H, logits=Z, labels=y)
    np.testing.assert_array_equal(subset["indices"], expected.indices)
    method = methods.DeepFool(tiny, args, FRACTION, 0, epochs=EPOCHS, max_iter=10)
    subset = method.select()
    expected = lcmat.DeepFool(fraction=FRACTION, max_iter=10, balance=False, progress=False).select(
        method.model, tiny, device="cpu")
    np.testing.assert_array_equal(subset["indices"], expected.indices)
    np.testing.assert_allclose(subset["scores"], expected.scores)


def test_a_method_missing_from_lcmat_is_refused_clearly(tiny, monkeypatch):
    monkeypatch.delitem(lcmat.METHODS, "moderate")
    with pytest.raises(NotImplementedError, match="moderate"):
        methods.ModerateDS(tiny, deepcore_args(), FRACTION, 0)
