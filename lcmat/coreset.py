"""The result type and the budget rules shared by every selector."""
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Coreset:
    """A selected subset: sorted original dataset indices, optional weights aligned with them,
    and per-sample scores over the full set where the method has them."""
    indices: np.ndarray
    weights: np.ndarray = None
    scores: np.ndarray = None
    method: str = ""
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.indices)

    def class_counts(self, labels):
        """Selected samples per class, np.int64 [C]."""
        labels = np.asarray(labels)
        return np.bincount(labels[self.indices], minlength=int(labels.max()) + 1)

    def to_dict(self):
        """DeepCore's return format: {"indices", "weights"?, "scores"?}."""
        out = {"indices": self.indices}
        if self.weights is not None:
            out["weights"] = self.weights
        if self.scores is not None:
            out["scores"] = self.scores
        return out

    def save(self, path):
        arrays = {k: v for k, v in self.to_dict().items()}
        np.savez(path, method=np.array(self.method), seconds=np.array(self.seconds), **arrays)

    @classmethod
    def load(cls, path):
        with np.load(path) as f:
            return cls(indices=f["indices"], weights=f["weights"] if "weights" in f else None,
                       scores=f["scores"] if "scores" in f else None,
                       method=str(f["method"]), seconds=float(f["seconds"]))


def class_budgets(counts, fraction):
    """k_c = round(fraction * n_c) per class (Python's round: half to even), np.int64 [C].

    A class whose budget rounds to zero is an error that names the class and the smallest
    fraction that gives it one sample (round(x) >= 1 needs x > 0.5)."""
    counts = np.asarray(counts, dtype=np.int64)
    budgets = np.array([round(fraction * int(n)) for n in counts], dtype=np.int64)
    zero = np.flatnonzero(budgets == 0)
    if len(zero):
        c = int(zero[0])
        raise ValueError(
            f"fraction: {fraction} gives class {c} (n_c = {counts[c]}) a budget of "
            f"round({fraction * counts[c]:.4g}) = 0 samples"
            f"{f' (and {len(zero) - 1} more classes)' if len(zero) > 1 else ''}; "
            f"use fraction > {0.5 / counts[c]:.4g} to give it one sample, or balance=False")
    return budgets


def global_budget(n, fraction):
    """k = round(fraction * N), at least one sample is required."""
    k = round(fraction * n)
    if k == 0:
        raise ValueError(f"fraction: {fraction} of {n} samples rounds to 0; use fraction > {0.5 / n:.4g}")
    return k


def split_budget(counts, total):
    """Split `total` over classes in proportion to their sizes by largest remainder
    (ties to the lower class), for methods that work per class under a global budget."""
    counts = np.asarray(counts, dtype=np.int64)
    exact = total * counts / counts.sum()
    budgets = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - budgets), kind="stable")
    budgets[order[: total - budgets.sum()]] += 1
    return budgets
