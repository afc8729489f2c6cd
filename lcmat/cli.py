"""The `lcmat` command: `select`, `methods`, `demo`, `experiment`."""
import argparse
import inspect
import os
import sys
import time
import zipfile

import numpy as np

from .condense import cli as condense_cli
from .methods import CONDENSATION, METHODS, canonical_method, own_options, parse_text

class UsageError(SystemExit):
    """A one-line error for the user; the command exits with status 2, as argparse errors do."""

    def __init__(self, message):
        super().__init__(2)
        self.message = message

    def __str__(self):
        return self.message


def _flag(name):
    return "--" + name.replace("_", "-")


def _parse_value(name, text, default):
    """A method option's command-line text as the type of its default ('auto' stays text)."""
    try:
        return parse_text(text, default, _flag(name))
    except ValueError as err:
        if isinstance(default, float) and text.strip() == "auto":
            return "auto"
        raise UsageError(f"lcmat select: {err}")


def _method_name(text):
    try:
        name = canonical_method(text, argument="--method")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).partition(": ")[2])
    if name not in METHODS:
        raise argparse.ArgumentTypeError(f"{text!r} is a condensation method, not a selector: use lcmat condense "
                                         f"(or lcmat experiment --methods)")
    return name


def _all_options():
    options = {}
    for name in METHODS:
        options.update(own_options(name))
    return options


def summary(doc):
    """The first sentence of a docstring, on one line."""
    text = " ".join((doc or "").split())
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]


def cmd_methods(args):
    print(f"{'method':<18} {'needs':<22} options (default)")
    for name, cls in METHODS.items():
        needs = ", ".join(cls.needs) or "labels only"
        opts = ", ".join(f"{_flag(k)} {v}" for k, v in own_options(name).items())
        print(f"{name:<18} {needs:<22} {opts}")
        print(f"{'':<18} {summary(cls.__doc__)}")
    print("\nEvery method also takes --fraction, --balance/--no-balance, --seed, --backend, and the "
          "coverage options --coverage, --difficulty {el2n,own,forgetting}, --prune-hard, --num-strata.")
    print(f"\nCondensation methods (learn synthetic images; lcmat condense, or rows of lcmat experiment --methods "
          f"where a fraction gives every class one number of images): {', '.join(CONDENSATION)}.")


FEATURE_ARRAYS = ("labels", "embeddings", "logits", "forgetting")


def _load_features(path):
    """The arrays of a features .npz, or a one-line UsageError for anything unreadable: a missing
    file, a directory, a .npy or pickle, a truncated or non-zip file, object or string arrays.
    Nothing is unpickled."""
    def fail(why):
        raise UsageError(f"lcmat select: --features: {path!r} {why}")
    if not os.path.exists(path):
        raise UsageError(f"lcmat select: --features: no such file {path!r}")
    if os.path.isdir(path):
        fail("is a directory, not an .npz file")
    if not zipfile.is_zipfile(path):
        fail("is not an .npz archive (np.savez writes one; a .npy, a pickle or a truncated file is not)")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "labels" not in f.files:
                fail(f"has no 'labels' array (has {f.files})")
            arrays = {k: f[k] for k in f.files if k in FEATURE_ARRAYS}
    except UsageError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
        fail(f"cannot be read ({' '.join(str(err).split())[:200] or type(err).__name__})")
    for name, x in arrays.items():
        if x.dtype.kind not in "biuf":
            fail(f"array {name!r} holds {x.dtype} values; it must hold numbers")
    return arrays


def output_path(out, features=None, overwrite=False, flag="--out", prog="lcmat select"):
    """The path np.savez will write for `out` (it appends .npz), checked before any work: its
    folder exists and is writable, it is not the input, and it does not exist unless overwrite."""
    path = out if out.endswith(".npz") else out + ".npz"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{prog}: {flag}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{prog}: {flag}: cannot write into the folder {folder!r}")
    if os.path.isdir(path):
        raise UsageError(f"{prog}: {flag}: {path!r} is a directory")
    if features is not None and os.path.exists(features) and os.path.exists(path) \
            and os.path.samefile(path, features):
        raise UsageError(f"{prog}: {flag}: {path!r} is the --features input; choose another output file")
    if os.path.exists(path) and not overwrite:
        raise UsageError(f"{prog}: {flag}: {path!r} already exists; pass --overwrite to replace it")
    return path


def cmd_select(args):
    cls = METHODS[args.method]
    allowed = own_options(args.method)
    options = {}
    for name, default in _all_options().items():
        value = getattr(args, name)
        if value is None:
            continue
        if name not in allowed:
            raise UsageError(f"lcmat select: {_flag(name)} is not an option of {args.method} "
                             f"(its options: {', '.join(map(_flag, allowed)) or 'none'})")
        options[name] = _parse_value(name, value, allowed[name])
    out = output_path(args.out, args.features, args.overwrite)
    from . import distributed  # distributed: rank 0 alone shows progress, saves and prints
    lead = distributed.is_lead()
    feats = _load_features(args.features)
    extra = {"forgetting": feats["forgetting"]} if "forgetting" in feats else {}
    start = time.perf_counter()
    try:
        selector = cls(fraction=args.fraction, balance=args.balance, seed=args.seed, backend=args.backend,
                       progress=not args.quiet and lead, coverage=args.coverage, difficulty=args.difficulty,
                       prune_hard=args.prune_hard, num_strata=args.num_strata, **options)
        coreset = selector.select_features(embeddings=feats.get("embeddings"), logits=feats.get("logits"),
                                           labels=feats["labels"], **extra)
    except (ValueError, FloatingPointError, MemoryError) as err:
        raise UsageError(f"lcmat select: {err}")
    seconds = time.perf_counter() - start
    if lead:  # distributed
        coreset.save(out)
        print_summary(coreset, feats["labels"], seconds, out)


def print_summary(coreset, labels, seconds, out):
    labels = np.asarray(labels)
    pool = np.bincount(labels)
    chosen = coreset.class_counts(labels)
    print(f"{'class':>6} {'pool':>8} {'selected':>9} {'share':>7}")
    for c in range(len(pool)):
        print(f"{c:>6} {pool[c]:>8} {chosen[c]:>9} {100 * chosen[c] / max(pool[c], 1):>6.2f}%")
    print(f"{'total':>6} {pool.sum():>8} {chosen.sum():>9} {100 * chosen.sum() / pool.sum():>6.2f}%")
    print(f"method {coreset.method}: {len(coreset)} samples in {seconds:.2f} s -> {out}")


def build_parser():
    parser = argparse.ArgumentParser(prog="lcmat", description="Fast, exact coreset selection.")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("methods", help="list methods and their options").set_defaults(run=cmd_methods)
    condense_cli.add_parser(sub)

    sel = sub.add_parser("select", help="select a coreset from a features file (.npz)")
    sel.add_argument("--method", required=True, type=_method_name,
                     help=f"one of {', '.join(METHODS)} (case and '-' for '_' do not matter)")
    sel.add_argument("--fraction", type=float, required=True)
    sel.add_argument("--features", required=True,
                     help=".npz with 'labels' and, as the method needs, 'embeddings' and 'logits'")
    sel.add_argument("--out", required=True, help="output .npz: indices, weights?, scores? (.npz is appended "
                                                  "when missing; never the --features file)")
    sel.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    sel.add_argument("--balance", action=argparse.BooleanOptionalAction, default=True,
                     help="per-class budgets (default) or one global budget")
    sel.add_argument("--seed", type=int, default=0)
    sel.add_argument("--backend", choices=["reference", "cpu", "cuda", "triton"], default=None)
    sel.add_argument("--quiet", action="store_true", help="no progress bars")
    sel.add_argument("--coverage", action="store_true",
                     help="coverage-centric selection: stratify by difficulty, drop the hardest")
    sel.add_argument("--difficulty", default="el2n", choices=["el2n", "own", "forgetting"])
    sel.add_argument("--prune-hard", type=float, default=0.1)
    sel.add_argument("--num-strata", type=int, default=50)
    for name, default in _all_options().items():
        metavar = "BYTES" if name == "max_memory" else "VALUE" if default is None else type(default).__name__.upper()
        sel.add_argument(_flag(name), dest=name, default=None, metavar=metavar,
                         help=f"default {default}")
    sel.set_defaults(run=cmd_select)

    demo = sub.add_parser("demo", help="the experiment pipeline in miniature, on data that needs no download")
    demo.add_argument("--dataset", default="digits",
                      help="digits (default, needs no files) or an offline dataset, e.g. fashion-mnist")
    demo.add_argument("--model", default=None, help="default: mlp for digits, lenet otherwise")
    demo.add_argument("--methods", default="all", help="comma-separated methods, or 'all' (default)")
    demo.add_argument("--fractions", default=None, help="default: 0.05,0.1 (digits), 0.005,0.05 (others)")
    demo.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    demo.add_argument("--steps", type=int, default=None, help="SGD steps per coreset")
    demo.add_argument("--selection-epochs", type=int, default=None)
    demo.add_argument("--out", default=None, help="output folder (default results/demo-<dataset>)")
    demo.add_argument("--data-dir", default=None)
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--threads", type=int, default=1,
                      help="torch CPU threads (default 1: these small networks run fastest on one thread)")
    demo.set_defaults(run=cmd_demo)

    _add_experiment_parser(sub)
    return parser


def cmd_demo(args):
    import torch

    from .demo import run_demo
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    options = {k: v for k, v in dict(model=args.model, steps=args.steps, selection_epochs=args.selection_epochs,
                                      out_dir=args.out, data_dir=args.data_dir).items() if v is not None}
    if args.fractions is not None:
        options["fractions"] = _float_list(args.fractions, "--fractions")
    run_demo(dataset=args.dataset, methods=args.methods.split(","), seeds=_int_list(args.seeds, "--seeds"),
             device=args.device, **options)


def _float_list(text, flag):
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"lcmat: {flag}: expected comma-separated numbers, got {text!r}")


def _int_list(text, flag):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"lcmat: {flag}: expected comma-separated integers, got {text!r}")


def _add_experiment_parser(sub):
    from .experiment import PRESETS

    exp = sub.add_parser(
        "experiment", help="pre-train, select with every method and fraction, train on each coreset",
        description="Per seed: pre-train a selection model (cached), select a coreset with every method and "
                    "fraction, train a fresh network on each and record test accuracy. Writes results.csv "
                    "(one row per dataset, model, method, fraction, seed), summary.md and accuracy.png "
                    "into --out.")
    exp.add_argument("--preset", choices=sorted(PRESETS),
                     help="paper: CIFAR-10, ResNet-18, 10 selection epochs, 200 epochs per coreset, 5 seeds "
                          "(GPU); cpu: Fashion-MNIST, LeNet, 10 selection epochs, 50 epochs per coreset at "
                          "lr 0.05, 3 seeds; cpu-steps: as cpu but the step budget (300 SGD steps per coreset "
                          "whatever its size). Explicit options override the preset's values")
    exp.add_argument("--dataset", help="mnist, fashion-mnist, emnist-letters, cifar10 or digits")
    exp.add_argument("--model", help="resnet18, convnet (ConvNet-3), lenet or mlp")
    exp.add_argument("--model-option", action="append", default=[], metavar="NAME=VALUE",
                     help="model constructor option, e.g. width=32 for convnet (repeatable)")
    exp.add_argument("--selection-model",
                     help="the network pre-trained to select, when not --model (selection across architectures)")
    exp.add_argument("--selection-model-option", action="append", default=[], metavar="NAME=VALUE",
                     help="constructor option of --selection-model (repeatable)")
    exp.add_argument("--methods", help="comma-separated methods, 'all', or variants such as lcmat:rho=1, "
                                       "and 'full' (the whole training set, once per seed: the ceiling) "
                                       "(default: all,full); the condensation methods lcmat-c, dc, dsa, dm "
                                       "run as rows where a fraction gives every class one number of images")
    exp.add_argument("--option", action="append", default=[], metavar="METHOD.NAME=VALUE",
                     help="a method option, e.g. lcmat.rho=1 or fdmat.lam=20 (repeatable)")
    exp.add_argument("--fractions", help="comma-separated per-class fractions")
    exp.add_argument("--seeds", help="comma-separated seeds")
    exp.add_argument("--out", required=True, help="output folder")
    exp.add_argument("--resume", action="store_true", help="skip rows already in OUT/results.csv")
    exp.add_argument("--overwrite", action="store_true", help="start OUT/results.csv afresh")
    exp.add_argument("--steps", type=int,
                     help="the step-budget protocol: SGD steps per coreset whatever its size "
                          "(epochs = ceil(steps / batches per epoch)); not the papers' protocol")
    exp.add_argument("--epochs", type=int,
                     help="the papers' protocol (the default): epochs over every coreset (default 200)")
    exp.add_argument("--label-noise", type=float,
                     help="fraction of training labels replaced by another class, drawn uniformly (default 0; "
                          "the test split stays clean)")
    exp.add_argument("--imbalance", type=float,
                     help="long-tailed training set: ratio of the largest to the smallest class, exponential "
                          "profile (default 1: as stored)")
    exp.add_argument("--corruption-seed", type=int, help="seed of the label noise and imbalance draws (default 0)")
    exp.add_argument("--pool", type=int,
                     help="train and select on N training images per class, drawn once from --pool-seed "
                          "(the same pool for every method and seed; drawn before --imbalance/--label-noise, "
                          "which then act on it; default: the whole training split)")
    exp.add_argument("--pool-seed", type=int, help="seed of the --pool draw (default 0)")
    exp.add_argument("--selection-epochs", type=int, help="selection-model epochs")
    exp.add_argument("--evaluations", type=int,
                     help="test evaluations spread over each coreset training (default: every epoch)")
    exp.add_argument("--batch-size", type=int)
    exp.add_argument("--lr", type=float)
    exp.add_argument("--device", help="cpu or cuda (default: the preset's, else cuda when available)")
    exp.add_argument("--data-dir", help="folder of the offline datasets (default ../shared/data)")
    exp.add_argument("--backend", choices=["reference", "cpu", "cuda", "triton"], default=None,
                     help="kernel backend of the selectors (default: the fastest available)")
    exp.add_argument("--threads", type=int, help="torch CPU threads (torch.set_num_threads)")
    exp.add_argument("--summary-only", action="store_true",
                     help="only rewrite summary.md and accuracy.png from OUT/results.csv")
    exp.add_argument("--quiet", action="store_true", help="no progress bars")
    exp.set_defaults(run=cmd_experiment)


def _experiment_settings(args):
    """run_experiment's keyword arguments: the preset (or the defaults), then the explicit options."""
    import torch

    from .experiment import PRESETS
    from .methods import parse_model_option, parse_option

    settings = dict(selection_epochs=10, epochs=200, steps=None, seeds=(0, 1, 2),
                    fractions=(0.005, 0.01, 0.05, 0.1), batch_size=128, lr=0.1, evaluations=None,
                    device="cuda" if torch.cuda.is_available() else "cpu", methods="all,full")
    if args.preset:
        settings.update(PRESETS[args.preset])
    if args.epochs is not None and args.steps is not None:
        raise UsageError("lcmat experiment: give --epochs or --steps, not both")
    if args.epochs is not None:
        settings.update(epochs=args.epochs, steps=None)
    if args.steps is not None:
        settings.update(steps=args.steps)
    for name in ("dataset", "model", "methods", "selection_epochs", "evaluations", "batch_size", "lr",
                 "device", "backend", "label_noise", "imbalance", "corruption_seed", "selection_model", "pool",
                 "pool_seed"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.pool_seed is not None and args.pool is None:
        raise UsageError("lcmat experiment: --pool-seed needs --pool")
    if args.fractions is not None:
        settings["fractions"] = _float_list(args.fractions, "--fractions")
    if args.seeds is not None:
        settings["seeds"] = _int_list(args.seeds, "--seeds")
    for name in ("dataset", "model"):
        if not settings.get(name):
            raise UsageError(f"lcmat experiment: --{name} is required (or give a --preset)")
    method_options = {}
    for text in args.option:
        try:
            method, key, value = parse_option(text)
        except ValueError as err:
            raise UsageError(f"lcmat experiment: --{err}")
        method_options.setdefault(method, {})[key] = value
    try:
        model_options = dict(parse_model_option(text) for text in args.model_option)
        selection_options = dict(parse_model_option(text) for text in args.selection_model_option)
    except ValueError as err:
        raise UsageError(f"lcmat experiment: --{err}")
    if selection_options:
        if not settings.get("selection_model"):
            raise UsageError("lcmat experiment: --selection-model-option needs --selection-model")
        settings["selection_model_options"] = selection_options
    settings.update(method_options=method_options, model_options=model_options, data_dir=args.data_dir,
                    out_dir=args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    return settings


def cmd_experiment(args):
    from .experiment import run_experiment
    from .results import RESULTS_FILE, read_results, write_summary

    if args.summary_only:
        path = f"{args.out}/{RESULTS_FILE}"
        try:
            rows = read_results(path)
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(f"lcmat experiment: --out: {err}")
        for written in write_summary(rows, args.out):
            print(f"wrote {written}")
        return
    settings = _experiment_settings(args)
    from . import distributed  # distributed: ranks other than 0 write into a temporary folder
    settings, scratch = distributed.follower_settings(settings)
    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
    try:
        run_experiment(**settings)
    except (ValueError, FileNotFoundError, FloatingPointError, MemoryError) as err:
        raise UsageError(f"lcmat experiment: {err}")
    finally:
        if scratch:  # distributed
            import shutil
            shutil.rmtree(scratch, ignore_errors=True)


def main(argv=None):
    args = build_parser().parse_args(argv)
    from . import distributed  # distributed: join the group torchrun describes (WORLD_SIZE > 1)
    joined = distributed.init_from_env()
    try:
        args.run(args)
    except UsageError as err:
        print(err.message, file=sys.stderr)
        raise
    finally:
        if joined:  # distributed
            distributed.dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
