"""LCMat-S and FDMat at ImageNet-1k shape on precomputed features: time and peak memory.

    OMP_WAIT_POLICY=passive python bench/run_imagenet_shape.py --n 1281167 --classes 1000 --dim 512
    python bench/run_imagenet_shape.py --device cuda --backend cuda     # or --backend triton

Synthetic post-ReLU embeddings and logits of that shape (float32: 2.6 GB + 5.1 GB) are made in
chunks; each method then selects `fraction` of every class. Prints seconds and the process's
peak resident memory after each step, where LCMat-S spends its time per class, and the pruned
coordinate search against the moments of every row on one class.
"""
import argparse
import resource
import time

import numpy as np
import torch

import lcmat
from lcmat import algorithms, ops, reference


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory():
    """The process's peak resident memory, and the GPU's peak allocation where there is one."""
    text = f"peak RSS {peak_rss_gb():.2f} GB"
    if torch.cuda.is_available():
        text += f", peak GPU memory {torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GB"
    return text


def synthetic_features(n, classes, dim, seed=0, chunk=65536, device="cpu"):
    g = torch.Generator(device=device).manual_seed(seed)
    y = torch.arange(n, device=device) % classes
    centers = torch.randn(classes, dim, generator=g, device=device)
    weight = 2.0 * centers / dim ** 0.5
    H = torch.empty(n, dim, device=device)
    Z = torch.empty(n, classes, device=device)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        noise = torch.randn(stop - start, dim, generator=g, device=device)
        H[start:stop] = (centers[y[start:stop]] + 1.5 * noise).relu_()
        torch.matmul(H[start:stop], weight.T, out=Z[start:stop])
    return H, Z, y


def profile_one_class(H, Z, y, fraction, backend):
    """Seconds of each LCMat-S step on class 0."""
    idx = (y == 0).nonzero().squeeze(1)
    h, z, yc = H[idx], Z[idx], y[idx]
    k = round(fraction * len(idx))
    steps = {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        synchronize()
        steps[name] = time.perf_counter() - start
        return out

    e, q = timed("factors", lambda: ops.last_layer_factors(z, yc, backend=backend))
    coords = timed("coordinates", lambda: algorithms.top_variance_coords(h, q, 100, backend=backend))
    dist = timed("distances", lambda: ops.lcmat_distance(h, e, q, coords, 0.01, backend=backend))
    timed("greedy", lambda: ops.facility_location_greedy(dist, k, backend=backend))
    return len(idx), steps


def median_seconds(fn, reps=5):
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def compare_coordinate_searches(H, Z, y, backend):
    """On class 0, side by side: the pruned search (lcmat.ops) against the moments of every row."""
    idx = (y == 0).nonzero().squeeze(1)
    h = H[idx]
    _, q = ops.last_layer_factors(Z[idx], y[idx], backend=backend)
    rows = []

    def counted(h_, q_rows, s):
        rows.append(q_rows.shape[1])
        return ops.curvature_moments(h_, q_rows, s, backend=backend)

    def full():
        return reference.coords_by_variance(*ops.curvature_moments(h, q, None, backend=backend), 100)

    pruned = algorithms.top_variance_coords_pruned(h, q, 100, None, counted)
    assert torch.equal(pruned, full()), "the pruned search must pick the same coordinates"
    t_pruned = median_seconds(lambda: algorithms.top_variance_coords(h, q, 100, backend=backend))
    t_full = median_seconds(full)
    return sum(rows), q.shape[1], t_pruned, t_full


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1281167)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--methods", default="lcmat,fdmat")
    parser.add_argument("--device", default="cpu", help="where the features are made and selected from")
    args = parser.parse_args()

    start = time.perf_counter()
    H, Z, y = synthetic_features(args.n, args.classes, args.dim, device=args.device)
    synchronize()
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"features N={args.n} C={args.classes} D={args.dim} on {args.device}: {time.perf_counter() - start:.1f} s, "
          f"{peak_memory()}, backends {ops.available_backends()}, {where}")
    n_c, steps = profile_one_class(H, Z, y, args.fraction, args.backend)
    print(f"LCMat-S, one class (n_c={n_c}): " + ", ".join(f"{k} {v:.3f} s" for k, v in steps.items()))
    rows, classes, t_pruned, t_full = compare_coordinate_searches(H, Z, y, args.backend)
    print(f"coordinates of class 0, median of 5: pruned search {t_pruned:.4f} s ({rows} of {classes} weight rows), "
          f"every row {t_full:.4f} s, ratio {t_full / t_pruned:.1f}x")
    for name in args.methods.split(","):
        selector = lcmat.get_method(name, fraction=args.fraction, backend=args.backend, progress=True)
        start = time.perf_counter()
        cs = selector.select_features(embeddings=H, logits=Z, labels=y)
        synchronize()
        print(f"{name}: {len(cs)} samples in {time.perf_counter() - start:.1f} s, {peak_memory()}" +
              (f", OT {selector.last_ot}" if hasattr(selector, "last_ot") else ""))


if __name__ == "__main__":
    main()
