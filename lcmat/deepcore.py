"""DeepCore-compatible selection methods, named like DeepCore's, backed by the lcmat selectors.

A DeepCore-style ``main.py`` uses them by name, unchanged::

    from lcmat import deepcore as methods
    method = methods.__dict__[args.selection](dst_train, args, args.fraction, args.seed,
                                              epochs=args.selection_epochs, balance=args.balance,
                                              selection_method=args.uncertainty, ...)
    subset = method.select()    # {"indices": np.ndarray, "weights"?: np.ndarray, "scores"?: np.ndarray}
    dst_subset = torch.utils.data.Subset(dst_train, subset["indices"])

Each method (except Uniform) does what DeepCore's ``EarlyTrain`` does: it builds the selection model
(``specific_model`` or ``args.model``) after seeding torch with ``random_seed``, trains it on
``dst_train`` for ``epochs`` epochs (SGD with ``args.selection_lr``, ``selection_momentum``,
``selection_weight_decay``, ``selection_nesterov``, batches of ``args.selection_batch``, on
``args.device``), extracts the embeddings (input of the last ``nn.Linear``) and logits in one eval-mode
pass, and hands them to the lcmat selector. ``epochs=0`` selects with the untrained network.

``args`` fields read (each optional, with the default in brackets): device ['cuda' if available, else
'cpu'], selection_batch [128], num_classes [from the dataset], channel and im_size [from the first
item], model ['ResNet18'], selection_lr [0.1], selection_momentum [0.9], selection_weight_decay [5e-4],
selection_nesterov [True], progress [True]. ``workers`` is accepted but batches are read in-process.

Extra keyword arguments that are options of the lcmat selector (``rho``, ``num_coords``, ``mode``,
``weights`` for LCMat; ``lam``, ``beta`` for FDMat; ...) are passed on; DeepCore's own keywords that
have no meaning here (``greedy``, ``function``, ``dst_test``, ``repeat``, ``metric``, ...) are ignored,
and any other keyword draws a warning. ``random_seed=None`` means seed 0 (results stay deterministic).

Budgets: with ``balance=True`` k_c = round(fraction * n_c) per class, otherwise round(fraction * N)
overall, as in DeepCore. Defaults for ``balance`` follow DeepCore's classes (False, but True for
Craig and Forgetting); LCMat and FDMat default to True, as their papers select per class.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

from .data import dataset_targets
from .methods import method_option_defaults
from .models import get_model
from .methods import get_method
from .features import extract_features, extract_features_train_bn
from .train import train_selection_model
from .validation import check_fraction

__all__ = ["Uniform", "LCMat", "LCMat_S", "FDMat", "Craig", "CRAIG", "Herding", "kCenterGreedy", "GraNd",
           "EL2N", "Uncertainty", "Forgetting", "CoresetMethod"]

# Keywords that DeepCore's main.py or its methods pass and that have no counterpart here.
_DEEPCORE_KEYWORDS = {"selection_method", "greedy", "function", "dst_test", "repeat", "metric",
                      "torchvision_pretrain", "dst_pretrain_dict", "fraction_pretrain", "replace",
                      "already_selected", "specific_model", "max_iter", "balance", "dst_val"}

_UNCERTAINTY = {"leastconfidence": "least_confidence", "entropy": "entropy", "margin": "margin"}


class CoresetMethod:
    """Base of the adapters: DeepCore's constructor, lcmat's selection.

    Attributes after construction, as in DeepCore: ``dst_train``, ``args``, ``fraction``,
    ``random_seed``, ``epochs``, ``balance``, ``num_classes``, ``n_train``, ``coreset_size``.
    After :meth:`select`: ``model`` (the trained selection model, None for Uniform), ``coreset``
    (the :class:`lcmat.Coreset`) and ``train_stats``.
    """

    method = None           # the lcmat selector's name
    default_balance = False

    def __init__(self, dst_train, args, fraction=0.5, random_seed=None, epochs=200, specific_model=None,
                 balance=None, **kwargs):
        if len(dst_train) == 0:
            raise ValueError("dst_train: is empty")
        self.dst_train = dst_train
        self.args = args
        self.fraction = check_fraction(fraction)
        self.random_seed = random_seed
        self.seed = 0 if random_seed is None else int(random_seed)
        if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 0:
            raise ValueError(f"epochs: expected a non-negative integer, got {epochs!r}")
        self.epochs = int(epochs)
        self.specific_model = specific_model
        self.balance = self.default_balance if balance is None else bool(balance)
        self.n_train = len(dst_train)
        self.coreset_size = round(self.n_train * self.fraction)
        self.labels = dataset_targets(dst_train)
        self.num_classes = int(getattr(args, "num_classes", None) or _count_classes(dst_train, self.labels))
        self.options = self._split_options(kwargs)
        self.model = None
        self.coreset = None
        self.train_stats = None

    # ---- args ----------------------------------------------------------------------------------

    def _arg(self, name, default):
        value = getattr(self.args, name, None)
        return default if value is None else value

    @property
    def device(self):
        return self._arg("device", "cuda" if torch.cuda.is_available() else "cpu")

    @property
    def progress(self):
        return bool(self._arg("progress", True))

    def _selector_name(self):
        return self.method

    def _split_options(self, kwargs):
        allowed = method_option_defaults(self._selector_name())
        options = {}
        for key, value in kwargs.items():
            if key in allowed:
                options[key] = value
            elif key not in _DEEPCORE_KEYWORDS:
                warnings.warn(f"{type(self).__name__}: ignoring the unknown keyword argument {key!r} "
                              f"(options of {self._selector_name()}: {', '.join(allowed) or 'none'})",
                              stacklevel=3)
        return options

    # ---- selection model -------------------------------------------------------------------------

    def _build_model(self):
        spec = self.specific_model if self.specific_model is not None else self._arg("model", "ResNet18")
        if isinstance(spec, nn.Module):
            return copy.deepcopy(spec)
        if callable(spec) and not isinstance(spec, str):
            return spec()
        first = self.dst_train[0][0]
        shape = tuple(first.shape) if hasattr(first, "shape") else ()
        channel = self._arg("channel", shape[0] if len(shape) == 3 else 1)
        im_size = self._arg("im_size", shape[-2:] if len(shape) >= 2 else None)
        if im_size is None:
            raise ValueError("args: im_size is needed to build the model (items are not [C, H, W] tensors)")
        if not isinstance(im_size, int):
            im_size = tuple(int(s) for s in im_size)
        return get_model(str(spec), self.num_classes, int(channel), im_size)

    def _pretrain(self, record_forgetting=False):
        """The selection model, trained on dst_train for ``epochs`` epochs (DeepCore's EarlyTrain)."""
        torch.manual_seed(self.seed)
        model = self._build_model()
        if self.epochs == 0:
            return model.to(self.device).eval(), {"forgetting": None, "epochs": 0}
        model, stats = train_selection_model(
            model, self.dst_train, epochs=self.epochs, lr=self._arg("selection_lr", 0.1),
            momentum=self._arg("selection_momentum", 0.9), weight_decay=self._arg("selection_weight_decay", 5e-4),
            nesterov=self._arg("selection_nesterov", True), batch_size=int(self._arg("selection_batch", 128)),
            seed=self.seed, device=self.device, record_forgetting=record_forgetting, progress=self.progress)
        return model, stats

    def _features(self, model, selector):
        if getattr(selector, "mode", "paper") == "compat":
            H, Z, _ = extract_features_train_bn(model, self.dst_train, self.labels, batch_size=selector.batch_size,
                                                device=self.device)
        else:
            H, Z, _ = extract_features(model, self.dst_train, batch_size=int(self._arg("selection_batch", 128)),
                                       device=self.device, progress=self.progress)
        return H, Z

    # ---- selection -------------------------------------------------------------------------------

    def _selector(self):
        return get_method(self._selector_name(), fraction=self.fraction, balance=self.balance, seed=self.seed,
                          progress=self.progress, **self.options)

    def _run(self, selector):
        self.model, self.train_stats = self._pretrain()
        H, Z = self._features(self.model, selector)
        return selector.select_features(embeddings=H, logits=Z, labels=self.labels)

    def select(self, **kwargs):
        """Select: ``{"indices": np.int64 array of dataset indices, "weights"?: ..., "scores"?: ...}``."""
        self.coreset = self._run(self._selector())
        return self.coreset.to_dict()

    def __repr__(self):
        return (f"{type(self).__name__}(fraction={self.fraction}, random_seed={self.random_seed}, "
                f"epochs={self.epochs}, balance={self.balance})")


def _count_classes(dataset, labels):
    classes = getattr(dataset, "classes", None)
    if classes is not None and len(classes) > 0:
        return len(classes)
    return int(labels.max()) + 1


class Uniform(CoresetMethod):
    """Uniform sampling without replacement (no selection model is trained)."""
    method = "uniform"

    def _run(self, selector):
        return selector.select_features(labels=self.labels, num_classes=self.num_classes)


class LCMat(CoresetMethod):
    """LCMat-S (loss-curvature matching); options rho, num_coords, mode, batch_size, weights."""
    method = "lcmat"
    default_balance = True


LCMat_S = LCMat


class FDMat(CoresetMethod):
    """FDMat (feature distribution matching by optimal transport); options lam, beta, negative, ..."""
    method = "fdmat"
    default_balance = True


class Craig(CoresetMethod):
    """CRAIG on last-layer gradients, returning the cluster-size weights."""
    method = "craig"
    default_balance = True


CRAIG = Craig


class Herding(CoresetMethod):
    """Herding on the embeddings."""
    method = "herding"


class kCenterGreedy(CoresetMethod):
    """k-Center greedy on the embeddings."""
    method = "kcenter"


class GraNd(CoresetMethod):
    """GraNd: largest last-layer gradient norms (one selection model; DeepCore's ``repeat`` is ignored)."""
    method = "grand"


class EL2N(CoresetMethod):
    """EL2N: largest error norms ||softmax(z) - onehot(y)||."""
    method = "el2n"


class Uncertainty(CoresetMethod):
    """Uncertainty sampling; ``selection_method`` is "LeastConfidence" (default), "Entropy" or "Margin"."""

    def __init__(self, dst_train, args, fraction=0.5, random_seed=None, epochs=200, specific_model=None,
                 balance=None, selection_method="LeastConfidence", **kwargs):
        key = str(selection_method).replace("_", "").lower()
        if key not in _UNCERTAINTY:
            raise ValueError(f"selection_method: expected 'LeastConfidence', 'Entropy' or 'Margin', "
                             f"got {selection_method!r}")
        self.selection_method = selection_method
        self.method = _UNCERTAINTY[key]
        super().__init__(dst_train, args, fraction, random_seed, epochs, specific_model, balance, **kwargs)


class Forgetting(CoresetMethod):
    """Forgetting: the samples forgotten most often while the selection model trains."""
    method = "forgetting"
    default_balance = True

    def __init__(self, dst_train, args, fraction=0.5, random_seed=None, epochs=200, specific_model=None,
                 balance=None, **kwargs):
        super().__init__(dst_train, args, fraction, random_seed, epochs, specific_model, balance, **kwargs)
        if self.epochs < 1:
            raise ValueError("epochs: Forgetting counts events while the selection model trains; need epochs >= 1")

    def _run(self, selector):
        self.model, self.train_stats = self._pretrain(record_forgetting=True)
        return selector.select_features(labels=self.labels, num_classes=self.num_classes,
                                        forgetting=self.train_stats["forgetting"])
