"""Contextual Diversity, DeepFool, Cal and Moderate-DS: selectors over lcmat.ops.

Each follows its paper; where DeepCore's code (the reference implementation both LCMat and
FDMat compare against) departs from the paper, the paper's version is the default and DeepCore's
is an option, said in the class docstring.
"""
import numpy as np
import torch

from . import ops
from .selectors import ScoreSelector, Selector
from .validation import check_choice, check_positive


class ContextualDiversity(Selector):
    """Contextual Diversity (Agarwal et al., ECCV 2020): a k-center cover under the symmetric KL
    divergence of the predictions. As DeepCore ports it to classification: k-center greedy under
    the symmetric KL divergence
        d(i, j) = 1/2 KL(p_i || p_j) + 1/2 KL(p_j || p_i)
    between the soft predictions p = softmax(logits): start from a seeded random sample, then
    repeatedly add the sample whose smallest divergence to the selection is largest (lowest
    index on ties). The paper's contextual confusion averages entropy-weighted predictions over
    the regions of an image predicted as each class; with one prediction per image (classification)
    only the predicted class has regions and the descriptor is the prediction itself, which is
    what DeepCore uses and what is computed here (from log_softmax, so underflowing
    probabilities contribute 0 rather than NaN)."""
    name = "cdiv"
    needs = ("logits",)

    def prepare(self, data):
        # rng: the first center of each group is drawn from it in group order (public:
        # lcmat.distributed replays the draws)
        self.rng = np.random.default_rng(self.seed)
        self._log_p = torch.log_softmax(data.logits, 1)

    def pick(self, data, positions, k):
        first = int(self.rng.integers(len(positions)))
        index = torch.as_tensor(positions, device=data.labels.device)
        picks = ops.kcenter_symmetric_kl(self._log_p[index], k, first)
        return positions[picks.cpu().numpy()], None


class Cal(ScoreSelector):
    """Cal: contrastive active learning (Margatina et al., EMNLP 2021) as a coreset score.
    Each sample's k nearest neighbours in embedding space (squared Euclidean, the sample itself
    excluded, lower index on ties; within its class when balance=True, over the whole set
    otherwise, as DeepCore does) and the mean divergence of its prediction from theirs.

    variant="paper" (default): s_i = mean_j KL(p_j || p_i), the samples of LARGEST score kept
    (the paper's contrastive criterion: predictions that differ most from their neighbours').
    variant="deepcore": DeepCore's code, s_i = mean_j [1/2 KL(p_i || p_j) + 1/2 KL(p_j || p_i)],
    the samples of SMALLEST score kept. DeepCore also takes the neighbours from an ImageNet-
    pretrained ResNet-18's embeddings; here they come from the selection model's embeddings.
    A group with fewer than `neighbours` + 1 samples uses all its other samples (score 0 for a
    group of one)."""
    name = "cal"
    needs = ("embeddings", "logits")

    def __init__(self, fraction=0.1, neighbours=10, variant="paper", balance=True, seed=0, backend=None,
                 progress=None, dtype=torch.float32, coverage=False, difficulty="el2n", prune_hard=0.1,
                 num_strata=50):
        super().__init__(fraction, balance, seed, backend, progress, dtype, coverage, difficulty,
                         prune_hard, num_strata)
        self.neighbours = check_positive("neighbours", neighbours, integer=True)
        self.variant = check_choice("variant", variant, ("paper", "deepcore"))
        self.keep = "largest" if self.variant == "paper" else "smallest"

    def scores(self, data):
        log_p = torch.log_softmax(data.logits, 1)
        groups = data.class_indices if self.balance else [np.arange(len(data))]
        scores = torch.zeros(len(data), dtype=log_p.dtype, device=log_p.device)
        for positions in groups:
            k = min(self.neighbours, len(positions) - 1)
            if k < 1:
                continue
            index = torch.as_tensor(positions, device=log_p.device)
            nb = ops.knn_indices(data.embeddings[index], k)
            scores[index] = ops.neighbour_kl(log_p[index], nb, self.variant == "deepcore")
        return scores


class ModerateDS(ScoreSelector):
    """Moderate-DS (Xia et al., ICLR 2023): keeps the samples whose distance to their class centre
    is closest to the median distance. In embedding space:
        d_i = || h_i - centre_{y_i} ||_2,  s_i = | d_i - median_group(d) |,  smallest s kept,
    the median over the class (balance=True) or over the whole set (balance=False, as the
    released code ranks all samples together); the median of an even count is the mean of the
    two middle values. centre="median" (default): the coordinate-wise median of the class's
    embeddings, as the released code computes it; centre="mean": the class mean. The released
    code keeps the band of distance ranks [round(N (1 - f) / 2), round(N (1 + f) / 2)), which is
    symmetric in rank rather than in distance; the two agree up to the band's asymmetry."""
    name = "moderate"
    keep = "smallest"

    def __init__(self, fraction=0.1, centre="median", balance=True, seed=0, backend=None, progress=None,
                 dtype=torch.float32, coverage=False, difficulty="el2n", prune_hard=0.1, num_strata=50):
        super().__init__(fraction, balance, seed, backend, progress, dtype, coverage, difficulty,
                         prune_hard, num_strata)
        self.centre = check_choice("centre", centre, ("median", "mean"))

    def scores(self, data):
        return self.scores_from_distances(data, self.distances(data))

    def distances(self, data):
        """d_i = ||h_i - centre_{y_i}||, [N]: needs the whole class of each sample."""
        h = data.embeddings
        dist = torch.zeros(len(data), dtype=h.dtype, device=h.device)
        for positions in data.class_indices:
            if len(positions) == 0:
                continue
            index = torch.as_tensor(positions, device=h.device)
            rows = h[index]
            centre = median_rows(rows) if self.centre == "median" else rows.mean(0)
            dist[index] = (rows - centre).norm(dim=1)
        return dist

    def scores_from_distances(self, data, dist):
        """s_i = |d_i - median_group(d)| from the distances d [N] (a tensor) and the labels."""
        groups = data.class_indices if self.balance else [np.arange(len(data))]
        scores = torch.zeros_like(dist)
        for positions in groups:
            if len(positions):
                index = torch.as_tensor(positions, device=dist.device)
                scores[index] = (dist[index] - median_rows(dist[index, None])[0]).abs()
        return scores


def median_rows(x):
    """The coordinate-wise median of the rows of x [n, D] (mean of the two middle values when n
    is even), [D]."""
    ordered = x.sort(0).values
    n = len(x)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


class DeepFool(ScoreSelector):
    """DeepFool (Ducoffe and Precioso, 2018): keeps the samples nearest the decision boundary, by
    the DeepFool perturbation that flips their prediction. As "Adversarial active learning" and
    DeepCore use it for selection: the DeepFool attack (Moosavi-Dezfooli et al., 2016) on each
    training sample, and the samples CLOSEST to the decision boundary kept (smallest score).

    One DeepFool step at x, predicted class o (the prediction at the clean input), logits f and
    input gradients w_c = d f_c / d x:
        l = argmin_{c != o} |f_c - f_o| / ||w_c - w_o||,
        r = (|f_l - f_o| / ||w_l - w_o|| + 1e-4) (w_l - w_o) / ||w_l - w_o||,
    accumulated r_tot += r, x = x_0 + (1 + overshoot) r_tot, until the prediction leaves o or
    `max_iter` steps. score="norm" (default): ||(1 + overshoot) r_tot||_2; score="steps": the
    number of steps. A sample whose prediction does not leave o within max_iter steps has no
    DeepFool perturbation: it scores inf ("norm") or max_iter + 1 ("steps"), i.e. it is kept last
    (DeepCore keeps its partial perturbation instead, which ranks a sample whose gradients vanish
    first). DeepCore's code uses overshoot 0, no 1e-4 and the squared norm (the same order as the
    norm): pass overshoot=0 to approach it.

    Needs the model: use select(model, dataset); select_features raises ValueError.
    """
    name = "deepfool"
    needs = ("model",)
    keep = "smallest"
    needs_model = True
    infinite_scores_rank_last = True  # a sample that never flips scores inf ("norm") and is kept last

    def __init__(self, fraction=0.1, max_iter=50, overshoot=0.02, score="norm", batch_size=128, balance=True,
                 seed=0, backend=None, progress=None, dtype=torch.float32, coverage=False, difficulty="el2n",
                 prune_hard=0.1, num_strata=50):
        super().__init__(fraction, balance, seed, backend, progress, dtype, coverage, difficulty,
                         prune_hard, num_strata)
        self.max_iter = check_positive("max_iter", max_iter, integer=True)
        self.overshoot = check_positive("overshoot", overshoot, allow_zero=True)
        self.score = check_choice("score", score, ("norm", "steps"))
        self.batch_size = check_positive("batch_size", batch_size, integer=True)
        # given_scores: the attack's scores, set by select() (public: lcmat.distributed sets each rank's own)
        self.given_scores = None

    def required(self):
        """The feature arrays select() passes on: only what coverage needs (the model is separate)."""
        return tuple(n for n in super().required() if n != "model")

    def select_features(self, embeddings=None, logits=None, labels=None, num_classes=None, forgetting=None):
        if self.given_scores is None:
            raise ValueError("model: DeepFool attacks the model itself and needs it and the dataset, not "
                             "precomputed features: use DeepFool(...).select(model, dataset)")
        return super().select_features(embeddings, logits, labels, num_classes, forgetting)

    def select(self, model, dataset, batch_size=256, device=None, forgetting=None, scores=None):
        """The coreset of `dataset` by the DeepFool scores of `model`. scores: optional, the
        [len(dataset)] result of ``attack_scores(model, dataset, device)`` with this selector's
        attack settings, to run the attack once for several budgets (one process only)."""
        from . import distributed
        from .features import extract_features
        if distributed.active():  # each rank attacks its own share of the dataset
            if scores is not None:
                raise ValueError("scores: precomputed DeepFool scores are not taken under a process group; "
                                 "each rank attacks its own share")
            return distributed.select(self, model, dataset, batch_size, device, forgetting)
        if scores is not None:
            scores = np.asarray(scores, dtype=np.float64)
            if scores.shape != (len(dataset),) or np.isnan(scores).any():
                raise ValueError(f"scores: expected {len(dataset)} DeepFool scores (one per item of dataset, "
                                 f"no NaN), got shape {scores.shape}")
        device = device or next(model.parameters()).device
        H, Z, y = extract_features(model, dataset, batch_size=batch_size, device=device,
                                   progress=bool(self.progress))
        self.given_scores = self.attack_scores(model, dataset, device) if scores is None else scores
        try:
            return self.select_features(embeddings=H, logits=Z, labels=y, forgetting=forgetting)
        finally:
            self.given_scores = None

    def attack_scores(self, model, dataset, device):
        """The score of every item of `dataset` (in its order), [N] float64."""
        from .features import iterate_batches
        norms = np.zeros(len(dataset))
        steps = np.zeros(len(dataset))
        for positions, x, _ in iterate_batches(dataset, None, self.batch_size):
            n, s = deepfool(model, x.to(device), self.max_iter, self.overshoot)
            flipped = (s <= self.max_iter).cpu().numpy()
            norms[positions] = np.where(flipped, n.cpu().numpy(), np.inf)
            steps[positions] = s.cpu().numpy()
        return norms if self.score == "norm" else steps

    def scores(self, data):
        return self.given_scores


def deepfool(model, x0, max_iter=50, overshoot=0.02):
    """DeepFool on a batch (DeepFool's class docstring): (||(1 + overshoot) r_tot||_2 [B],
    steps [B]: the steps to flip, max_iter + 1 for a sample that did not flip, whose norm is then
    that of the partial perturbation). The model runs in eval mode; its training flag is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            original = model(x0).argmax(1)
        r_tot = torch.zeros_like(x0)
        steps = torch.zeros(len(x0), dtype=torch.long, device=x0.device)
        active = torch.arange(len(x0), device=x0.device)
        for _ in range(max_iter):
            if len(active) == 0:
                break
            x = (x0[active] + (1 + overshoot) * r_tot[active]).detach().requires_grad_(True)
            f = model(x)
            C = f.shape[1]
            grads = torch.stack([torch.autograd.grad(f[:, c].sum(), x, retain_graph=c + 1 < C)[0].flatten(1)
                                 for c in range(C)], 1)  # [b, C, P]
            o = original[active]
            rows = torch.arange(len(active), device=x0.device)
            w = grads - grads[rows, o][:, None, :]
            gap = (f - f[rows, o][:, None]).detach().abs()
            w_norm = w.norm(dim=2)
            ratio = gap / w_norm.clamp_min(1e-30)
            ratio[rows, o] = torch.inf
            ratio[w_norm == 0] = torch.inf
            l = ratio.argmin(1)
            direction = w[rows, l] / w_norm[rows, l].clamp_min(1e-30)[:, None]
            step = (ratio[rows, l].clamp(max=torch.finfo(x0.dtype).max) + 1e-4)[:, None] * direction
            r_tot[active] += step.view_as(x)
            steps[active] += 1
            with torch.no_grad():
                moved = model(x0[active] + (1 + overshoot) * r_tot[active]).argmax(1)
            active = active[moved == o]
        steps[active] = max_iter + 1  # never flipped
        norms = ((1 + overshoot) * r_tot).flatten(1).norm(dim=1)
        if not bool(torch.isfinite(norms).all()):
            raise RuntimeError("DeepFool: a perturbation stopped being finite (a sample whose gradients "
                               "all vanish cannot be moved)")
        return norms.detach(), steps
    finally:
        model.train(was_training)
