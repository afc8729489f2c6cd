"""The Triton kernels (lcmat.triton_kernels, backend "triton") against the reference on one GPU.

Prints markdown tables. Sections (pick with --only):
    kernels   every kernel at ImageNet-like shapes: median milliseconds of the reference (PyTorch
              on the same GPU) and of the Triton kernel, timed side by side in one run, the
              speed-up, the achieved bandwidth (memory-bound kernels) or FLOP/s (compute-bound
              ones) as a fraction of the device's peak, and the largest difference to the reference
    sinkhorn  the batched Sinkhorn on per-class problems shaped like ImageNet (--problems problems
              of about 1,281 x 128, features D = 512), a fixed number of iterations (tol = 0) so
              that every solver does the same work: Triton (stored cost and features), the CUDA
              backend (lcmat.ops, backend="cuda", when built), POT's ot.bregman.sinkhorn_log in a
              loop on the GPU and the reference loop (both on the first --pot-problems problems,
              scaled up linearly), side by side in one run

    python bench/run_triton.py                   # needs CUDA: without it, says so and exits 0
    python bench/run_triton.py --interpret       # tiny shapes on the CPU interpreter: runs the
                                                   # whole script and checks agreement; its
                                                   # timings mean nothing
    python bench/run_triton.py --only sinkhorn --problems 1000 --iters 50
"""
import argparse
import os
import platform
import statistics
import sys
import time

# The interpreter must be chosen before triton is imported.
if "--interpret" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

# Peaks per device (dense, no sparsity): HBM bytes/s, FP32 (non-tensor) and FP64 (tensor) FLOP/s.
PEAKS = {
    "H100": {"bytes": 3.35e12, "fp32": 67e12, "fp64": 67e12},
    "H200": {"bytes": 4.8e12, "fp32": 67e12, "fp64": 67e12},
    "A100": {"bytes": 2.04e12, "fp32": 19.5e12, "fp64": 19.5e12},
}


def device_peaks(device):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAKS.items():
        if key in name:
            return peaks
    return None


class Timer:
    """Median milliseconds: triton.testing.do_bench on a GPU, wall-clock medians on the CPU."""

    def __init__(self, device, reps):
        self.device, self.reps = device, reps

    def __call__(self, fn):
        if self.device.type == "cuda":
            from triton.testing import do_bench
            return do_bench(fn, warmup=25, rep=max(100, 20 * self.reps), return_mode="median")
        fn()  # warm-up (first call compiles / autotunes)
        times = []
        for _ in range(self.reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)

    def long(self, fn):
        """For multi-second calls: synchronised wall clock, median of `reps` runs after a warm-up."""
        fn()
        times = []
        for _ in range(max(1, self.reps)):
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)


def max_diff(ours, ref):
    """Largest |ours - ref| relative to the largest |ref|, over the floating outputs."""
    ours = ours if isinstance(ours, (tuple, list)) else (ours,)
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    diffs = [((o.double() - r.double()).abs().max() / r.double().abs().max().clamp_min(1e-300)).item()
             for o, r in zip(ours, ref) if isinstance(o, torch.Tensor) and o.is_floating_point() and o.numel()]
    return max(diffs) if diffs else 0.0


def kernel_row(timer, peaks, name, shape, ref_fn, tri_fn, work, kind):
    """One table row; `work` is bytes moved (kind "bytes") or FLOPs (kind "fp32"/"fp64")."""
    diff = max_diff(tri_fn(), ref_fn())
    ref_ms, tri_ms = timer(ref_fn), timer(tri_fn)
    rate = work / (tri_ms * 1e-3)
    unit = "GB/s" if kind == "bytes" else "GFLOP/s"
    achieved = f"{rate / 1e9:,.0f} {unit}"
    frac = f"{100 * rate / peaks[kind]:.1f} % of {kind} peak" if peaks else "n/a"
    print(f"| {name} | {shape} | {ref_ms:.3f} | {tri_ms:.3f} | {ref_ms / tri_ms:.1f}x | {achieved} | "
          f"{frac} | {diff:.1e} |", flush=True)


def class_data(n, C, D, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(n, D, generator=g).relu()
    Z = 2 * torch.randn(n, C, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    Z[torch.arange(n), y] += 3 * torch.rand(n, generator=g)
    return H.to(device), Z.to(device), y.to(device)


def bench_kernels(timer, peaks, device, tiny):
    import lcmat.reference as R
    import lcmat.triton_kernels as T
    from lcmat.reference import linear_grad_norms as RL
    from lcmat.triton_kernels.linear_grad_norms import use_ghost
    s = dict(N=64, C=10, D=16, n=40, K=8, k=5, T=4, d_in=16, d_out=24, Tm=40, dm=8) if tiny else \
        dict(N=262_144, C=1000, D=512, n=1300, K=100, k=130, T=128, d_in=768, d_out=3072, Tm=2048, dm=64)
    N, C, D, n, K, k = s["N"], s["C"], s["D"], s["n"], s["K"], s["k"]
    print(f"\n### Triton kernels against the reference on {device_name(device)}\n")
    print("| kernel | shape | reference (ms) | triton (ms) | speed-up | achieved | of peak | max rel. diff |")
    print("|---|---|---:|---:|---:|---:|---:|---:|", flush=True)
    H, Z, y = class_data(N, C, D, device)
    row = lambda *a: kernel_row(timer, peaks, *a)  # noqa: E731
    row("last_layer_factors", f"N={N}, C={C}", lambda: R.last_layer_factors(Z, y),
        lambda: T.last_layer_factors(Z, y), N * C * 12 + N * 8, "bytes")
    row("last_layer_grad_norms", f"N={N}, C={C}, D={D}", lambda: R.last_layer_grad_norms(H, Z, y),
        lambda: T.last_layer_grad_norms(H, Z, y), N * (C + D) * 4 + N * 16, "bytes")
    h, yc = H[:n], y[:n]
    e, q = R.last_layer_factors(Z[:n], yc)
    row("curvature_moments (float64)", f"n={n}, C={C}, D={D}", lambda: R.curvature_moments(h, q),
        lambda: T.curvature_moments(h, q), 4 * n * C * D, "fp64")
    coords = R.top_variance_coords(h, q, K)
    row("gradient_distance", f"n={n}, C={C}, D={D}", lambda: R.gradient_distance(h, e),
        lambda: T.gradient_distance(h, e), 2 * n * n * (C + D), "fp32")
    hd = R.hessian_diag_coords(h, q, coords)
    row("pairwise_l1", f"{n} x {K}", lambda: R.pairwise_l1(hd), lambda: T.pairwise_l1(hd),
        3 * n * n * K, "fp32")
    row("lcmat_distance", f"n={n}, K={K}", lambda: R.lcmat_distance(h, e, q, coords, 0.01),
        lambda: T.lcmat_distance(h, e, q, coords, 0.01), 2 * n * n * (C + D) + 3 * n * n * K, "fp32")
    dist = R.lcmat_distance(h.double(), e.double(), q.double(), coords, 0.01)
    ref_picks = R.facility_location_greedy(dist, k, lazy=True)[0]
    same = torch.equal(T.facility_location_greedy(dist, k)[0], ref_picks)
    row(f"facility_location_greedy (float64, same picks: {same})", f"n={n}, k={k}",
        lambda: R.facility_location_greedy(dist, k, lazy=True), lambda: T.facility_location_greedy(dist, k),
        k * n * n * 8, "bytes")
    x = torch.nn.functional.normalize(H, dim=1)
    mu = R.class_prototypes(x, y, C)
    row("prototype_cost", f"N={N}, C={C}, D={D}", lambda: R.prototype_cost(x, mu),
        lambda: T.prototype_cost(x, mu), 2 * N * C * D, "fp32")
    M = R.prototype_cost(x, mu)
    f, g = 0.01 * torch.randn(N, device=device), 0.01 * torch.randn(C, device=device)
    row("fdmat_scores", f"N={N}, C={C}", lambda: R.fdmat_scores(M, f, g, 0.1),
        lambda: T.fdmat_scores(M, f, g, 0.1), N * C * 4 + N * 8, "bytes")
    for t, d_in, d_out, b in ((s["T"], s["d_in"], s["d_out"], 32 if not tiny else 3),
                              (s["Tm"], s["dm"], s["dm"], 8 if not tiny else 2)):
        A = torch.randn(b, t, d_in, device=device)
        G = torch.randn(b, t, d_out, device=device)
        ghost = use_ghost(t, d_in, d_out)
        flops = 2 * b * t * t * (d_in + d_out) if ghost else 2 * b * t * d_in * d_out
        row(f"linear_grad_norms ({'ghost' if ghost else 'materialised'})",
            f"N={b}, T={t}, {d_in}->{d_out}", lambda: RL.linear_grad_norms(A, G),
            lambda: T.linear_grad_norms(A, G), flops, "fp32")


def imagenet_like_batch(problems, n, m, D, device, seed=0):
    """`problems` classes of about n samples each against m prototypes, unit-norm features."""
    g = torch.Generator().manual_seed(seed)
    ns = [n - (p % 7) * 3 for p in range(problems)]
    ms = [m] * problems
    x = torch.nn.functional.normalize(torch.randn(sum(ns), D, generator=g).relu(), dim=1)
    y = torch.nn.functional.normalize(torch.randn(sum(ms), D, generator=g).relu(), dim=1)
    ro = torch.tensor([0] + ns).cumsum(0)
    co = torch.tensor([0] + ms).cumsum(0)
    a = torch.ones(sum(ns))
    b = torch.cat([torch.full((mm,), nn / mm) for nn, mm in zip(ns, ms)])
    return [t.to(device) for t in (x, y, a, b)] + [ro.to(device), co.to(device), ns, ms]


def bench_sinkhorn(timer, peaks, device, problems, pot_problems, iters, reg, tiny):
    import lcmat.reference as R
    import lcmat.triton_kernels as T
    n, m, D = (20, 8, 16) if tiny else (1281, 128, 512)
    x, y, a, b, ro, co, ns, ms = imagenet_like_batch(problems, n, m, D, device)
    cost = torch.cat([R.squared_euclidean_cost(x[ro[p]:ro[p + 1]], y[co[p]:co[p + 1]]).reshape(-1)
                      for p in range(problems)])
    entries = sum(nn * mm for nn, mm in zip(ns, ms))
    pot_problems = min(pot_problems, problems)
    scale = problems / pot_problems
    print(f"\n### Batched Sinkhorn, {problems} problems of about {n} x {m}, D = {D}, reg = {reg}, "
          f"{iters} iterations (tol = 0), float32, on {device_name(device)}\n")
    print("| solver | problems run | ms (for all problems) | ms / iteration | achieved | of peak | "
          "max diff of f vs reference |")
    print("|---|---:|---:|---:|---:|---:|---:|", flush=True)
    opts = dict(max_iter=iters, tol=0.0)
    sub = int(ro[pot_problems]), int(co[pot_problems])
    sub_entries = sum(nn * mm for nn, mm in zip(ns[:pot_problems], ms[:pot_problems]))
    ref = R.sinkhorn_log_ragged(a[:sub[0]], b[:sub[1]], ro[:pot_problems + 1], co[:pot_problems + 1],
                                reg, cost=cost[:sub_entries], **opts)

    def report(name, ms_all, run_problems, bytes_or_flops, kind, f):
        per_it = ms_all / iters
        if bytes_or_flops:
            rate = bytes_or_flops * iters / (ms_all * 1e-3)
            achieved = f"{rate / 1e9:,.0f} {'GB/s' if kind == 'bytes' else 'GFLOP/s'}"
            frac = f"{100 * rate / peaks[kind]:.1f} % of {kind}" if peaks else "n/a"
        else:
            achieved = frac = ""
        diff = f"{(f[:sub[0]] - ref[0]).abs().max().item():.1e}" if f is not None else ""
        note = "" if run_problems == problems else f" (x{scale:.0f} from {run_problems})"
        print(f"| {name} | {run_problems} | {ms_all:,.1f}{note} | {per_it:.3f} | {achieved} | {frac} | "
              f"{diff} |", flush=True)

    # Triton: stored cost (each half-iteration reads every cost entry once) and features (cost
    # recomputed per tile: 2 GEMM-like passes of 2 n m D FLOPs per iteration).
    out = T.sinkhorn_log_ragged(a, b, ro, co, reg, cost=cost, **opts)
    ms_t = timer.long(lambda: T.sinkhorn_log_ragged(a, b, ro, co, reg, cost=cost, **opts))
    report("triton, stored cost", ms_t, problems, 2 * entries * 4, "bytes", out[0])
    out = T.sinkhorn_log_ragged(a, b, ro, co, reg, x=x, y=y, **opts)
    ms_t = timer.long(lambda: T.sinkhorn_log_ragged(a, b, ro, co, reg, x=x, y=y, **opts))
    report("triton, features", ms_t, problems, 2 * 2 * entries * D, "fp32", out[0])
    try:
        from lcmat import ops
        backend = "cuda" if device.type == "cuda" else "cpu"
        ops.resolve("sinkhorn_log_ragged", backend, a)
        run = lambda: ops.sinkhorn_log_ragged(a, b, ro, co, reg, cost=cost, **opts, backend=backend)  # noqa: E731
        out = run()
        report(f"lcmat backend {backend!r}, stored cost", timer.long(run), problems, 2 * entries * 4, "bytes",
               out[0])
    except Exception as exc:  # not built here
        print(f"| lcmat compiled backend | - | not available: {type(exc).__name__} | | | | |", flush=True)
    try:
        import ot

        def pot_loop():
            plans = []
            for p in range(pot_problems):
                r0, r1, c0, c1 = int(ro[p]), int(ro[p + 1]), int(co[p]), int(co[p + 1])
                M = cost[sum(nn * mm for nn, mm in zip(ns[:p], ms[:p])):][:(r1 - r0) * (c1 - c0)]
                plans.append(ot.bregman.sinkhorn_log(a[r0:r1], b[c0:c1], M.view(r1 - r0, c1 - c0), reg,
                                                     numItermax=iters, stopThr=0.0, warn=False))
            return plans
        report("POT ot.bregman.sinkhorn_log, loop", timer.long(pot_loop) * scale, pot_problems,
               2 * entries * 4, "bytes", None)
    except ImportError:
        print("| POT | - | not installed | | | | |")
    ref_run = lambda: R.sinkhorn_log_ragged(a[:sub[0]], b[:sub[1]], ro[:pot_problems + 1],  # noqa: E731
                                            co[:pot_problems + 1], reg, cost=cost[:sub_entries], **opts)
    report("reference loop (lcmat.reference)", timer.long(ref_run) * scale, pot_problems,
           2 * entries * 4, "bytes", ref[0])
    # Until convergence: the device-side stopping rule, per problem.
    out = T.sinkhorn_log_ragged(a, b, ro, co, reg, cost=cost, max_iter=1000, tol=1e-6, check_every=1)
    it = out[2].double()
    print(f"\nUntil err <= 1e-6 (check every iteration, max 1000): iterations per problem "
          f"min {int(it.min())} / median {int(it.median())} / max {int(it.max())}; "
          f"{int((out[3] <= 1e-6).sum())} of {problems} converged.", flush=True)


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}), Triton interpreter"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interpret", action="store_true",
                        help="run tiny shapes on the CPU through TRITON_INTERPRET=1 (no GPU needed)")
    parser.add_argument("--only", choices=["kernels", "sinkhorn"], default=None)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--problems", type=int, default=1000)
    parser.add_argument("--pot-problems", type=int, default=100)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--reg", type=float, default=0.05)
    args = parser.parse_args()
    if not args.interpret and not torch.cuda.is_available():
        print("bench_triton: needs a CUDA device (none here). Run with --interpret for tiny shapes on "
              "the CPU interpreter.")
        return 0
    device = torch.device("cpu" if args.interpret else "cuda")
    tiny = args.interpret
    if tiny:
        args.problems, args.pot_problems, args.iters = min(args.problems, 4), min(args.pot_problems, 2), \
            min(args.iters, 5)
        args.reps = min(args.reps, 2)
    timer = Timer(device, args.reps)
    peaks = device_peaks(device)
    print(f"# bench_triton: {device_name(device)}; torch {torch.__version__}; "
          f"python {platform.python_version()}; reps {args.reps}")
    if peaks:
        print(f"Peaks used: HBM {peaks['bytes'] / 1e12:.2f} TB/s, FP32 {peaks['fp32'] / 1e12:.0f} TFLOP/s "
              f"(non-tensor), FP64 {peaks['fp64'] / 1e12:.0f} TFLOP/s (tensor)")
    if args.only in (None, "kernels"):
        bench_kernels(timer, peaks, device, tiny)
    if args.only in (None, "sinkhorn"):
        bench_sinkhorn(timer, peaks, device, args.problems, args.pot_problems, args.iters, args.reg, tiny)
    return 0


if __name__ == "__main__":
    sys.exit(main())
