"""Coreset selectors: thin classes over `lcmat.ops` (they never know which backend runs).

Every selector takes `fraction`, `balance` (per-class budgets k_c = round(fraction * n_c), the
default; else one global budget round(fraction * N)), `seed`, `backend` and `progress`, and
offers `select_features(embeddings=, logits=, labels=)` and `select(model, dataset)`, both
returning a `Coreset` with sorted original dataset indices.
"""
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from . import ops
from .coreset import Coreset, class_budgets, global_budget, split_budget
from .validation import (as_features, as_labels, as_tensor, check_choice, check_fraction,
                         check_positive)


class Features:
    """Validated inputs of one selection: tensors on one device, plus the class structure."""

    def __init__(self, labels, embeddings=None, logits=None, num_classes=None, dtype=torch.float32):
        device = next((x.device for x in (embeddings, logits) if isinstance(x, torch.Tensor)), None)
        y = as_tensor("labels", labels, 1)
        self.embeddings = None if embeddings is None else as_features("embeddings", embeddings, len(y), dtype, device)
        self.logits = None if logits is None else as_features("logits", logits, len(y), dtype, device)
        if self.logits is not None:
            if num_classes not in (None, self.logits.shape[1]):
                raise ValueError(f"num_classes: is {num_classes} but logits has {self.logits.shape[1]} columns")
            num_classes = self.logits.shape[1]
        self.labels, self.num_classes = as_labels(y, num_classes, device=device)
        labels_np = self.labels.cpu().numpy()
        self.class_indices = [np.flatnonzero(labels_np == c) for c in range(self.num_classes)]
        self.counts = np.array([len(i) for i in self.class_indices], dtype=np.int64)

    def __len__(self):
        return len(self.labels)


class Selector:
    """Shared machinery: validation, budgets, timing, the Coreset."""
    name = ""
    needs = ("embeddings",)

    def __init__(self, fraction=0.1, balance=True, seed=0, backend=None, progress=None,
                 dtype=torch.float32):
        self.fraction = check_fraction(fraction)
        self.balance = bool(balance)
        self.seed = int(seed)
        self.backend = backend
        self.progress = progress
        self.dtype = dtype

    def select_features(self, embeddings=None, logits=None, labels=None, num_classes=None, **extra):
        """Select from precomputed arrays: embeddings [N, D] (input of the last nn.Linear),
        logits [N, C], labels [N]; torch tensors (CPU or GPU) or numpy arrays."""
        for name in self.needs:
            if {"embeddings": embeddings, "logits": logits}[name] is None:
                raise ValueError(f"{name}: {type(self).__name__} needs {' and '.join(self.needs)}")
        data = Features(labels, embeddings if "embeddings" in self.needs else None,
                        logits if "logits" in self.needs else None, num_classes, self.dtype)
        data.budgets = self._budgets(data)  # validated before any work starts
        start = time.perf_counter()
        indices, weights, scores = self._select(data, **extra)
        order = np.argsort(indices, kind="stable")
        indices = np.asarray(indices, dtype=np.int64)[order]
        if len(np.unique(indices)) != len(indices):
            raise RuntimeError(f"{self.name}: internal error, duplicate indices selected")
        return Coreset(indices=indices,
                       weights=None if weights is None else np.asarray(weights, np.float32)[order],
                       scores=None if scores is None else np.asarray(scores),
                       method=self.name, seconds=time.perf_counter() - start,
                       info={"class_counts": np.bincount(data.labels.cpu().numpy()[indices],
                                                         minlength=data.num_classes)})

    def select(self, model, dataset, batch_size=256, device=None, **extra):
        """Extract embeddings and logits with one eval-mode pass of `model` over `dataset`
        (the embedding is the input of the model's last nn.Linear), then select."""
        from .train import extract_features
        device = device or next(model.parameters()).device
        embeddings, logits, labels = extract_features(model, dataset, batch_size=batch_size,
                                                      device=device, progress=self.progress is not False)
        return self.select_features(embeddings=embeddings, logits=logits, labels=labels, **extra)

    def _budgets(self, data):
        if self.balance:
            return class_budgets(data.counts, self.fraction)
        return split_budget(data.counts, global_budget(len(data), self.fraction))

    def _classes(self, data):
        return tqdm(range(data.num_classes), desc=self.name, unit="class", leave=False,
                    disable=None if self.progress is None else not self.progress)

    def _select(self, data, **extra):
        raise NotImplementedError


class ScoreSelector(Selector):
    """Keeps the k_c samples of largest (or smallest) score per class, or the k overall;
    ties go to the lower dataset index."""
    keep = "largest"

    def _scores(self, data, **extra):
        raise NotImplementedError

    def _select(self, data, **extra):
        scores = self._scores(data, **extra)
        scores = scores.detach().double().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores, np.float64)
        key = -scores if self.keep == "largest" else scores
        if not self.balance:
            return np.argsort(key, kind="stable")[:data.budgets.sum()], None, scores
        picks = [idx[np.argsort(key[idx], kind="stable")[:k]]
                 for idx, k in zip(data.class_indices, data.budgets)]
        return np.concatenate(picks), None, scores


class Uniform(Selector):
    """Uniform random sampling without replacement (per class, or over the whole set)."""
    name = "uniform"
    needs = ()

    def select_features(self, embeddings=None, logits=None, labels=None, num_classes=None, **extra):
        return super().select_features(None, None, labels, num_classes, **extra)

    def _select(self, data):
        rng = np.random.default_rng(self.seed)
        if not self.balance:
            return rng.choice(len(data), data.budgets.sum(), replace=False), None, None
        return np.concatenate([rng.choice(idx, k, replace=False)
                               for idx, k in zip(data.class_indices, data.budgets)]), None, None


class GraNd(ScoreSelector):
    """GraNd: the largest last-layer per-sample gradient norms ||g_i|| (bias and weight)."""
    name = "grand"
    needs = ("embeddings", "logits")

    def _scores(self, data):
        return ops.last_layer_grad_norms(data.embeddings, data.logits, data.labels, backend=self.backend)[0]


class EL2N(ScoreSelector):
    """EL2N: the largest error norms ||softmax(z_i) - onehot(y_i)||."""
    name = "el2n"
    needs = ("logits",)

    def _scores(self, data):
        e, _ = ops.last_layer_factors(data.logits, data.labels, backend=self.backend)
        return e.norm(dim=1)


class LeastConfidence(ScoreSelector):
    """Uncertainty: the largest 1 - max_c p_c."""
    name = "least_confidence"
    needs = ("logits",)

    def _scores(self, data):
        return 1.0 - torch.softmax(data.logits, 1).max(1).values


class Entropy(ScoreSelector):
    """Uncertainty: the largest predictive entropy -sum_c p_c log p_c."""
    name = "entropy"
    needs = ("logits",)

    def _scores(self, data):
        logp = torch.log_softmax(data.logits, 1)
        return -(logp.exp() * logp).sum(1)


class Margin(ScoreSelector):
    """Uncertainty: the smallest margin between the two most probable classes."""
    name = "margin"
    needs = ("logits",)
    keep = "smallest"

    def _scores(self, data):
        top2 = torch.softmax(data.logits, 1).topk(2, dim=1).values
        return top2[:, 0] - top2[:, 1]


class Forgetting(ScoreSelector):
    """Forgetting: the largest forgetting counts recorded while the selection model trained
    (pass `forgetting=` to select_features, or use the pipeline that records them)."""
    name = "forgetting"
    needs = ()

    def select_features(self, embeddings=None, logits=None, labels=None, num_classes=None,
                        forgetting=None, **extra):
        if forgetting is None:
            raise ValueError("forgetting: Forgetting needs the per-sample forgetting counts "
                             "recorded during training (lcmat.train.train_selection_model)")
        return super().select_features(None, None, labels, num_classes, forgetting=forgetting)

    def _scores(self, data, forgetting):
        scores = np.asarray(forgetting, dtype=np.float64)
        if scores.shape != (len(data),):
            raise ValueError(f"forgetting: expected shape ({len(data)},), got {scores.shape}")
        return scores


class Herding(Selector):
    """Herding: greedily keep the running mean of the selection closest to the class mean
    (argmin_i || mu - (sum_S h + h_i) / (t + 1) ||, lowest index on ties)."""
    name = "herding"

    def _select(self, data):
        if not self.balance:
            return herding_order(data.embeddings, data.budgets.sum()), None, None
        picks = [idx[herding_order(data.embeddings[idx], k)]
                 for c, idx, k in zip(self._classes(data), data.class_indices, data.budgets)]
        return np.concatenate(picks), None, None


def herding_order(x, k):
    mean = x.mean(0)
    chosen_sum = torch.zeros_like(mean)
    available = torch.ones(len(x), dtype=torch.bool, device=x.device)
    picks = []
    for t in range(k):
        dist = ((mean - (chosen_sum + x) / (t + 1)) ** 2).sum(1).masked_fill(~available, torch.inf)
        j = int(torch.argmin(dist))
        picks.append(j)
        available[j] = False
        chosen_sum += x[j]
    return np.array(picks, dtype=np.int64)


class KCenterGreedy(Selector):
    """k-Center greedy: start from a seeded random sample, then repeatedly add the sample
    farthest from the selection (running-min distances, O(N) memory)."""
    name = "kcenter"

    def _select(self, data):
        rng = np.random.default_rng(self.seed)
        if not self.balance:
            k = data.budgets.sum()
            return kcenter_order(data.embeddings, k, int(rng.integers(len(data)))), None, None
        picks = [idx[kcenter_order(data.embeddings[idx], k, int(rng.integers(len(idx))))]
                 for c, idx, k in zip(self._classes(data), data.class_indices, data.budgets)]
        return np.concatenate(picks), None, None


def kcenter_order(x, k, first):
    min_dist = torch.full((len(x),), torch.inf, dtype=x.dtype, device=x.device)
    picks = [first]
    for _ in range(k - 1):
        min_dist = torch.minimum(min_dist, ((x - x[picks[-1]]) ** 2).sum(1))
        min_dist[picks[-1]] = -1.0  # never re-pick a center
        picks.append(int(torch.argmax(min_dist)))
    return np.array(picks[:k], dtype=np.int64)


def batch_scale(n, batch_size):
    """1 / b_i for the n samples of a class in dataset order: they are cut into mini-batches of
    `batch_size`, and b_i is the size of the batch sample i falls in (the last may be partial)."""
    position = np.arange(n)
    batch_start = (position // batch_size) * batch_size
    return 1.0 / np.minimum(batch_size, n - batch_start)


class LCMat(Selector):
    """LCMat-S (Shin et al., AISTATS 2023): per class, facility location on
        D_ij = ||g_i - g_j||_2 + rho ||d_i[K] - d_j[K]||_1
    over last-layer gradients g and Hessian diagonals d, K the `num_coords` coordinates of
    largest variance of d in the class (DESIGN.md 2.1). One coefficient rho multiplies the L1
    term (the released code's convention, i.e. the paper's rho / 2 with rho doubled).

    mode="paper": s_i = 1, L = max D per class. mode="compat": s_i = 1 / b_i (b_i the size of
    the per-class mini-batch of `batch_size` the sample falls in, in dataset order), L = 10, as
    the released code computes it. weights=True returns gamma_j, the number of class samples
    whose nearest selected element is j.
    """
    name = "lcmat"
    needs = ("embeddings", "logits")

    def __init__(self, fraction=0.1, rho=0.01, num_coords=100, mode="paper", batch_size=128,
                 weights=False, balance=True, seed=0, backend=None, progress=None,
                 dtype=torch.float32):
        super().__init__(fraction, balance, seed, backend, progress, dtype)
        self.rho = check_positive("rho", rho, allow_zero=True)
        self.num_coords = check_positive("num_coords", num_coords, integer=True, allow_zero=True)
        self.mode = check_choice("mode", mode, ("paper", "compat"))
        self.batch_size = check_positive("batch_size", batch_size, integer=True)
        self.weights = bool(weights)

    def select(self, model, dataset, batch_size=256, device=None, **extra):
        if self.mode == "paper":
            return super().select(model, dataset, batch_size, device, **extra)
        # compat: features with BatchNorm in train mode on the per-class batches.
        from .data import dataset_targets
        from .train import extract_features_train_bn
        device = device or next(model.parameters()).device
        labels = dataset_targets(dataset)
        embeddings, logits, _ = extract_features_train_bn(model, dataset, labels, batch_size=self.batch_size,
                                                          device=device)
        return self.select_features(embeddings=embeddings, logits=logits, labels=labels, **extra)

    def _select(self, data):
        picks, weights = [], []
        for c, idx, k in zip(self._classes(data), data.class_indices, data.budgets):
            local, gamma = self.select_class(data.embeddings[idx], data.logits[idx], data.labels[idx], int(k))
            picks.append(idx[local])
            weights.append(gamma)
        return np.concatenate(picks), (np.concatenate(weights) if self.weights else None), None

    def select_class(self, embeddings, logits, labels, k):
        """(positions of the k picks within the class, their weights gamma) for one class."""
        scale = None
        if self.mode == "compat":
            scale = torch.as_tensor(batch_scale(len(labels), self.batch_size), dtype=embeddings.dtype,
                                    device=embeddings.device)
        e, q = ops.last_layer_factors(logits, labels, backend=self.backend)
        coords = torch.zeros(0, dtype=torch.long, device=embeddings.device)
        if self.rho != 0 and self.num_coords > 0:
            coords = ops.top_variance_coords(embeddings, q, self.num_coords, scale, backend=self.backend)
        dist = ops.lcmat_distance(embeddings, e, q, coords, self.rho, scale, backend=self.backend)
        L = None if self.mode == "paper" else 10.0
        picks, _, gamma = ops.facility_location_greedy(dist, k, L, lazy=True, backend=self.backend)
        return picks.cpu().numpy(), gamma.cpu().numpy()


class CRAIG(LCMat):
    """CRAIG (Mirzasoleiman et al., 2020) on last-layer gradients: facility location on
    ||g_i - g_j||, i.e. LCMat-S with rho = 0, returning the cluster-size weights."""
    name = "craig"

    def __init__(self, fraction=0.1, mode="paper", batch_size=128, weights=True, balance=True,
                 seed=0, backend=None, progress=None, dtype=torch.float32):
        super().__init__(fraction, 0.0, 0, mode, batch_size, weights, balance, seed, backend,
                         progress, dtype)


class FDMat(ScoreSelector):
    """FDMat (Xiao et al., AAAI 2024): entropic OT between the N samples (mass 1 each) and the
    C class prototypes (mass n_c) of power-transformed, centred, normalised features; keeps the
    samples of smallest transport score s_i = sum_c (P_ic M_ic)^2 (DESIGN.md 2.2).

    lam: the OT regularisation is reg = 1 / lam on costs M_ic = ||x_i - mu_c||^2 that lie in
    [0, 4] (the transformed features have norm at most about 1); lam = 10 (reg = 0.1) keeps the
    plan far from both the hard assignment and the product coupling and converges in tens of
    iterations. negative="error" rejects negative features (FDMat expects post-ReLU ones);
    negative="shift" subtracts the global minimum first.
    """
    name = "fdmat"
    keep = "smallest"

    def __init__(self, fraction=0.1, lam=10.0, beta=0.5, balance=True, seed=0, max_iter=1000,
                 tol=1e-6, negative="error", backend=None, progress=None, dtype=torch.float32):
        super().__init__(fraction, balance, seed, backend, progress, dtype)
        self.lam = check_positive("lam", lam)
        self.beta = check_positive("beta", beta)
        self.max_iter = check_positive("max_iter", max_iter, integer=True)
        self.tol = check_positive("tol", tol)
        self.negative = check_choice("negative", negative, ("error", "shift"))

    def _scores(self, data):
        x = data.embeddings
        low = float(x.min())
        if low < 0:
            if self.negative == "error":
                raise ValueError(f"embeddings: FDMat expects non-negative (post-ReLU) features, the "
                                 f"smallest is {low:.4g}; pass negative='shift' to shift them")
            x = x - low
        # The transform's global mean is taken in float64, then work continues in self.dtype.
        x = ops.fdmat_transform(x.double(), self.beta).to(self.dtype)
        M = ops.prototype_cost(x, ops.class_prototypes(x, data.labels, data.num_classes), backend=self.backend)
        a = torch.ones(len(data), dtype=M.dtype, device=M.device)
        b = torch.as_tensor(data.counts, dtype=M.dtype, device=M.device)
        reg = 1.0 / self.lam
        f, g, n_iter, err = ops.sinkhorn_log(a, b, M, reg, self.max_iter, self.tol, backend=self.backend)
        self.last_ot = {"iterations": int(n_iter), "marginal_error": float(err)}
        return ops.fdmat_scores(M, f, g, reg, backend=self.backend)


METHODS = {cls.name: cls for cls in (Uniform, LCMat, FDMat, CRAIG, Herding, KCenterGreedy, GraNd,
                                      EL2N, LeastConfidence, Entropy, Margin, Forgetting)}


def get_method(name, **options):
    """A selector by its name (see METHODS), e.g. get_method("lcmat", fraction=0.01, rho=1)."""
    key = name.lower().replace("-", "_")
    if key not in METHODS:
        raise ValueError(f"method: unknown method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[key](**options)
