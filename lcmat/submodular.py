"""Graph cut and log-determinant selection (DeepCore's Submodular with function="GraphCut" and
"LogDeterminant"): greedy or lazy greedy maximisation per class over a similarity block built
from the same last-layer gradients (or embeddings) as facility location (CRAIG, LCMat-S).

Vectors (space): "gradients" (default, DeepCore's) the last-layer gradients g_i, or
"embeddings" the embeddings h_i. Similarity (metric):
    "cossim" (default, DeepCore's): S_ij = 1/2 + 1/2 cos(g_i, g_j), in [0, 1] and positive
        semi-definite; a zero vector has cosine 0 with everything (DeepCore's code gives NaN);
    "euclidean": S_ij = L - ||g_i - g_j||_2 with L = max_ij ||g_i - g_j|| (facility location's
        paper mode; not positive semi-definite in general, so log-det may refuse it).
The inner products of last-layer gradients come from the Gram identity
<g_i, g_j> = <e_i, e_j>(1 + <h_i, h_j>) (lcmat.ops.gradient_gram), never from the gradients.
lazy=False (default) runs the naive greedy, lazy=True the lazy one: the same picks. On the cpu
backend the lazy greedy is the faster for log-det (it skips most candidates' Cholesky updates)
and no faster for graph cut (whose O(n_c^2) passes over the block dominate either way; figures in
BENCHMARKS.md sections 1 and 8); on the reference backend it is a Python heap and the slower; the
device backends (cuda, triton) run the naive greedy either way (one sweep over the candidates per
pick; docs/design.md). The blocks are n_c x n_c, so these run per class (balance=False
splits one global budget over the classes in proportion to their sizes, as every per-class method
here does).
"""
import torch

from . import ops
from .selectors import Selector
from .validation import check_bool, check_choice, check_positive


class _SubmodularSelector(Selector):
    needs = ("embeddings", "logits")
    per_class_only = True

    def __init__(self, fraction=0.1, metric="cossim", space="gradients", lazy=False, balance=True, seed=0,
                 backend=None, progress=None, dtype=torch.float32, coverage=False, difficulty="el2n",
                 prune_hard=0.1, num_strata=50):
        super().__init__(fraction, balance, seed, backend, progress, dtype, coverage, difficulty,
                         prune_hard, num_strata)
        self.metric = check_choice("metric", metric, ("cossim", "euclidean"))
        self.space = check_choice("space", space, ("gradients", "embeddings"))
        self.lazy = check_bool("lazy", lazy)

    def similarity(self, embeddings, logits, labels):
        """The block's n x n similarity S (module docstring)."""
        if self.space == "gradients":
            e, _ = ops.last_layer_factors(logits, labels, backend=self.backend)
            gram = ops.gradient_gram(embeddings, e)
        else:
            gram = embeddings @ embeddings.T
        return similarity_from_gram(gram, self.metric)

    def pick(self, data, positions, k):
        index = torch.as_tensor(positions, device=data.labels.device)
        sim = self.similarity(data.embeddings[index], data.logits[index], data.labels[index])
        picks, _ = self._greedy(sim, k)
        return positions[picks.cpu().numpy()], None


def similarity_from_gram(gram, metric):
    """S from the Gram matrix G of the vectors: 1/2 + 1/2 cos, or L - distance."""
    sq = gram.diagonal().clamp_min(0.0)
    if metric == "cossim":
        norms = sq.sqrt()
        outer = norms[:, None] * norms[None, :]
        cos = torch.where(outer > 0, gram / outer.clamp_min(torch.finfo(gram.dtype).tiny), torch.zeros_like(gram))
        cos.clamp_(-1.0, 1.0).diagonal().copy_((norms > 0).to(cos.dtype))  # cos(g, g) = 1 exactly
        return 0.5 + 0.5 * cos
    dist = (sq[:, None] + sq[None, :] - 2.0 * gram).clamp_min_(0.0).sqrt_()
    dist.fill_diagonal_(0.0)
    L = dist.max() if dist.numel() else dist.new_zeros(())
    return L - dist


class GraphCut(_SubmodularSelector):
    """Graph cut (DeepCore's Submodular(function="GraphCut")): greedy, per class. The function
    (Iyer and Bilmes):
        f(A) = sum_{i in V, j in A} S_ij - lam sum_{i, j in A} S_ij,
    greedy (lazy=False) or lazy greedy (lazy=True, the same picks), lowest index on ties.
    DeepCore's code scores lam' sum_i S_ie - 2 sum_{j in A} S_je with lam' = 1 by default, i.e.
    lam = 1 / lam' here, and drops the self term S_ee (a constant 1 on its cosine similarity, so
    the picks agree)."""
    name = "graphcut"

    def __init__(self, fraction=0.1, lam=1.0, metric="cossim", space="gradients", lazy=False, balance=True,
                 seed=0, backend=None, progress=None, dtype=torch.float32, coverage=False, difficulty="el2n",
                 prune_hard=0.1, num_strata=50):
        super().__init__(fraction, metric, space, lazy, balance, seed, backend, progress, dtype, coverage,
                         difficulty, prune_hard, num_strata)
        self.lam = check_positive("lam", lam, allow_zero=True)

    def _greedy(self, sim, k):
        return ops.graph_cut_greedy(sim, k, self.lam, self.lazy, backend=self.backend)


class LogDeterminant(_SubmodularSelector):
    """Log-determinant (DeepCore's Submodular(function="LogDeterminant")): greedy, per class. The
    function:
        f(A) = log det(S_AA + reg I),
    greedy via incremental Cholesky (O(n k^2)) or lazy greedy (the same picks), lowest index on
    ties; reg > 0 keeps the determinant of a singular block finite (reg = 1 with the cosine
    similarity: every gain is >= 0, so f is also monotone).
    variant="deepcore": DeepCore's code instead picks, at each step, the largest
    S_eA pinv(S_AA) S_Ae (naive greedy, no regulariser), the part of S_ee the picks already
    explain: it selects near-duplicates of earlier picks, the opposite of the log-determinant
    gain log(S_ee - S_eA S_AA^-1 S_Ae). Offered for comparison with DeepCore's results only."""
    name = "logdet"

    def __init__(self, fraction=0.1, reg=1.0, variant="paper", metric="cossim", space="gradients", lazy=False,
                 balance=True, seed=0, backend=None, progress=None, dtype=torch.float32, coverage=False,
                 difficulty="el2n", prune_hard=0.1, num_strata=50):
        super().__init__(fraction, metric, space, lazy, balance, seed, backend, progress, dtype, coverage,
                         difficulty, prune_hard, num_strata)
        self.reg = check_positive("reg", reg)
        self.variant = check_choice("variant", variant, ("paper", "deepcore"))

    def _greedy(self, sim, k):
        if self.variant == "deepcore":
            return ops.log_determinant_deepcore_greedy(sim, k)
        return ops.log_determinant_greedy(sim, k, self.reg, self.lazy, backend=self.backend)
