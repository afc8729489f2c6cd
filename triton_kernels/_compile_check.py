"""Compile every Triton kernel of lcmat for NVIDIA GPUs on a machine without one.

The interpreter (TRITON_INTERPRET=1) checks the kernels' arithmetic but not that they compile:
this script runs each public function once on tiny CPU tensors with the launches intercepted
(nothing executes), then compiles every recorded launch through the real Triton compiler down to
a cubin for the chosen targets (ptxas ships with triton; no driver is needed), and checks each
config's shared memory against the target's limit. Usage:

    TRITON_INTERPRET=0 python -m lcmat.triton_kernels._compile_check [--all] [--arch 90 80]

Without --all only the first autotune config of each kernel variant is compiled (fast); with it,
every config. Exit status 1 if anything fails.
"""
import argparse
import os
import sys
import time

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("run with TRITON_INTERPRET=0: the interpreter replaces the compiler")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction, mangle_type  # noqa: E402

# Shared memory per block (opt-in maximum) per compute capability.
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}


def _record_launches(calls):
    """Patch the launchers so that launches are recorded, not run; returns the undo function."""
    records = []
    tuner_run, jit_run = Autotuner.run, JITFunction.run

    def fake_tuner_run(self, *args, **kwargs):
        self.best_config = self.configs[0]
        records.append((self.fn, self.configs, args, kwargs))

    def fake_jit_run(self, *args, grid, warmup, **kwargs):
        records.append((self, [triton.Config({})], args, kwargs))

    Autotuner.run, JITFunction.run = fake_tuner_run, fake_jit_run
    from . import _config
    interpret = _config.INTERPRET
    _config.INTERPRET = True  # let the argument checks accept CPU tensors
    try:
        for call in calls:
            before = len(records)
            try:
                call()
            except Exception:  # outputs of launches that never ran are garbage: fine after one
                if len(records) == before:
                    raise
    finally:
        Autotuner.run, JITFunction.run = tuner_run, jit_run
        _config.INTERPRET = interpret
    return records


def _sources(records, every_config):
    """(name, ASTSource, options) for each distinct recorded launch and config."""
    seen = set()
    for fn, configs, args, kwargs in records:
        for config in (configs if every_config else configs[:1]):
            values = dict(zip(fn.arg_names, args))
            values.update(kwargs)
            values.update(config.kwargs)
            signature, constexprs = {}, {}
            for param in fn.params:
                value = values[param.name]
                if param.is_constexpr:
                    signature[param.name] = "constexpr"
                    constexprs[param.name] = value
                else:
                    signature[param.name] = mangle_type(value)
            options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
            key = (fn.__name__, tuple(sorted(signature.items())),
                   tuple(sorted((k, str(v)) for k, v in constexprs.items())),
                   tuple(sorted(options.items())))
            if key not in seen:
                seen.add(key)
                label = ", ".join(f"{k}={v}" for k, v in constexprs.items())
                yield f"{fn.__name__}[{label}, {options}]", ASTSource(fn, signature, constexprs), options


def _calls():
    """One small call of every public function, float32 and float64."""
    from lcmat import reference as R

    from . import (facility_location_greedy, fdmat_scores, gradient_distance, graph_cut_greedy,
                   hessian_diag_coords, lcmat_distance, log_determinant_greedy, pairwise_l1, prototype_cost,
                   sinkhorn_log_ragged)
    from .last_layer import (curvature_moments, last_layer_factors, last_layer_grad_norms)
    from .linear_grad_norms import linear_grad_norms_with
    calls = []
    for dtype in (torch.float32, torch.float64):
        z = torch.randn(7, 5, dtype=dtype)
        y = torch.arange(7) % 5
        h = torch.randn(7, 3, dtype=dtype)
        s = torch.rand(7, dtype=dtype)
        e, q = R.last_layer_factors(z, y)
        coords = torch.tensor([0, 6, 9])
        dist = torch.rand(7, 7, dtype=dtype)
        a, b = torch.rand(7, dtype=dtype), torch.rand(5, dtype=dtype)
        ro, co = torch.tensor([0, 3, 7]), torch.tensor([0, 2, 5])
        cost = torch.rand(3 * 2 + 4 * 3, dtype=dtype)
        A, G = torch.randn(2, 4, 3, dtype=dtype), torch.randn(2, 4, 5, dtype=dtype)
        calls += [
            lambda z=z, y=y: last_layer_factors(z, y),
            lambda h=h, z=z, y=y, s=s: last_layer_grad_norms(h, z, y, s),
            lambda h=h, q=q, s=s: curvature_moments(h, q, s),
            lambda d=dist: facility_location_greedy(d, 1),
            lambda h=h, e=e, s=s: gradient_distance(h, e, s),
            lambda h=h, e=e, q=q, c=coords, s=s: lcmat_distance(h, e, q, c, 0.1, s),
            lambda h=h, q=q, c=coords: hessian_diag_coords(h, q, c),
            lambda h=h: pairwise_l1(h),
            lambda a=a, b=b, c=cost: sinkhorn_log_ragged(a, b, ro, co, 1.0, cost=c, max_iter=2),
            lambda a=a, b=b, h=h, x=torch.randn(5, 3, dtype=dtype):
                sinkhorn_log_ragged(a, b, ro, co, 1.0, x=h, y=x, max_iter=2),
            lambda d=dtype: sinkhorn_log_ragged(torch.rand(600, dtype=d), torch.rand(5, dtype=d), [0, 600],
                                                [0, 5], 1.0, cost=torch.rand(3000, dtype=d), max_iter=2),
            lambda h=h, m=h[:2]: prototype_cost(h, m),
            lambda d=dist, a=a: fdmat_scores(d, a, a, 1.0),
            lambda A=A, G=G: linear_grad_norms_with(A, G, True),
            lambda A=A, G=G: linear_grad_norms_with(A, G, False),
            lambda d=dist: graph_cut_greedy(d, 2),
            lambda d=dist: log_determinant_greedy(d @ d.T, 2),
        ]
    return calls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="compile every autotune config")
    parser.add_argument("--arch", type=int, nargs="+", default=[90], help="compute capabilities")
    args = parser.parse_args(argv)
    records = _record_launches(_calls())
    failures = 0
    count = 0
    start = time.time()
    for name, src, options in _sources(records, args.all):
        for arch in args.arch:
            count += 1
            try:
                compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
                shared = compiled.metadata.shared
                if shared > SHARED_LIMIT.get(arch, 101376):
                    raise RuntimeError(f"needs {shared} bytes of shared memory")
            except Exception as exc:  # report every failure, then fail at the end
                failures += 1
                print(f"FAIL sm_{arch} {name}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    print(f"compiled {count - failures}/{count} kernel variants in {time.time() - start:.1f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
