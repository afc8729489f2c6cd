"""DeepCore-compatible selection methods, backed by the lcmat selectors.

Used beside DeepCore's own methods (recommended): register lcmat's adapters into
``deepcore.methods`` once, before ``main.py`` looks the method up::

    import deepcore.methods
    import lcmat.deepcore
    lcmat.deepcore.register(deepcore.methods)   # adds names, never replaces DeepCore's

then ``python main.py --selection LCMat ...`` (or ``FDMat``, ``EL2N``, ``ModerateDS``, ``AdaCore``,
``LcmatCraig``, ``LcmatGradMatch``, ...) runs lcmat's version while ``--selection Craig``,
``GradMatch``, ``Glister`` and the rest still run DeepCore's. lcmat's adapters carry DeepCore's
names where DeepCore has no such method (``LCMat``, ``LCMat_S``, ``FDMat``, ``EL2N``,
``ModerateDS``, ``AdaCore``) and the prefix ``Lcmat`` where it has one (``LcmatUniform``,
``LcmatHerding``, ``LcmatkCenterGreedy``, ``LcmatCraig``, ``LcmatGraNd``, ``LcmatUncertainty``,
``LcmatForgetting``, ``LcmatContextualDiversity``, ``LcmatDeepFool``, ``LcmatCal``,
``LcmatSubmodular``, ``LcmatGradMatch``, ``LcmatGlister``); :data:`REGISTRY` lists them.

Replacing the module instead (``from lcmat import deepcore as methods`` in ``main.py``) also
works, with the unprefixed names, but hides every DeepCore method lcmat does not have and swaps
DeepCore's Uniform, Herding, Craig, ... for lcmat's without a word: prefer :func:`register`.

The calling convention is DeepCore's::

    method = methods.__dict__[args.selection](dst_train, args, args.fraction, args.seed,
                                              epochs=args.selection_epochs, balance=args.balance,
                                              selection_method=args.uncertainty, ...)
    subset = method.select()    # {"indices": np.ndarray, "weights"?: np.ndarray, "scores"?: np.ndarray}

Each method (except Uniform) does what DeepCore's ``EarlyTrain`` does: it builds the selection model
after seeding torch with ``random_seed``, trains it on ``dst_train`` for ``epochs`` epochs, extracts
the embeddings (input of the last ``nn.Linear``) and logits in one eval-mode pass, and hands them to
the lcmat selector (DeepFool attacks the trained model itself). ``epochs=0`` selects with the
untrained network.

The selection model: ``specific_model`` or ``args.model``. A module or a zero-argument builder is
used as given. A name is looked up in DeepCore's ``deepcore.nets`` first when DeepCore is
importable (so ``--model MLP`` trains DeepCore's MLP, and VGG11, ResNet50, WideResNet16_8, AlexNet,
... work), built as DeepCore builds it (``channel``, ``num_classes``, ``im_size``); only outside
DeepCore does a name mean an lcmat network (``lcmat.models.get_model``).

Training follows ``args.selection_optimizer`` ("SGD" [default], "Adam", or any other
``torch.optim`` class), ``selection_lr`` [0.1], ``selection_momentum`` [0.9],
``selection_weight_decay`` [5e-4], ``selection_nesterov`` [True] and ``selection_batch`` [128,
also the feature-extraction batch]; a setting the chosen optimizer has no parameter for (Adam has
no momentum or nesterov) draws one warning, once per process, as do DeepCore options that are not
reproduced (``torchvision_pretrain=True``, a ``dst_pretrain_dict``, ``fraction_pretrain`` < 1).

Other ``args`` fields read (each optional): device ['cuda' if available, else 'cpu'], num_classes
[from the dataset], channel and im_size [from the first item], progress [progress bars only when
stderr is a terminal]. ``workers`` is accepted but batches are read in-process.

Extra keyword arguments that are options of the lcmat selector (``rho``, ``num_coords``, ``mode``,
``weights`` for LCMat; ``lam``, ``beta`` for FDMat; ...) are passed on; DeepCore's own keywords that
have no meaning here (``dst_test``, ``repeat``, ``metric``, ...) are ignored, and any other keyword
draws a warning. ``random_seed=None`` means seed 0 (results stay deterministic).

Budgets: with ``balance=True`` k_c = round(fraction * n_c) per class, otherwise round(fraction * N)
overall, as in DeepCore. Defaults for ``balance`` follow DeepCore's classes; lcmat's own methods
(LCMat, FDMat, AdaCore) default to True, as their papers select per class. Weights follow DeepCore
where it has the method: Craig's are 1 + the cluster size (DeepCore's ``calc_weights``).

Selectors only: the condensation methods (LCMat-C, DC, DSA, DM; lcmat.condense) learn synthetic
images rather than choose training samples, so DeepCore's selection interface has no place for
them; they run through ``lcmat condense`` and ``lcmat experiment --methods``.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import sys
import warnings

import torch
import torch.nn as nn

from .data import dataset_targets
from .methods import method_option_defaults
from .models import get_model
from .methods import METHODS, get_method
from .features import extract_features, extract_features_train_bn
from .train import train_selection_model
from .validation import check_fraction

__all__ = ["Uniform", "LCMat", "LCMat_S", "FDMat", "Craig", "CRAIG", "Herding", "kCenterGreedy", "GraNd",
           "EL2N", "Uncertainty", "Forgetting", "ContextualDiversity", "DeepFool", "Cal", "Submodular",
           "ModerateDS", "GradMatch", "Glister", "AdaCore", "CoresetMethod", "REGISTRY", "register"]

# Keywords that DeepCore's main.py or its methods pass and that have no counterpart here.
_DEEPCORE_KEYWORDS = {"selection_method", "greedy", "function", "dst_test", "repeat", "metric",
                      "torchvision_pretrain", "dst_pretrain_dict", "fraction_pretrain", "replace",
                      "already_selected", "specific_model", "max_iter", "balance", "dst_val",
                      "pretrain_model", "neighbors", "eta"}
_warned = set()


def _warn_once(key, message):
    """Warn about `key` once per process (DeepCore builds a method per experiment)."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=3)


def _deepcore_nets():
    """DeepCore's ``deepcore.nets`` when DeepCore is importable, else None."""
    if "deepcore.nets" in sys.modules:
        return sys.modules["deepcore.nets"]
    try:
        if importlib.util.find_spec("deepcore") is None:
            return None
        return importlib.import_module("deepcore.nets")
    except ImportError:
        return None

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
        self._warn_unreproduced(kwargs)
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
        """args.progress when set; otherwise bars only on a terminal (no carriage returns in logs)."""
        value = getattr(self.args, "progress", None)
        if value is None:
            return bool(getattr(sys.stderr, "isatty", lambda: False)())
        return bool(value)

    def _selector_name(self):
        return self.method

    def _split_options(self, kwargs):
        if self._selector_name() not in METHODS:
            raise NotImplementedError(f"{type(self).__name__}: lcmat has no method {self._selector_name()!r} "
                                      f"in this version (lcmat.METHODS)")
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
        nets = _deepcore_nets()
        if nets is not None and callable(getattr(nets, str(spec), None)):
            # DeepCore's network, built as EarlyTrain builds it (no torchvision weights).
            return getattr(nets, str(spec))(int(channel), self.num_classes, im_size=im_size, pretrained=False)
        return get_model(str(spec), self.num_classes, int(channel), im_size)

    def _optimizer(self):
        """A builder of args.selection_optimizer over the model's parameters (None: lcmat's SGD)."""
        name = str(self._arg("selection_optimizer", "SGD"))
        settings = {"lr": self._arg("selection_lr", 0.1), "momentum": self._arg("selection_momentum", 0.9),
                    "weight_decay": self._arg("selection_weight_decay", 5e-4),
                    "nesterov": self._arg("selection_nesterov", True)}
        if name == "SGD":
            return None
        cls = getattr(torch.optim, name, None)
        if not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)):
            raise ValueError(f"args.selection_optimizer: {name!r} is not a torch.optim optimizer")
        accepted = inspect.signature(cls.__init__).parameters
        kwargs = {}
        for key, value in settings.items():
            if key in accepted:
                kwargs[key] = value
            elif getattr(self.args, f"selection_{key}", None) is not None:
                _warn_once((name, key), f"{type(self).__name__}: args.selection_{key} is ignored: "
                                        f"torch.optim.{name} has no {key!r} parameter")
        if kwargs.get("nesterov") and not kwargs.get("momentum"):
            kwargs["nesterov"] = False  # torch refuses Nesterov without momentum
        return lambda params: cls(params, **kwargs)

    def _warn_unreproduced(self, kwargs):
        if kwargs.get("torchvision_pretrain"):
            _warn_once("torchvision_pretrain", "torchvision_pretrain=True is ignored: the selection model "
                                               "starts from random weights")
        if kwargs.get("dst_pretrain_dict"):
            _warn_once("dst_pretrain_dict", "dst_pretrain_dict is ignored: the selection model trains on dst_train")
        if kwargs.get("fraction_pretrain", 1.0) != 1.0:
            _warn_once("fraction_pretrain", "fraction_pretrain is ignored: each epoch visits all of dst_train")

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
            seed=self.seed, device=self.device, record_forgetting=record_forgetting, progress=self.progress,
            optimizer=self._optimizer())
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
        if getattr(selector, "needs_model", False):  # DeepFool: the model itself, not its features
            return selector.select(self.model, self.dst_train, batch_size=int(self._arg("selection_batch", 128)),
                                   device=self.device)
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
    """CRAIG on last-layer gradients, with DeepCore's weights: 1 + the number of class samples
    whose nearest pick it is (lcmat.CRAIG's weights are the cluster sizes alone)."""
    method = "craig"
    default_balance = True

    def select(self, **kwargs):
        subset = super().select(**kwargs)
        subset["weights"] = subset["weights"] + 1.0
        return subset


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


class ContextualDiversity(CoresetMethod):
    """Contextual Diversity: k-center greedy under the symmetric KL divergence of the predictions."""
    method = "cdiv"
    default_balance = True


class DeepFool(CoresetMethod):
    """DeepFool: the samples the smallest DeepFool perturbation moves across the decision boundary;
    options max_iter (DeepCore's keyword), overshoot, score."""
    method = "deepfool"


class Cal(CoresetMethod):
    """Cal (contrastive active learning); DeepCore's ``neighbors`` keyword sets lcmat's ``neighbours``.
    The neighbours come from the selection model's embeddings (DeepCore: an ImageNet ResNet-18)."""
    method = "cal"
    default_balance = True

    def __init__(self, dst_train, args, fraction=0.5, random_seed=None, epochs=200, specific_model=None,
                 balance=None, neighbors=None, **kwargs):
        if neighbors is not None:
            kwargs.setdefault("neighbours", neighbors)
        super().__init__(dst_train, args, fraction, random_seed, epochs, specific_model, balance, **kwargs)


_FUNCTIONS = {"graphcut": "graphcut", "logdeterminant": "logdet"}
_GREEDY = {"naivegreedy": False, "lazygreedy": True, "approximatelazygreedy": True, "stochasticgreedy": True}


class Submodular(CoresetMethod):
    """DeepCore's Submodular: ``function`` "GraphCut" or "LogDeterminant" (DeepCore's default), ``greedy``
    "NaiveGreedy" or "LazyGreedy" (the same picks); DeepCore's approximate greedies
    ("ApproximateLazyGreedy", its default, and "StochasticGreedy") run the exact lazy greedy, with a
    warning. Facility location is lcmat's Craig (LcmatCraig)."""

    def __init__(self, dst_train, args, fraction=0.5, random_seed=None, epochs=200, specific_model=None,
                 balance=None, function="LogDeterminant", greedy="ApproximateLazyGreedy", **kwargs):
        key = str(function).replace("_", "").lower()
        if key not in _FUNCTIONS:
            raise ValueError(f"function: expected 'GraphCut' or 'LogDeterminant', got {function!r} "
                             f"(facility location: LcmatCraig)")
        greedy_key = str(greedy).replace("_", "").lower()
        if greedy_key not in _GREEDY:
            raise ValueError(f"greedy: expected one of NaiveGreedy, LazyGreedy, ApproximateLazyGreedy, "
                             f"StochasticGreedy, got {greedy!r}")
        if greedy_key in ("approximatelazygreedy", "stochasticgreedy"):
            _warn_once(("greedy", greedy_key), f"Submodular: greedy={greedy!r} runs lcmat's exact lazy greedy")
        self.function, self.greedy, self.method = function, greedy, _FUNCTIONS[key]
        kwargs.setdefault("lazy", _GREEDY[greedy_key])
        super().__init__(dst_train, args, fraction, random_seed, epochs, specific_model, balance, **kwargs)


class ModerateDS(CoresetMethod):
    """Moderate-DS: distances to the class centre closest to the median (global by default, as the
    released code ranks all samples together)."""
    method = "moderate"


class GradMatch(CoresetMethod):
    """GradMatch (lcmat's; needs lcmat.METHODS["gradmatch"])."""
    method = "gradmatch"
    default_balance = True


class Glister(CoresetMethod):
    """Glister (lcmat's; needs lcmat.METHODS["glister"])."""
    method = "glister"
    default_balance = True


class AdaCore(CoresetMethod):
    """AdaCore (lcmat's; needs lcmat.METHODS["adacore"]); per class, like LCMat."""
    method = "adacore"
    default_balance = True


# The names :func:`register` adds to deepcore.methods: DeepCore's name where DeepCore has no such
# method, "Lcmat" + DeepCore's name where it has one.
REGISTRY = {
    "LCMat": LCMat, "LCMat_S": LCMat, "FDMat": FDMat, "EL2N": EL2N, "ModerateDS": ModerateDS, "AdaCore": AdaCore,
    "LcmatUniform": Uniform, "LcmatHerding": Herding, "LcmatkCenterGreedy": kCenterGreedy, "LcmatCraig": Craig,
    "LcmatGraNd": GraNd, "LcmatUncertainty": Uncertainty, "LcmatForgetting": Forgetting,
    "LcmatContextualDiversity": ContextualDiversity, "LcmatDeepFool": DeepFool, "LcmatCal": Cal,
    "LcmatSubmodular": Submodular, "LcmatGradMatch": GradMatch, "LcmatGlister": Glister,
}
for _name, _cls in REGISTRY.items():
    globals().setdefault(_name, _cls)
__all__ += [_name for _name in REGISTRY if _name not in __all__]


def register(methods_module=None):
    """Add :data:`REGISTRY`'s adapters to DeepCore's ``deepcore.methods`` (imported when not given),
    beside DeepCore's own: a name the module already has is left alone. Returns the names added."""
    if methods_module is None:
        methods_module = importlib.import_module("deepcore.methods")
    added = []
    for name, cls in REGISTRY.items():
        if not hasattr(methods_module, name):
            setattr(methods_module, name, cls)
            added.append(name)
    return added
