"""The `lcmat` command: `select`, `methods`, `demo`."""
import argparse
import inspect
import sys
import time

import numpy as np

from .selectors import METHODS

# Constructor arguments that are not method options on the command line.
_COMMON = {"self", "fraction", "balance", "seed", "backend", "progress", "dtype"}


def method_options(cls):
    """{name: default} of a selector's own options."""
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if k not in _COMMON}


def _flag(name):
    return "--" + name.replace("_", "-")


def _parse_value(text, default):
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


def _all_options():
    options = {}
    for cls in METHODS.values():
        options.update(method_options(cls))
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
        opts = ", ".join(f"{_flag(k)} {v}" for k, v in method_options(cls).items())
        print(f"{name:<18} {needs:<22} {opts}")
        print(f"{'':<18} {summary(cls.__doc__)}")
    print("\nEvery method also takes --fraction, --balance/--no-balance, --seed, --backend.")


def _load_features(path):
    try:
        f = np.load(path)
    except FileNotFoundError:
        raise SystemExit(f"lcmat select: --features: no such file {path!r}")
    if "labels" not in f:
        raise SystemExit(f"lcmat select: --features: {path!r} has no 'labels' array (has {list(f.keys())})")
    return {k: f[k] for k in f.keys()}


def cmd_select(args):
    cls = METHODS[args.method]
    allowed = method_options(cls)
    options = {}
    for name, default in _all_options().items():
        value = getattr(args, name)
        if value is None:
            continue
        if name not in allowed:
            raise SystemExit(f"lcmat select: {_flag(name)} is not an option of {args.method} "
                             f"(its options: {', '.join(map(_flag, allowed)) or 'none'})")
        options[name] = _parse_value(value, allowed[name])
    feats = _load_features(args.features)
    extra = {"forgetting": feats["forgetting"]} if args.method == "forgetting" and "forgetting" in feats else {}
    selector = cls(fraction=args.fraction, balance=args.balance, seed=args.seed, backend=args.backend,
                   progress=not args.quiet, **options)
    start = time.perf_counter()
    try:
        coreset = selector.select_features(embeddings=feats.get("embeddings"), logits=feats.get("logits"),
                                           labels=feats["labels"], **extra)
    except ValueError as err:
        raise SystemExit(f"lcmat select: {err}")
    seconds = time.perf_counter() - start
    coreset.save(args.out)
    print_summary(coreset, feats["labels"], seconds, args.out)


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

    sel = sub.add_parser("select", help="select a coreset from a features file (.npz)")
    sel.add_argument("--method", required=True, choices=sorted(METHODS))
    sel.add_argument("--fraction", type=float, required=True)
    sel.add_argument("--features", required=True,
                     help=".npz with 'labels' and, as the method needs, 'embeddings' and 'logits'")
    sel.add_argument("--out", required=True, help="output .npz: indices, weights?, scores?")
    sel.add_argument("--balance", action=argparse.BooleanOptionalAction, default=True,
                     help="per-class budgets (default) or one global budget")
    sel.add_argument("--seed", type=int, default=0)
    sel.add_argument("--backend", choices=["reference", "cpu", "cuda", "triton"], default=None)
    sel.add_argument("--quiet", action="store_true", help="no progress bars")
    for name, default in _all_options().items():
        sel.add_argument(_flag(name), dest=name, default=None, metavar=type(default).__name__.upper(),
                         help=f"default {default}")
    sel.set_defaults(run=cmd_select)

    demo = sub.add_parser("demo", help="the main job on data that needs no download")
    demo.add_argument("--dataset", default="digits")
    demo.add_argument("--methods", default=",".join(METHODS))
    demo.add_argument("--fractions", default="0.01,0.1")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=cmd_demo)
    return parser


def cmd_demo(args):
    from .demo import run_demo
    run_demo(dataset=args.dataset, methods=args.methods.split(","),
             fractions=[float(f) for f in args.fractions.split(",")], seed=args.seed)


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
