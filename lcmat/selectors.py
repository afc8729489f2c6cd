"""Coreset selectors: thin classes over `lcmat.ops` (they never know which backend runs).

Every selector takes `fraction`, `balance` (per-class budgets k_c = round(fraction * n_c), the
default; else one global budget round(fraction * N)), `seed`, `backend`, `progress` and the
coverage options, and offers `select_features(embeddings=, logits=, labels=)` and
`select(model, dataset)`, both returning a `Coreset` with sorted original dataset indices.

A selector is written as `pick(data, positions, k)`: choose k of the given dataset positions
by the method's criterion. The base class decides which groups it runs on: each class
(balance=True), the whole set (balance=False), or the difficulty strata of each (coverage=True).
A selector whose groups are cheaper together may also take them in runs (`batches` and
`pick_batch`): LCMat hands several classes to one batched greedy.

The per-group interface, which `select_features` goes through and lcmat.distributed too (so the
two cannot drift apart): `budgets(class_counts)`, `prepare(data)` (work over the whole set, the
scores of a score method), `groups(data)`, `pick_groups(data, groups)` (= `batches` and
`pick_batch` over `pick`), `make_coreset(data, picks, weights, seconds)`. `data` is a `Features`
(or anything with its attributes: labels, num_classes, class_indices, embeddings, logits,
forgetting, and the budgets and scores that select_features sets).
"""
import time
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from . import algorithms, ops, reference
from .coreset import Coreset, class_budgets, global_budget, split_budget
from .coverage import coverage_groups, coverage_strata
from .ot import ConvergenceWarning, converged
from .validation import (as_features, as_float64_array, as_labels, as_tensor, check_block_memory, check_bool,
                         check_choice, check_compute_dtype, check_finite_result, check_fraction, check_positive,
                         power_of_two_scale)


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


def _per_sample(name, x, n):
    x = as_float64_array(x)
    if x.shape != (n,) or not np.isfinite(x).all():
        raise ValueError(f"{name}: expected {n} finite values, got shape {x.shape}")
    return x


def overflows(bound, dtype):
    """Does a quantity bounded by `bound` (computed in float64) risk overflowing `dtype`? The
    compiled kernels clamp intermediate results (max(0, inf - inf) is 0 in C), so an overflow
    inside them need not show as Inf in their output: it is predicted from the inputs instead."""
    return not bound < torch.finfo(dtype).max / 64


def squared_norm_bound(x):
    """max_i ||x_i||^2 in float64 (Inf when even float64 overflows)."""
    return float(x.double().square().sum(1).max()) if x.numel() else 0.0


class Selector:
    """Shared machinery: validation, budgets, groups, timing, the Coreset.

    coverage=True stratifies every group by a difficulty score (`difficulty`: "el2n", the
    default, needs logits; "own", the method's own score; or "forgetting", from the
    `forgetting=` counts), drops the hardest `prune_hard` fraction and spreads the budget over
    `num_strata` strata (see lcmat.coverage); the method's criterion picks inside each stratum.
    """
    name = ""
    needs = ("embeddings",)
    per_class_only = False  # methods whose criterion only exists within a class (n_c x n_c blocks)

    def __init__(self, fraction=0.1, balance=True, seed=0, backend=None, progress=None,
                 dtype=torch.float32, coverage=False, difficulty="el2n", prune_hard=0.1,
                 num_strata=50):
        self.fraction = check_fraction(fraction)
        self.balance = check_bool("balance", balance)
        self.seed = check_positive("seed", seed, integer=True, allow_zero=True)
        self.backend = backend
        self.progress = progress
        self.dtype = check_compute_dtype(dtype)
        self.coverage = check_bool("coverage", coverage)
        self.difficulty = check_choice("difficulty", difficulty, ("el2n", "own", "forgetting"))
        if self.coverage and difficulty == "own" and not isinstance(self, ScoreSelector):
            raise ValueError(f"difficulty: {self.name} has no score of its own; use 'el2n' or 'forgetting'")
        prune_hard = check_positive("prune_hard", prune_hard, allow_zero=True)
        if prune_hard >= 1:
            raise ValueError(f"prune_hard: must lie in [0, 1), got {prune_hard}")
        self.prune_hard = prune_hard
        self.num_strata = check_positive("num_strata", num_strata, integer=True)

    def required(self):
        """The feature arrays this configuration needs."""
        needs = tuple(self.needs)
        if self.coverage and self.difficulty == "el2n" and "logits" not in needs:
            needs += ("logits",)
        return needs

    def select_features(self, embeddings=None, logits=None, labels=None, num_classes=None,
                        forgetting=None, indices=None):
        """Select from precomputed arrays: embeddings [N, D] (input of the last nn.Linear),
        logits [N, C], labels [N]; torch tensors (CPU or GPU) or numpy arrays. `forgetting`:
        per-sample forgetting counts [N], for Forgetting and difficulty="forgetting".
        indices: the rows' dataset positions (each process of a torch.distributed group passes
        its own rows; see lcmat.distributed); the returned indices are dataset positions."""
        from . import distributed
        if indices is not None or distributed.active():
            return distributed.select_features(self, embeddings, logits, labels, num_classes, forgetting, indices)
        needs = self.required()
        given = {"embeddings": embeddings, "logits": logits}
        for name in needs:
            if given[name] is None:
                raise ValueError(f"{name}: {type(self).__name__} needs {' and '.join(needs)}")
        data = Features(labels, embeddings if "embeddings" in needs else None,
                        logits if "logits" in needs else None, num_classes, self.dtype)
        data.forgetting = None if forgetting is None else _per_sample("forgetting", forgetting, len(data))
        data.budgets = self.budgets(data.counts)  # validated before any work starts
        start = time.perf_counter()
        data.scores = self.prepare(data)
        results = self.pick_groups(data, self.groups(data))
        return self.make_coreset(data, [p for p, _ in results], [w for _, w in results],
                                 time.perf_counter() - start)

    def select(self, model, dataset, batch_size=256, device=None, forgetting=None):
        """Extract embeddings and logits with one eval-mode pass of `model` over `dataset`
        (the embedding is the input of the model's last nn.Linear), then select. Under a
        torch.distributed group each process reads its own share of the dataset."""
        from . import distributed
        if distributed.active():
            return distributed.select(self, model, dataset, batch_size, device, forgetting)
        from .features import extract_features
        device = device or next(model.parameters()).device
        embeddings, logits, labels = extract_features(model, dataset, batch_size=batch_size,
                                                      device=device, progress=self.progress is not False)
        return self.select_features(embeddings=embeddings, logits=logits, labels=labels,
                                    forgetting=forgetting)

    def budgets(self, class_counts):
        """The budget of each class [C] from the class sizes n_c: round(fraction * n_c), or with
        balance=False one global round(fraction * N) split over the classes in proportion."""
        counts = np.asarray(class_counts, dtype=np.int64)
        if self.balance:
            return class_budgets(counts, self.fraction)
        return split_budget(counts, global_budget(int(counts.sum()), self.fraction))

    def groups(self, data, difficulty=None):
        """[(dataset positions, budget, *extra)] on which `pick` runs. coverage=True strata come
        from `difficulty` [N] when given (e.g. gathered from other processes), else from
        `difficulty_scores(data)`."""
        if self.balance or self.per_class_only:
            groups = list(zip(data.class_indices, data.budgets))
        else:
            groups = [(np.arange(len(data)), int(data.budgets.sum()))]
        if not self.coverage:
            return groups
        difficulty = self.difficulty_scores(data) if difficulty is None else difficulty
        return [(positions[local], k_s) for positions, k in groups
                for local, k_s in coverage_groups(difficulty[positions], k, self.num_strata, self.prune_hard)]

    def difficulty_scores(self, data):
        """Per-sample difficulty for coverage, higher = harder."""
        if self.difficulty == "el2n":
            e, _ = ops.last_layer_factors(data.logits, data.labels, backend=self.backend)
            return as_float64_array(e.norm(dim=1))
        if self.difficulty == "forgetting":
            if data.forgetting is None:
                raise ValueError("forgetting: difficulty='forgetting' needs the forgetting= counts")
            return data.forgetting
        return data.scores if self.keep == "largest" else -data.scores

    def prepare(self, data):
        """Work shared by all groups (e.g. scores over the full set); returns scores or None."""
        return None

    def pick(self, data, positions, k):
        """(k chosen dataset positions, their weights or None)."""
        raise NotImplementedError

    def batches(self, data, groups):
        """The groups in the runs that `pick_batch` takes at once: one at a time here."""
        return [[group] for group in groups]

    def pick_batch(self, data, batch):
        """[(chosen, weights)] for a run of groups; extra: whatever a selector's groups adds."""
        return [self.pick(data, positions, int(k), *extra) for positions, k, *extra in batch]

    def pick_groups(self, data, groups, desc=None, show=True):
        """[(chosen dataset positions int64, weights or None)] of every group, in group order, by
        `batches` and `pick_batch`; a progress bar (`desc`, default the method's name) unless
        progress=False or show=False."""
        out = []
        disable = not show or (None if self.progress is None else not self.progress)
        with tqdm(total=len(groups), desc=desc or self.name, unit="group", leave=False, disable=disable) as bar:
            for batch in self.batches(data, groups):
                out += [(np.asarray(chosen, dtype=np.int64), w) for chosen, w in self.pick_batch(data, batch)]
                bar.update(len(batch))
        return out

    def make_coreset(self, data, picks, weights, seconds):
        """The Coreset of the picks [arrays of dataset positions] and their weights (a list of
        arrays, or of None), sorted by dataset position; data: labels, num_classes, scores."""
        indices = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
        order = np.argsort(indices, kind="stable")
        indices = indices[order]
        if len(np.unique(indices)) != len(indices):
            raise RuntimeError(f"{self.name}: internal error, duplicate indices selected")
        w = None
        if weights and all(x is not None for x in weights):
            w = np.concatenate(weights).astype(np.float32)[order]
        counts = np.bincount(data.labels.cpu().numpy()[indices], minlength=data.num_classes)
        return Coreset(indices=indices, weights=w, scores=data.scores, method=self.name, seconds=seconds,
                       info={"class_counts": counts})


class ScoreSelector(Selector):
    """Keeps the k samples of largest (or smallest) score in each group; ties go to the lower
    dataset index."""
    keep = "largest"
    # A method whose score is +inf by definition for some samples (DeepFool: no perturbation found,
    # kept last) sets this; NaN is refused always, and +inf only ranks last with keep="smallest".
    infinite_scores_rank_last = False

    def scores(self, data):
        """The method's score of every row of data, [N] (a tensor or an array)."""
        raise NotImplementedError

    def prepare(self, data):
        return self.checked_scores(self.scores(data))

    def checked_scores(self, scores):
        """The scores as float64 numpy, refused unless finite (+inf allowed where it ranks last)."""
        scores = torch.as_tensor(scores)
        if self.infinite_scores_rank_last and self.keep == "smallest":
            check_finite_result(f"{self.name} scores", scores.nan_to_num(posinf=0.0), self.overflow_hint)
        else:
            check_finite_result(f"{self.name} scores", scores, self.overflow_hint)
        return as_float64_array(scores)

    overflow_hint = "rescale the inputs (e.g. divide the embeddings by their largest entry)"

    def pick(self, data, positions, k):
        key = -data.scores[positions] if self.keep == "largest" else data.scores[positions]
        return positions[np.argsort(key, kind="stable")[:k]], None


class Uniform(Selector):
    """Uniform random sampling without replacement (per class, or over the whole set)."""
    name = "uniform"
    needs = ()

    def prepare(self, data):
        # rng: drawn from in group order (public: lcmat.distributed replays the draws)
        self.rng = np.random.default_rng(self.seed)

    def pick(self, data, positions, k):
        return self.rng.choice(positions, k, replace=False), None


class GraNd(ScoreSelector):
    """GraNd (Paul et al., 2021): the largest per-sample gradient norms ||grad_theta loss_i||.

    layers="last" (the default, what DeepCore computes): theta is the last nn.Linear (bias and
    weight), from embeddings and logits in closed form. layers="all": theta is every nn.Linear of
    the network, the paper's whole-network norm for networks built of linear layers (MLPs,
    attention and sequence models); convolutions and normalisation layers are not counted. It
    needs the model, so it works through `select(model, dataset)`: one eval-mode pass of
    cross-entropy per batch, backpropagated once, with the per-sample norms from each layer's
    inputs and output gradients (`ops.per_sample_grad_norms`, ghost norms where cheaper), never
    the per-sample gradients themselves. The paper averages the norm over several early-training
    initialisations; like DeepCore, this scores the one model it is given.
    """
    name = "grand"
    needs = ("embeddings", "logits")

    overflow_hint = "the embeddings are too large even for float64 (||h||^2 overflows); rescale them"

    def __init__(self, fraction=0.1, layers="last", **kwargs):
        super().__init__(fraction, **kwargs)
        self.layers = check_choice("layers", layers, ("last", "all"))
        # network_norms: the whole-network norms that select() measures for layers='all' (public:
        # lcmat.distributed hands each rank its share)
        self.network_norms = None

    def select(self, model, dataset, batch_size=256, device=None, forgetting=None):
        if self.layers == "all":
            self.network_norms = self._whole_network_norms(model, dataset, batch_size, device)
        try:
            return super().select(model, dataset, batch_size=batch_size, device=device, forgetting=forgetting)
        finally:
            self.network_norms = None

    def _whole_network_norms(self, model, dataset, batch_size, device):
        from .features import iterate_batches
        batch_size = check_positive("batch_size", batch_size, integer=True)
        device = device or next(model.parameters()).device
        loss_fn = torch.nn.CrossEntropyLoss(reduction="none")
        norms = np.empty(len(dataset), dtype=np.float64)
        was_training = model.training
        model.eval()  # samples must not interact (BatchNorm in train mode would)
        try:
            for positions, x, y in iterate_batches(dataset, None, batch_size):
                norms[positions] = as_float64_array(ops.per_sample_grad_norms(
                    model, x.to(device), y.to(device), loss_fn, backend=self.backend))
        finally:
            model.train(was_training)
        return norms

    def scores(self, data):
        if self.layers == "all":
            if self.network_norms is None:
                raise ValueError("layers: 'all' needs the network; use select(model, dataset)")
            return self.network_norms
        h, z = data.embeddings, data.logits
        if overflows(2 * (1 + squared_norm_bound(h)), h.dtype):
            h, z = h.double(), z.double()  # ||g||^2 = ||e||^2 (1 + ||h||^2) with ||e||^2 <= 2
        return ops.last_layer_grad_norms(h, z, data.labels, backend=self.backend)[0]


class EL2N(ScoreSelector):
    """EL2N: the largest error norms ||softmax(z_i) - onehot(y_i)||."""
    name = "el2n"
    needs = ("logits",)

    def scores(self, data):
        e, _ = ops.last_layer_factors(data.logits, data.labels, backend=self.backend)
        return e.norm(dim=1)


class LeastConfidence(ScoreSelector):
    """Uncertainty: the largest 1 - max_c p_c."""
    name = "least_confidence"
    needs = ("logits",)

    def scores(self, data):
        return 1.0 - torch.softmax(data.logits, 1).max(1).values


class Entropy(ScoreSelector):
    """Uncertainty: the largest predictive entropy -sum_c p_c log p_c."""
    name = "entropy"
    needs = ("logits",)

    def scores(self, data):
        logp = torch.log_softmax(data.logits, 1)
        p = logp.exp()
        # p log p -> 0 as p -> 0; a probability that underflowed (log p = -inf) contributes 0, not NaN.
        return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(1)


class Margin(ScoreSelector):
    """Uncertainty: the smallest margin between the two most probable classes."""
    name = "margin"
    needs = ("logits",)
    keep = "smallest"

    def scores(self, data):
        p = torch.softmax(data.logits, 1)
        if p.shape[1] < 2:  # one class: the runner-up has probability 0
            return p[:, 0]
        top2 = p.topk(2, dim=1).values
        return top2[:, 0] - top2[:, 1]


class Forgetting(ScoreSelector):
    """Forgetting: the largest forgetting counts recorded while the selection model trained
    (pass `forgetting=` to select_features, see lcmat.train.train_selection_model)."""
    name = "forgetting"
    needs = ()

    def scores(self, data):
        if data.forgetting is None:
            raise ValueError("forgetting: Forgetting needs the per-sample forgetting counts "
                             "recorded during training (lcmat.train.train_selection_model)")
        return data.forgetting


class Herding(Selector):
    """Herding: greedily keep the running mean of the selection closest to the group mean
    (argmin_i || mu - (sum_S h + h_i) / (t + 1) ||, lowest index on ties)."""
    name = "herding"

    def pick(self, data, positions, k):
        return positions[herding_order(data.embeddings[positions], k)], None


def herding_order(x, k):
    x = x / power_of_two_scale(x)  # the argmin is scale-invariant; exact rescaling keeps squares finite
    mean = (x.double().sum(0) / len(x)).to(x.dtype)  # summed in float64: see herding_gaps
    chosen_sum = torch.zeros_like(mean)
    available = torch.ones(len(x), dtype=torch.bool, device=x.device)
    picks = []
    for t in range(k):
        dist = herding_gaps(x, mean, chosen_sum, t).masked_fill(~available, torch.inf)
        j = int(torch.argmin(dist))
        picks.append(j)
        available[j] = False
        chosen_sum += x[j]
    return np.array(picks, dtype=np.int64)


def herding_gaps(x, mean, chosen_sum, t):
    """|| mean - (chosen_sum + x_i) / (t + 1) ||^2 for every row, [n]. Elementwise, then row sums:
    each row's value has the same bits whatever rows share the tensor, so rows split across
    processes (lcmat.distributed) pick alike; the mean is summed in float64 and rounded once,
    so the order of the partial sums does not show in it either (short of a float64 rounding
    that lands on a float32 rounding boundary)."""
    return ((mean - (chosen_sum + x) / (t + 1)) ** 2).sum(1)


class KCenterGreedy(Selector):
    """k-Center greedy: start from a seeded random sample, then repeatedly add the sample
    farthest from the selection (running-min distances, O(N) memory)."""
    name = "kcenter"

    def prepare(self, data):
        # rng: the first center of each group is drawn from it in group order (public:
        # lcmat.distributed replays the draws)
        self.rng = np.random.default_rng(self.seed)

    def pick(self, data, positions, k):
        first = int(self.rng.integers(len(positions)))
        return positions[kcenter_order(data.embeddings[positions], k, first)], None


def kcenter_order(x, k, first):
    x = x / power_of_two_scale(x)  # the argmax is scale-invariant; exact rescaling keeps squares finite
    min_dist = torch.full((len(x),), torch.inf, dtype=x.dtype, device=x.device)
    picks = [first]
    for _ in range(k - 1):
        min_dist = torch.minimum(min_dist, squared_distances_to(x, x[picks[-1]]))
        min_dist[picks[-1]] = -1.0  # never re-pick a center
        picks.append(int(torch.argmax(min_dist)))
    return np.array(picks[:k], dtype=np.int64)


def squared_distances_to(x, center):
    """||x_i - center||^2 for every row, [n] (row sums, as in herding_gaps)."""
    return ((x - center) ** 2).sum(1)


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
    largest variance of d in the class (docs/design.md, "LCMat-S"). One coefficient rho multiplies the L1
    term (the released code's convention, i.e. the paper's rho / 2 with rho doubled).

    rho="auto" sets rho per class so that both terms have the same median over the class's
    pairs: rho_c = median_{i != j} ||g_i - g_j|| / median_{i != j} ||d_i[K] - d_j[K]||_1
    (0 when the latter is 0); the values chosen are in `coreset.info["rho"]`.
    mode="paper": s_i = 1, L = max D per class. mode="compat": s_i = 1 / b_i (b_i the size of
    the per-class mini-batch of `batch_size` the sample falls in, in dataset order), L = 10, as
    the released code computes it. max_memory: bytes the n_c x n_c blocks of one class may take
    (default: the device's free memory); a class that needs more raises BlockMemoryError before
    anything is allocated. weights=True returns gamma_j, the number of class samples
    whose nearest selected element is j. Under coverage=True each stratum is its own block;
    with quotas=True as well, one facility location runs over the whole (pruned) class and each
    stratum may contribute only its budget (a greedy under a partition constraint), so coverage
    is measured over the class rather than within each stratum.
    """
    name = "lcmat"
    needs = ("embeddings", "logits")
    per_class_only = True
    BATCH_BYTES = 2 ** 29  # distance blocks held at once for one batched greedy (512 MiB)

    def __init__(self, fraction=0.1, rho=0.01, num_coords=100, mode="paper", batch_size=128,
                 weights=False, balance=True, seed=0, backend=None, progress=None,
                 dtype=torch.float32, coverage=False, difficulty="el2n", prune_hard=0.1, num_strata=50,
                 quotas=False, max_memory=None):
        super().__init__(fraction, balance, seed, backend, progress, dtype, coverage, difficulty,
                         prune_hard, num_strata)
        self.max_memory = None if max_memory is None else int(check_positive("max_memory", max_memory, minimum=1))
        self.quotas = check_bool("quotas", quotas)
        if self.quotas and not self.coverage:
            raise ValueError("quotas: stratum quotas need coverage=True")
        if isinstance(rho, str) and rho != "auto":
            raise ValueError(f"rho: must be a number >= 0 or 'auto', got {rho!r}")
        self.rho = rho if rho == "auto" else check_positive("rho", rho, allow_zero=True)
        self.num_coords = check_positive("num_coords", num_coords, integer=True, allow_zero=True)
        self.mode = check_choice("mode", mode, ("paper", "compat"))
        self.batch_size = check_positive("batch_size", batch_size, integer=True)
        self.weights = check_bool("weights", weights)

    def select(self, model, dataset, batch_size=256, device=None, forgetting=None):
        from . import distributed
        if self.mode == "paper" or distributed.active():
            return super().select(model, dataset, batch_size, device, forgetting)
        # compat: features with BatchNorm in train mode on the per-class batches.
        from .data import dataset_targets
        from .features import extract_features_train_bn
        device = device or next(model.parameters()).device
        labels = dataset_targets(dataset)
        embeddings, logits, _ = extract_features_train_bn(model, dataset, labels, batch_size=self.batch_size,
                                                          device=device)
        return self.select_features(embeddings=embeddings, logits=logits, labels=labels, forgetting=forgetting)

    def prepare(self, data):
        # rho_used: the rho of each block, in group order (public: lcmat.distributed gathers them)
        self.rho_used = []
        if self.mode == "compat":
            # s_i from each sample's rank within its class, whatever group it is picked in.
            scale = np.empty(len(data))
            for idx in data.class_indices:
                scale[idx] = batch_scale(len(idx), self.batch_size)
            data.scale = torch.as_tensor(scale, dtype=self.dtype, device=data.labels.device)

    def groups(self, data, difficulty=None):
        if not self.quotas:
            return super().groups(data, difficulty)
        difficulty = self.difficulty_scores(data) if difficulty is None else difficulty
        groups = []
        for positions, k in zip(data.class_indices, data.budgets):
            if k > 0:
                kept, strata, budgets = coverage_strata(difficulty[positions], k, self.num_strata, self.prune_hard)
                groups.append((positions[kept], k, (strata, budgets)))
        return groups

    def pick(self, data, positions, k, quotas=None):
        embeddings, logits, labels, scale = self._block_inputs(data, positions)
        local, gamma = self.select_block(embeddings, logits, labels, k, scale, quotas)
        return positions[local], (gamma if self.weights else None)

    def _block_inputs(self, data, positions):
        """(embeddings, logits, labels, scale) of the given dataset positions."""
        index = torch.as_tensor(positions, device=data.labels.device)
        self._check_memory(int(data.labels[index[0]]) if len(index) else 0, len(index), data.labels.device)
        scale = data.scale[index] if self.mode == "compat" else None
        return data.embeddings[index], data.logits[index], data.labels[index], scale

    def batches(self, data, groups):
        """Runs of consecutive groups for one batched greedy: as many as the greedy runs at
        once (ops.parallel_blocks), their distance blocks within BATCH_BYTES together."""
        if self.quotas:
            return super().batches(data, groups)
        size = ops.parallel_blocks(data.labels.device)
        batches, current, current_bytes = [], [], 0
        for group in groups:
            block_bytes = len(group[0]) ** 2 * self.dtype.itemsize
            if current and (len(current) == size or current_bytes + block_bytes > self.BATCH_BYTES):
                batches.append(current)
                current, current_bytes = [], 0
            current.append(group)
            current_bytes += block_bytes
        return batches + ([current] if current else [])

    def pick_batch(self, data, batch):
        if len(batch) == 1:  # also every quotas=True group (see batches)
            return super().pick_batch(data, batch)
        dists = [self.block_distance(*self._block_inputs(data, positions)) for positions, _ in batch]
        results = ops.facility_location_greedy_batch(dists, [int(k) for _, k in batch], self._facility_L(),
                                                     lazy=True, backend=self.backend)
        return [(positions[picks.cpu().numpy()], gamma.cpu().numpy() if self.weights else None)
                for (positions, _), (picks, _, gamma) in zip(batch, results)]

    def make_coreset(self, data, picks, weights, seconds):
        coreset = super().make_coreset(data, picks, weights, seconds)
        if self.rho == "auto":
            coreset.info["rho"] = np.array(self.rho_used)
        return coreset

    def select_block(self, embeddings, logits, labels, k, scale=None, quotas=None):
        """(positions of the k picks within the block, their weights gamma) for one class;
        quotas: (stratum of each position, budget of each stratum), see quotas=True."""
        dist = self.block_distance(embeddings, logits, labels, scale)
        L = self._facility_L()
        if quotas is not None:
            picks, _, gamma = algorithms.facility_location_greedy_quotas(dist, quotas[0], quotas[1], L)
        else:
            picks, _, gamma = ops.facility_location_greedy(dist, k, L, lazy=True, backend=self.backend)
        return picks.cpu().numpy(), gamma.cpu().numpy()

    def _facility_L(self):
        """The facility-location constant: None (max D of each block) in the paper mode, 10 in compat."""
        return None if self.mode == "paper" else 10.0

    # n_c x n_c blocks alive at the peak: the distance block, the greedy's similarity block and the
    # Gram temporaries; rho="auto" adds the two terms, the off-diagonal mask and the median copies.
    BLOCKS_AT_PEAK = 3
    BLOCKS_AT_PEAK_AUTO = 7

    def _check_memory(self, cls, n, device):
        blocks = self.BLOCKS_AT_PEAK_AUTO if self.rho == "auto" else self.BLOCKS_AT_PEAK
        check_block_memory(self.name, cls, n, blocks * n * n * self.dtype.itemsize, device, self.max_memory)

    def block_distance(self, embeddings, logits, labels, scale=None):
        """The block's n x n LCMat-S distances D_ij (the class docstring), finite.

        Finite inputs can overflow inside: <h_i, h_j> exceeds float32 for embeddings around
        1e19. Then the block is recomputed in float64 and brought back to the compute dtype;
        in the paper mode (L = max D) the picks and weights are invariant to scaling D, so D
        is divided by a power of two when n max D would overflow the greedy's gains."""
        if self._block_overflows(embeddings):
            embeddings, logits = embeddings.double(), logits.double()
            scale = None if scale is None else scale.double()
        dist = self._distance(embeddings, logits, labels, scale)
        check_finite_result(f"{self.name}: the distance block", dist,
                            "the embeddings are too large even for float64; rescale them")
        finfo = torch.finfo(self.dtype)
        top = float(dist.max()) if dist.numel() else 0.0
        if top * max(len(dist), 1) > finfo.max / 4:
            if self.mode != "paper":
                raise FloatingPointError(f"{self.name}: distances up to {top:.3g} overflow the greedy's gains in "
                                         f"{self.dtype} with L = 10 (mode='compat'); rescale the embeddings or "
                                         f"use mode='paper'")
            dist = dist / power_of_two_scale(dist)
        return dist.to(self.dtype)

    def _block_overflows(self, embeddings):
        """Could the block's intermediates overflow the embeddings' dtype? With ||e||^2 <= 2,
        q <= 1/4 and s <= 1: the Gram terms are at most 8 (1 + max ||h||^2), the L1 term at
        most rho num_coords max h^2 / 2."""
        if embeddings.dtype == torch.float64:
            return False
        h2 = squared_norm_bound(embeddings)
        rho = 1.0 if self.rho == "auto" else float(self.rho)
        return overflows(max(8 * (1 + h2), rho * max(self.num_coords, 1) * h2), embeddings.dtype)

    def _distance(self, embeddings, logits, labels, scale=None):
        e, q = ops.last_layer_factors(logits, labels, backend=self.backend)
        coords = torch.zeros(0, dtype=torch.long, device=embeddings.device)
        if self.rho != 0 and self.num_coords > 0:
            coords = algorithms.top_variance_coords(embeddings, q, self.num_coords, scale, backend=self.backend)
        if self.rho == "auto":
            return self._auto_rho_distance(embeddings, e, q, coords, scale)
        return ops.lcmat_distance(embeddings, e, q, coords, self.rho, scale, backend=self.backend)

    def _auto_rho_distance(self, embeddings, e, q, coords, scale):
        grad = ops.gradient_distance(embeddings, e, scale, backend=self.backend)
        curv = ops.pairwise_l1(ops.hessian_diag_coords(embeddings, q, coords, scale), backend=self.backend)
        off = ~torch.eye(len(grad), dtype=torch.bool, device=grad.device)
        if off.sum() == 0:
            self.rho_used.append(0.0)
            return grad
        curv_median = float(curv[off].median())
        rho = float(grad[off].median()) / curv_median if curv_median > 0 else 0.0
        self.rho_used.append(rho)
        return grad + rho * curv


class CRAIG(LCMat):
    """CRAIG (Mirzasoleiman et al., 2020) on last-layer gradients: facility location on
    ||g_i - g_j||, i.e. LCMat-S with rho = 0, returning the cluster-size weights."""
    name = "craig"

    def __init__(self, fraction=0.1, mode="paper", batch_size=128, weights=True, balance=True,
                 seed=0, backend=None, progress=None, dtype=torch.float32, coverage=False,
                 difficulty="el2n", prune_hard=0.1, num_strata=50, quotas=False, max_memory=None):
        super().__init__(fraction, 0.0, 0, mode, batch_size, weights, balance, seed, backend,
                         progress, dtype, coverage, difficulty, prune_hard, num_strata, quotas, max_memory)


FDMAT_EPS = 1e-6  # ops.fdmat_transform's default eps


class FDMat(ScoreSelector):
    """FDMat (Xiao et al., AAAI 2024): entropic OT between the N samples (mass 1 each) and the
    C class prototypes (mass n_c) of power-transformed, centred, normalised features; keeps the
    samples of smallest transport score s_i = sum_c (P_ic M_ic)^2 (docs/design.md, "FDMat").

    lam: the OT regularisation is reg = 1 / lam on costs M_ic = ||x_i - mu_c||^2 that lie in
    [0, 4] (the transformed features have norm at most about 1). lam = 10 (reg = 0.1), the
    default, keeps the plan between the hard assignment and the product coupling. Measured on
    Fashion-MNIST (LeNet features, 0.2-20 %, docs/quality.md): lam = 100 trains within 2.2 points
    of lam = 10 (identical picks at 0.2 %); lam = 1 is 11 points worse at 0.2 % and up to 5 points
    better at 20 %; none of them comes near Uniform.
    tol: Sinkhorn stops when the relative marginal error is at most tol (or after max_iter
    iterations, with a warning). Selection needs the ranking of the scores within a class, not
    potentials to 1e-6: on those features tol = 1e-3 takes 159 iterations and keeps the same
    samples as tol = 1e-6 (3,000 iterations) at 0.2 %, 1 % and 5 %, and all but one of 12,000 at
    20 %; hence the default 1e-3.
    negative="error" rejects negative features (FDMat expects post-ReLU ones);
    negative="shift" subtracts the global minimum first.
    """
    name = "fdmat"
    keep = "smallest"

    def __init__(self, fraction=0.1, lam=10.0, beta=0.5, balance=True, seed=0, max_iter=1000,
                 tol=1e-3, negative="error", backend=None, progress=None, dtype=torch.float32,
                 coverage=False, difficulty="el2n", prune_hard=0.1, num_strata=50):
        super().__init__(fraction, balance, seed, backend, progress, dtype, coverage, difficulty,
                         prune_hard, num_strata)
        self.lam = check_positive("lam", lam)
        self.beta = check_positive("beta", beta)
        self.max_iter = check_positive("max_iter", max_iter, integer=True)
        self.tol = check_positive("tol", tol)
        self.negative = check_choice("negative", negative, ("error", "shift"))

    def scores(self, data):
        x = data.embeddings
        low = float(x.min())
        if low < 0:
            if self.negative == "error":
                raise ValueError(f"embeddings: FDMat expects non-negative (post-ReLU) features, the "
                                 f"smallest is {low:.4g}; pass negative='shift' to shift them")
            x = x - low
        if 0 < float(x.max()) < FDMAT_EPS * torch.finfo(x.dtype).eps:
            raise ValueError(f"embeddings: the largest is {float(x.max()):.3g}, so x + eps (eps = {FDMAT_EPS:g}, "
                             f"FDMat's power transform (x + eps)^beta) rounds to eps for every sample and all "
                             f"scores tie; rescale the embeddings")
        top = float(x.max()) + FDMAT_EPS
        if overflows(x.shape[1] * top ** (2 * self.beta), x.dtype):
            x = ops.fdmat_transform(x.double(), self.beta).to(x.dtype)  # row norms overflow in float32
        else:
            x = ops.fdmat_transform(x, self.beta)
        check_finite_result("FDMat: the transformed features", x, "rescale the embeddings")
        M = ops.prototype_cost(x, algorithms.class_prototypes(x, data.labels, data.num_classes), backend=self.backend)
        a = torch.ones(len(data), dtype=M.dtype, device=M.device)
        b = torch.as_tensor(data.counts, dtype=M.dtype, device=M.device)
        reg = 1.0 / self.lam
        low = reference.smallest_reg(M)
        if reg < low:
            raise ValueError(f"lam: {self.lam:g} gives reg = 1 / lam = {reg:.3g}, below what {M.dtype} costs up to "
                             f"{float(M.max()):.3g} resolve (reg >= {low:.3g}, lam <= {1 / low:.3g}); lower lam "
                             f"or pass dtype=torch.float64")
        f, g, n_iter, _ = ops.sinkhorn_log(a, b, M, reg, self.max_iter, self.tol, backend=self.backend)
        # The error is re-evaluated from the potentials in float64: one definition for every backend.
        err = float(reference.marginal_error(a, f, g, M, reg))
        self.last_ot = {"iterations": int(n_iter), "marginal_error": err}
        if not bool(converged(err, self.tol, M.dtype)):
            warnings.warn(f"FDMat: Sinkhorn stopped at max_iter={self.max_iter} with relative marginal error "
                          f"{err:.2g} > tol={self.tol:g} (after {int(n_iter)} iterations); the scores come from the last "
                          f"iterate (raise max_iter, or lower lam for a smoother plan)", ConvergenceWarning,
                          stacklevel=3)
        return ops.fdmat_scores(M, f, g, reg, backend=self.backend)


def __getattr__(name):
    """METHODS and get_method live in lcmat.methods; they stay importable from here."""
    if name in ("METHODS", "get_method"):
        from . import methods
        return getattr(methods, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
