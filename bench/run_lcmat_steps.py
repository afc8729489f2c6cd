"""Where one class of LCMat-S spends its time, step by step, backends side by side; and the whole
CIFAR-10-shaped selection per backend.

Class 0 of the CIFAR-10-shaped synthetic set of run_csrc.py (n_c = 5,000, D = 512, C = 10,
K = 100, k_c = 500, rho = 1), warm (after one untimed call), median of --reps runs per step:

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive python bench/run_lcmat_steps.py --reps 3
    python bench/run_lcmat_steps.py --device cuda --whole     # reference (PyTorch on the GPU),
                                                                # cuda and triton, same tensors

Every backend gets the same tensors on --device. --whole adds LCMat(fraction=0.1).select_features
on all N = 50,000 rows per backend (median of --reps, after one untimed run).
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from run_csrc import lcmat_data  # noqa: E402

import lcmat  # noqa: E402
from lcmat import algorithms, ops  # noqa: E402


def median_seconds(fn, reps, device):
    def once():
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once()
    return statistics.median(once() for _ in range(reps))


def default_backends(device):
    wanted = ("reference", "cpu") if device.type == "cpu" else ("reference", "cuda", "triton")
    return [b for b in wanted if b in ops.available_backends()]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backends", default=None, help="comma-separated; the first is the baseline")
    parser.add_argument("--whole", action="store_true", help="also time the whole selection per backend")
    args = parser.parse_args()
    device = torch.device(args.device)
    backends = args.backends.split(",") if args.backends else default_backends(device)
    H, Z, y = (t.to(device) for t in lcmat_data(50_000, 10, 512))
    idx = (y == 0).nonzero().squeeze(1)
    h, z, labels = H[idx].contiguous(), Z[idx].contiguous(), y[idx]
    k = round(0.1 * len(idx))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"{where}, n_c = {len(idx)}, torch {torch.__version__}, backends {backends}\n")
    base = backends[0]
    print("| step | " + " | ".join(f"{b} (s)" for b in backends) + " | " +
          " | ".join(f"{b} vs {base}" for b in backends[1:]) + " |")
    print("|---|" + "---:|" * (2 * len(backends) - 1))
    e, q = ops.last_layer_factors(z, labels, backend="reference")
    coords = algorithms.top_variance_coords(h, q, 100, backend="reference")
    dist = ops.lcmat_distance(h, e, q, coords, 1.0, backend="reference")
    steps = [
        ("top-K-variance coordinates", lambda b: algorithms.top_variance_coords(h, q, 100, backend=b)),
        ("distance block (Gram GEMM, L1, sqrt)", lambda b: ops.lcmat_distance(h, e, q, coords, 1.0, backend=b)),
        ("lazy greedy, k_c = 500", lambda b: ops.facility_location_greedy(dist, k, None, lazy=True, backend=b)),
    ]
    totals = dict.fromkeys(backends, 0.0)
    for name, step in steps:
        times = {b: median_seconds(lambda: step(b), args.reps, device) for b in backends}
        for b in backends:
            totals[b] += times[b]
        print(f"| {name} | " + " | ".join(f"{times[b]:.4f}" for b in backends) + " | " +
              " | ".join(f"{times[base] / times[b]:.1f}x" for b in backends[1:]) + " |", flush=True)
    print("| **sum** | " + " | ".join(f"{totals[b]:.3f}" for b in backends) + " | " +
          " | ".join(f"{totals[base] / totals[b]:.1f}x" for b in backends[1:]) + " |")
    if args.whole:
        print(f"\nwhole set (LCMat(fraction=0.1).select_features, N = {len(y)}), median of {args.reps}:")
        whole = {}
        for b in backends:
            selector = lcmat.LCMat(fraction=0.1, backend=b)
            whole[b] = median_seconds(lambda: selector.select_features(embeddings=H, logits=Z, labels=y),
                                      args.reps, device)
            print(f"  {b}: {whole[b]:.3f} s" + (f", {whole[base] / whole[b]:.1f}x vs {base}" if b != base else ""),
                  flush=True)


if __name__ == "__main__":
    main()
