"""Method names, specifications and options: the one place the CLI, the experiment runner and
the DeepCore adapter read them from.

METHODS maps each canonical name to its selector class; CONDENSATION names the dataset-condensation
methods of lcmat.condense that `lcmat experiment` runs as rows beside the selectors (they learn
synthetic images instead of choosing training samples, so they are not selectors: get_method,
"all" and the DeepCore adapter know only METHODS); `canonical_method` accepts the spellings
in use (case, '-' for '_', and the aliases below); `MethodSpec` is a method plus options, parsed
from text such as ``"lcmat:rho=1"`` or ``--option lcmat.rho=1`` with each value converted to the
type of the option's default.
"""
import inspect
from dataclasses import dataclass, field

from .selectors import (CRAIG, EL2N, FDMat, Entropy, Forgetting, GraNd, Herding, KCenterGreedy, LCMat,
                        LeastConfidence, Margin, Uniform)
from .matching import AdaCore, Glister, GradMatch
from .diversity import Cal, ContextualDiversity, DeepFool, ModerateDS
from .submodular import GraphCut, LogDeterminant

METHODS = {cls.name: cls for cls in (Uniform, LCMat, FDMat, CRAIG, Herding, KCenterGreedy, GraNd,
                                      EL2N, LeastConfidence, Entropy, Margin, Forgetting,
                                      GradMatch, Glister, AdaCore, ContextualDiversity, DeepFool, Cal,
                                      GraphCut, LogDeterminant, ModerateDS)}

# Options every selector takes from the base class (the CLI has flags of its own for them).
COMMON_OPTIONS = {"fraction", "balance", "seed", "backend", "progress", "dtype", "coverage", "difficulty",
                  "prune_hard", "num_strata"}


# Condensation methods: canonical name -> lcmat.condense's name (lcmat.condense.CONDENSERS). The
# random-real-images baseline of condensation is the selectors' Uniform, so it is not listed here.
CONDENSATION = {"lcmat_c": "lcmat-c", "dc": "dc", "dsa": "dsa", "dm": "dm"}
SELECTION_KIND, CONDENSATION_KIND = "selection", "condensation"
# Condenser arguments the experiment sets itself (images per class from the fraction, the run's seed,
# device, kernel backend and progress); the rest are method options, plus "preset" (lcmat.condense.PRESETS).
CONDENSATION_RESERVED = {"self", "images_per_class", "seed", "device", "progress", "checkpoint_every", "backend"}
CONDENSATION_PRESET = "cpu"


def get_method(name, **options):
    """A selector by its name (see METHODS and canonical_method), e.g. get_method("lcmat", rho=1)."""
    key = canonical_method(name, argument="method")
    if key in CONDENSATION:
        raise ValueError(f"method: {name!r} is a condensation method, not a selector; use "
                         f"lcmat.condense.get_condenser({CONDENSATION[key]!r}, images_per_class) or lcmat experiment")
    return METHODS[key](**options)


def method_kind(name):
    """'condensation' for the methods of CONDENSATION, else 'selection'."""
    return CONDENSATION_KIND if canonical_method(name) in CONDENSATION else SELECTION_KIND


def condenser_class(name):
    """The lcmat.condense class of a condensation method (imported on first use)."""
    from .condense.methods import CONDENSERS
    return CONDENSERS[CONDENSATION[canonical_method(name)]]


ALIASES = {"lcmat_s": "lcmat", "lcmats": "lcmat", "kcentergreedy": "kcenter", "k_center": "kcenter",
           "kcenter_greedy": "kcenter", "leastconfidence": "least_confidence", "random": "uniform",
           "contextual_diversity": "cdiv", "contextualdiversity": "cdiv", "moderate_ds": "moderate",
           "moderateds": "moderate", "graph_cut": "graphcut", "log_determinant": "logdet",
           "logdeterminant": "logdet", "lcmatc": "lcmat_c", "lcmat_condensation": "lcmat_c"}
# Constructor arguments the experiment sets itself; they are not method options.
RESERVED = {"self", "fraction", "seed", "progress", "backend", "dtype"}


# --------------------------------------------------------------------------------------------------
# Methods and their options
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MethodSpec:
    """One method of an experiment: a selector (or condensation method) name and its options (as
    passed to the selector)."""
    name: str
    options: dict = field(default_factory=dict)

    @property
    def kind(self):
        """'condensation' for a method of CONDENSATION, else 'selection'."""
        return CONDENSATION_KIND if self.name in CONDENSATION else SELECTION_KIND

    @property
    def options_text(self):
        """Canonical text of the options, e.g. ``"num_coords=50 rho=1.0"`` ('' for none)."""
        return " ".join(f"{k}={self.options[k]}" for k in sorted(self.options))

    @property
    def label(self):
        return self.name if not self.options else f"{self.name}({self.options_text})"


def canonical_method(name, argument="methods"):
    """The METHODS key for a method name ("LCMat-S", "kCenterGreedy", ... are accepted);
    `argument` names the argument in the error."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{argument}: expected a method name, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in METHODS and key not in CONDENSATION:
        raise ValueError(f"{argument}: unknown method {name!r}; choose from {', '.join(METHODS)}"
                         + (" or 'all'" if argument == "methods" else "")
                         + f", or the condensation methods {', '.join(CONDENSATION)}")
    return key


def method_option_defaults(name):
    """{option: default} of a selector's constructor options that an experiment may set (of a
    condensation method: its condenser's options and ``preset``)."""
    key = canonical_method(name)
    if key in CONDENSATION:
        return condensation_option_defaults(key)
    params = inspect.signature(METHODS[key].__init__).parameters
    return {k: p.default for k, p in params.items()
            if k not in RESERVED and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def condensation_option_defaults(name):
    """{option: default} of a condensation method: ``preset`` ('cpu' or 'paper': the condenser's
    hyper-parameters, lcmat.condense.preset_config) and every constructor argument of its class and
    of the shared loop (a value given overrides the preset's). The defaults shown are the classes';
    the preset's values replace them unless an option is given."""
    defaults = {"preset": CONDENSATION_PRESET}
    for klass in reversed(condenser_class(name).__mro__):  # the shared loop first, the method's own last
        if "__init__" not in vars(klass):
            continue
        for k, p in inspect.signature(klass.__init__).parameters.items():
            if k not in CONDENSATION_RESERVED and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                defaults[k] = p.default
    return defaults


def parse_text(text, default, where):
    """Convert option text to the type of its default (bool, int, float or str)."""
    if not isinstance(text, str):
        return text
    value = text.strip()
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise ValueError(f"{where}: cannot read {text!r} as {type(default).__name__}") from None
    if default is None:  # untyped default: best guess
        for convert in (int, float):
            try:
                return convert(value)
            except ValueError:
                pass
    return value


def check_options(name, options, where):
    allowed = method_option_defaults(name)
    checked = {}
    for key, value in options.items():
        if key not in allowed:
            raise ValueError(f"{where}: {key!r} is not an option of {name} "
                             f"(its options: {', '.join(allowed) or 'none'})")
        try:
            checked[key] = parse_text(value, allowed[key], f"{where} {name}.{key}")
        except ValueError:
            if not selector_accepts(name, key, value):
                raise
            checked[key] = value.strip()  # a word the option also takes, e.g. lcmat's rho=auto
    return checked


def selector_accepts(name, key, value):
    """Does the selector take this text as it is for the option (e.g. LCMat(rho="auto"))?"""
    if not isinstance(value, str) or name not in METHODS:
        return False
    try:
        METHODS[name](**{key: value.strip()})
    except (ValueError, TypeError):
        return False
    return True


def parse_option(text):
    """``"lcmat.rho=1"`` -> ``("lcmat", "rho", "1")`` (the value is converted later)."""
    head, sep, value = str(text).partition("=")
    method, dot, key = head.partition(".")
    if not sep or not dot or not method.strip() or not key.strip():
        raise ValueError(f"option: expected METHOD.NAME=VALUE (e.g. lcmat.rho=1), got {text!r}")
    return canonical_method(method), key.strip(), value


def parse_model_option(text):
    """``"width=16"`` -> ``("width", 16)`` (ints and floats converted, anything else kept as text)."""
    key, sep, value = str(text).partition("=")
    if not sep or not key.strip():
        raise ValueError(f"model-option: expected NAME=VALUE (e.g. width=16), got {text!r}")
    value = value.strip()
    for convert in (int, float):
        try:
            return key.strip(), convert(value)
        except ValueError:
            pass
    return key.strip(), value


def parse_methods(methods, method_options=None):
    """Method specs from names, ``"all"``, or ``"name:key=value:key=value"`` variants.

    methods: a list (or comma-separated string) of entries. method_options: ``{method: {key: value}}``
    (values may be text, e.g. from ``--option lcmat.rho=1``), applied to every entry of that method;
    inline ``name:key=value`` options override them, so ``lcmat,lcmat:rho=1`` runs two variants.
    """
    if isinstance(methods, str):
        methods = methods.split(",")
    entries = [m.strip() for m in methods if str(m).strip()]
    if not entries:
        raise ValueError("methods: no method given")
    shared = {}
    for name, options in (method_options or {}).items():
        key = canonical_method(name)
        shared[key] = check_options(key, dict(options), "option")
    specs = []
    for entry in entries:
        if entry.lower() == "all":
            specs += [MethodSpec(name, dict(shared.get(name, {}))) for name in METHODS]
            continue
        name, *pairs = entry.split(":")
        name = canonical_method(name)
        inline = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"methods: expected NAME:KEY=VALUE in {entry!r}, got {pair!r}")
            inline[key.strip()] = value
        options = dict(shared.get(name, {}))
        options.update(check_options(name, inline, "methods"))
        specs.append(MethodSpec(name, options))
    labels = [s.label for s in specs]
    duplicates = sorted({l for l in labels if labels.count(l) > 1})
    if duplicates:
        raise ValueError(f"methods: listed more than once: {', '.join(duplicates)}")
    return specs



def own_options(name):
    """{option: default} of a method's own options (without the options every selector takes)."""
    return {k: v for k, v in method_option_defaults(name).items() if k not in COMMON_OPTIONS}
