"""Training loops, forgetting counts, weighted loss, feature extraction and the checkpoint cache."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lcmat.data import ArrayDataset, default_data_dir, load_dataset
from lcmat.models import MLP, ConvNet3, LeNet, ResNet18
from lcmat.features import extract_features, extract_features_train_bn
from lcmat.train import (cached_selection_model, count_forgetting_events, evaluate, train_on_coreset,
                         train_selection_model, weighted_cross_entropy)



@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


def mlp_builder():
    return MLP(10, 64, hidden=64)


def state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------------------------
# Forgetting counts
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("history,expected", [
    ([1, 0, 1, 0], 2),
    ([0, 1, 1, 1], 0),
    ([1, 1, 0], 1),
    ([0, 1, 0, 0, 1], 1),
    ([1, 0, 0, 1, 0, 1], 2),
    ([0, 0, 0], 3),  # never learnt: counted as the number of presentations
    ([1], 0),
    ([0], 1),
])
def test_count_forgetting_events_single_sample(history, expected):
    assert count_forgetting_events(history) == expected


def test_count_forgetting_events_matrix():
    history = np.array([[1, 0, 0, 1],
                        [0, 1, 0, 1],
                        [1, 1, 0, 0],
                        [0, 1, 0, 1]], dtype=bool)  # [presentations, samples]
    counts = count_forgetting_events(history)
    assert counts.dtype == np.int64 and counts.tolist() == [2, 0, 4, 1]
    with pytest.raises(ValueError, match="correct_history"):
        count_forgetting_events(np.zeros((2, 2, 2)))


# --------------------------------------------------------------------------------------------------
# Weighted loss
# --------------------------------------------------------------------------------------------------

def test_weighted_loss_arithmetic():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    plain = F.cross_entropy(logits, targets)
    torch.testing.assert_close(weighted_cross_entropy(logits, targets), plain)
    torch.testing.assert_close(weighted_cross_entropy(logits, targets, torch.full((6,), 2.5)), plain)
    w = torch.tensor([1.0, 2.0, 0.0, 3.0, 0.5, 1.5])
    losses = F.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(weighted_cross_entropy(logits, targets, w), (w * losses).sum() / w.sum())
    torch.testing.assert_close(weighted_cross_entropy(logits, targets, w), ((w / w.mean()) * losses).mean())


def test_zero_weight_removes_gradient():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 0])
    weighted_cross_entropy(logits, targets, torch.tensor([1.0, 0.0, 2.0, 1.0])).backward()
    assert torch.all(logits.grad[1] == 0) and torch.any(logits.grad[0] != 0)
    logits.grad = None
    loss = weighted_cross_entropy(logits, targets, torch.zeros(4))
    loss.backward()
    assert loss.item() == 0 and torch.all(logits.grad == 0)


def test_equal_weights_train_exactly_like_no_weights(digits):
    train, _ = digits
    idx = np.arange(0, len(train), 3)
    kwargs = dict(epochs=2, batch_size=64, seed=4, progress=False)
    plain = train_on_coreset(mlp_builder, train, idx, **kwargs)
    # 0.5 keeps w / mean(w) exactly 1 in float32, so training must be bitwise identical.
    weighted = train_on_coreset(mlp_builder, train, idx, weights=np.full(len(idx), 0.5), **kwargs)
    assert state_equal(plain["model"], weighted["model"])
    other = train_on_coreset(mlp_builder, train, idx, weights=np.full(len(idx), 0.3), **kwargs)
    for a, b in zip(plain["model"].parameters(), other["model"].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Coreset training
# --------------------------------------------------------------------------------------------------

def test_coreset_training_learns_digits(digits):
    train, test = digits
    result = train_on_coreset(mlp_builder, train, np.arange(len(train)), epochs=8, batch_size=64,
                              test_dataset=test, seed=0, progress=False)
    assert result["final_acc"] > 90.0
    assert result["best_acc"] >= result["final_acc"]
    assert len(result["history"]) == 8 and result["seconds"] > 0
    assert result["history"][-1]["test_acc"] == result["final_acc"]


def test_coreset_training_is_deterministic_for_a_seed(digits):
    train, test = digits
    idx = np.arange(0, len(train), 4)
    runs = [train_on_coreset(mlp_builder, train, idx, epochs=2, batch_size=32, test_dataset=test,
                             seed=s, progress=False) for s in (7, 7, 8)]
    assert [h["train_loss"] for h in runs[0]["history"]] == [h["train_loss"] for h in runs[1]["history"]]
    assert runs[0]["final_acc"] == runs[1]["final_acc"]
    assert state_equal(runs[0]["model"], runs[1]["model"])
    assert not state_equal(runs[0]["model"], runs[2]["model"])


def test_cosine_schedule_ends_at_eta_min_and_decreases(digits):
    train, test = digits
    result = train_on_coreset(mlp_builder, train, np.arange(20), epochs=5, batch_size=128, lr=0.05,
                              test_dataset=test, eval_every=2, progress=False)
    lrs = [h["lr"] for h in result["history"]]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert abs(lrs[-1] - 1e-4) < 1e-12
    assert [h["test_acc"] is not None for h in result["history"]] == [False, True, False, True, True]


def test_coreset_training_with_augmentation_and_weights():
    rng = np.random.default_rng(0)
    ds = ArrayDataset(rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8), np.arange(24) % 4)
    result = train_on_coreset(lambda: ConvNet3(4, 3, 16, width=8), ds, np.arange(0, 24, 2),
                              weights=rng.uniform(0, 2, 12), epochs=2, batch_size=5, augment=True,
                              progress=False)
    assert result["final_acc"] is None and result["best_acc"] is None
    assert np.isfinite([h["train_loss"] for h in result["history"]]).all()


def test_coreset_training_argument_errors(digits):
    train, _ = digits
    with pytest.raises(ValueError, match="indices"):
        train_on_coreset(mlp_builder, train, [0, len(train)], epochs=1, progress=False)
    with pytest.raises(ValueError, match="indices"):
        train_on_coreset(mlp_builder, train, [], epochs=1, progress=False)
    with pytest.raises(ValueError, match="weights"):
        train_on_coreset(mlp_builder, train, [0, 1], weights=[1.0], epochs=1, progress=False)
    with pytest.raises(ValueError, match="weights"):
        train_on_coreset(mlp_builder, train, [0, 1], weights=[1.0, -1.0], epochs=1, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        train_on_coreset(mlp_builder, train, [0, 1], epochs=0, progress=False)
    with pytest.raises(ValueError, match="augment"):
        train_on_coreset(mlp_builder, train, [0, 1], epochs=1, augment="bogus", progress=False)
    with pytest.raises(ValueError, match="model"):
        train_on_coreset("mlp", train, [0, 1], epochs=1, progress=False)


# --------------------------------------------------------------------------------------------------
# Selection-model training
# --------------------------------------------------------------------------------------------------

def test_selection_model_training_records_forgetting(digits):
    train, test = digits
    model, stats = train_selection_model(mlp_builder, train, epochs=4, batch_size=64, seed=1, progress=False)
    n = len(train)
    assert stats["forgetting"].shape == (n,) and stats["forgetting"].dtype == np.int64
    assert stats["correct_history"].shape == (4, n)
    np.testing.assert_array_equal(stats["forgetting"], count_forgetting_events(stats["correct_history"]))
    assert len(stats["epoch_loss"]) == 4 and stats["epoch_loss"][-1] < stats["epoch_loss"][0]
    # The recorded correctness is the per-epoch training accuracy.
    np.testing.assert_allclose(stats["correct_history"].mean(axis=1) * 100, stats["epoch_acc"])
    assert evaluate(model, test) > 85.0
    assert not model.training


def test_selection_model_training_is_deterministic(digits):
    train, _ = digits
    a, sa = train_selection_model(mlp_builder, train, epochs=2, seed=3, progress=False)
    b, sb = train_selection_model(mlp_builder, train, epochs=2, seed=3, progress=False)
    assert state_equal(a, b)
    np.testing.assert_array_equal(sa["correct_history"], sb["correct_history"])
    _, sc = train_selection_model(mlp_builder, train, epochs=2, seed=3, record_forgetting=False,
                                  progress=False)
    assert sc["forgetting"] is None and sc["epoch_loss"] == sa["epoch_loss"]


# --------------------------------------------------------------------------------------------------
# Evaluation and features
# --------------------------------------------------------------------------------------------------

def test_evaluate_matches_manual_accuracy(digits):
    _, test = digits
    torch.manual_seed(0)
    model = mlp_builder()
    x, y = test.get_batch(np.arange(len(test)))
    with torch.no_grad():
        manual = 100.0 * (model(x).argmax(1) == y).sum().item() / len(test)
    assert abs(evaluate(model, test, batch_size=50) - manual) < 1e-9


def test_extract_features_shapes_and_last_layer_identity(digits):
    _, test = digits
    torch.manual_seed(0)
    model = mlp_builder().train()
    H, Z, y = extract_features(model, test, batch_size=100, progress=False)
    assert H.shape == (len(test), 64) and Z.shape == (len(test), 10)
    assert H.dtype == np.float32 and Z.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(y, test.targets)
    fc = model.fc
    np.testing.assert_allclose(H @ fc.weight.detach().numpy().T + fc.bias.detach().numpy(), Z,
                               rtol=1e-5, atol=1e-5)
    assert model.training  # mode restored


def test_extract_features_on_a_plain_tensor_dataset():
    torch.manual_seed(0)
    x, y = torch.randn(10, 1, 8, 8), torch.arange(10) % 3
    model = MLP(3, 64, hidden=8)
    H, Z, labels = extract_features(model, torch.utils.data.TensorDataset(x, y), batch_size=4, progress=False)
    assert labels.tolist() == y.tolist()
    with torch.no_grad():
        np.testing.assert_allclose(Z, model(x).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(H, model.embed(x).numpy(), rtol=1e-5, atol=1e-6)


class TinyBN(nn.Module):
    """Conv-BN2d-ReLU-pool-Linear-BN1d-ReLU-Dropout-Linear: BN and dropout to test layer modes."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn2d = nn.BatchNorm2d(4)
        self.hidden = nn.Linear(16, 8)
        self.bn1d = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        h = F.adaptive_avg_pool2d(F.relu(self.bn2d(self.conv(x))), 2).flatten(1)
        h = self.drop(F.relu(self.bn1d(self.hidden(h))))
        return self.fc(h)


def test_extract_features_train_bn_uses_class_batches_and_keeps_running_stats(digits):
    train, _ = digits
    subset_idx = np.arange(300)
    ds = ArrayDataset(train.data[subset_idx], train.targets[subset_idx], mean=train.mean, std=train.std)
    torch.manual_seed(0)
    model = TinyBN()
    model.train()
    with torch.no_grad():  # move running statistics away from their initial values
        model(ds.get_batch(np.arange(100))[0])
    model.eval()
    before = copy.deepcopy(model.state_dict())
    labels = ds.targets
    batch_size = 12
    counts = np.bincount(labels)
    assert (counts % batch_size != 1).all()  # BatchNorm1d cannot take a batch of one in train mode
    H, Z, b = extract_features_train_bn(model, ds, labels, batch_size=batch_size)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training and not model.bn2d.training

    # Batch sizes: full batches then the class's remainder, in dataset order.
    for c in range(10):
        members = np.flatnonzero(labels == c)
        expected = np.full(len(members), batch_size)
        if len(members) % batch_size:
            expected[-(len(members) % batch_size):] = len(members) % batch_size
        np.testing.assert_array_equal(b[members], expected)

    # Reference: BatchNorm in train mode on the class's second batch, dropout off.
    members = np.flatnonzero(labels == 3)[batch_size:2 * batch_size]
    reference = copy.deepcopy(model)
    reference.bn2d.train()
    reference.bn1d.train()
    with torch.no_grad():
        z_ref = reference(ds.get_batch(members)[0]).numpy()
    np.testing.assert_allclose(Z[members], z_ref, rtol=1e-5, atol=1e-5)
    fc = model.fc
    np.testing.assert_allclose(H @ fc.weight.detach().numpy().T + fc.bias.detach().numpy(), Z,
                               rtol=1e-5, atol=1e-5)
    H_eval, _, _ = extract_features(model, ds, progress=False)
    assert not np.allclose(H_eval, H)


def test_extract_features_train_bn_on_resnet18_leaves_stats_unchanged():
    rng = np.random.default_rng(0)
    ds = ArrayDataset(rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8), np.arange(12) % 2)
    torch.manual_seed(0)
    model = ResNet18(2).eval()
    before = copy.deepcopy(model.state_dict())
    H, Z, b = extract_features_train_bn(model, ds, ds.targets, batch_size=3)
    assert H.shape == (12, 512) and Z.shape == (12, 2) and b.tolist() == [3] * 12
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_extract_features_train_bn_argument_errors(digits):
    _, test = digits
    with pytest.raises(ValueError, match="labels"):
        extract_features_train_bn(TinyBN(), test, test.targets[:-1])
    with pytest.raises(ValueError, match="model"):
        extract_features_train_bn(nn.Sequential(nn.Flatten()), test, test.targets)


# --------------------------------------------------------------------------------------------------
# Checkpoint cache
# --------------------------------------------------------------------------------------------------

def test_cached_selection_model_trains_once(digits, tmp_path):
    train, _ = digits
    calls = []

    def train_fn(model):
        calls.append(1)
        return train_selection_model(model, train, epochs=1, seed=2, progress=False)

    first, stats1 = cached_selection_model("digits", "mlp", 1, 2, mlp_builder, train_fn, cache_dir=tmp_path)
    second, stats2 = cached_selection_model("digits", "mlp", 1, 2, mlp_builder, train_fn, cache_dir=tmp_path)
    assert len(calls) == 1
    assert not stats1["from_cache"] and stats2["from_cache"]
    assert state_equal(first, second)
    np.testing.assert_array_equal(stats1["forgetting"], stats2["forgetting"])
    assert stats2["forgetting"].dtype == np.int64 and stats2["epoch_loss"] == stats1["epoch_loss"]
    cached_selection_model("digits", "mlp", 1, 3, mlp_builder, train_fn, cache_dir=tmp_path)
    assert len(calls) == 2
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_cached_selection_model_default_location(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("LCMAT_CACHE_DIR", str(tmp_path))
    train, _ = digits
    _, stats = cached_selection_model(
        "digits", "mlp", 1, 0, mlp_builder,
        lambda m: train_selection_model(m, train, epochs=1, progress=False))
    assert stats["cache_path"].startswith(str(tmp_path / "checkpoints"))


# --------------------------------------------------------------------------------------------------
# Slow (--runslow) and GPU tests
# --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_lenet_on_a_fashion_mnist_coreset():
    data_dir = default_data_dir()
    if data_dir is None or not (data_dir / "fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST not available")
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    idx = np.random.default_rng(0).choice(len(train), 3000, replace=False)
    result = train_on_coreset(lambda: LeNet(10), train, idx, epochs=10, lr=0.05, test_dataset=test,
                              eval_every=5, progress=False)
    assert result["final_acc"] > 75.0


@pytest.mark.gpu
def test_training_and_features_on_cuda_match_cpu(digits):
    train, test = digits
    idx = np.arange(0, len(train), 2)
    result = train_on_coreset(mlp_builder, train, idx, weights=np.linspace(0.5, 1.5, len(idx)), epochs=4,
                              batch_size=64, test_dataset=test, augment=None, device="cuda", progress=False)
    assert result["final_acc"] > 80.0
    model = result["model"]
    assert next(model.parameters()).is_cuda
    H, Z, y = extract_features(model, test, device="cuda", progress=False)
    H_cpu, Z_cpu, _ = extract_features(copy.deepcopy(model).cpu(), test, progress=False)
    np.testing.assert_allclose(H, H_cpu, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(Z, Z_cpu, rtol=1e-3, atol=1e-3)
    assert abs(evaluate(model, test, device="cuda") - evaluate(copy.deepcopy(model).cpu(), test)) < 1.0
    _, stats = train_selection_model(mlp_builder, train, epochs=2, device="cuda", progress=False)
    assert stats["forgetting"].shape == (len(train),)
    rgb = ArrayDataset(np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
                       np.arange(16) % 2)
    bn_model = ResNet18(2).cuda().eval()
    before = copy.deepcopy(bn_model.state_dict())
    _, _, b = extract_features_train_bn(bn_model, rgb, rgb.targets, batch_size=4, device="cuda")
    assert b.tolist() == [4] * 16
    assert all(torch.equal(before[k], v) for k, v in bn_model.state_dict().items())
    out = train_on_coreset(lambda: ConvNet3(2, 3, 16, width=8), rgb, np.arange(16), epochs=1,
                           batch_size=8, augment=True, device="cuda", progress=False)
    assert np.isfinite(out["history"][0]["train_loss"])
