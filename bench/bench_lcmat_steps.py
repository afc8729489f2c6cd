"""Where one class of LCMat-S spends its time, step by step, reference and cpu side by side.

Class 0 of the CIFAR-10-shaped synthetic set of bench_csrc.py (n_c = 5,000, D = 512, C = 10,
K = 100, k_c = 500, rho = 1), warm (after one untimed call), median of --reps runs per step:

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive python bench/bench_lcmat_steps.py --reps 3
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_csrc import lcmat_data  # noqa: E402

from lcmat import ops  # noqa: E402


def median_seconds(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    H, Z, y = lcmat_data(50_000, 10, 512)
    idx = (y == 0).nonzero().squeeze(1)
    h, z, labels = H[idx].contiguous(), Z[idx].contiguous(), y[idx]
    k = round(0.1 * len(idx))
    print(f"threads {torch.get_num_threads()}, n_c = {len(idx)}, torch {torch.__version__}\n")
    print("| step | reference (s) | cpu (s) | speed-up |")
    print("|---|---:|---:|---:|")
    totals = {"reference": 0.0, "cpu": 0.0}
    e, q = ops.last_layer_factors(z, labels, backend="reference")
    coords = ops.top_variance_coords(h, q, 100, backend="reference")
    dist = ops.lcmat_distance(h, e, q, coords, 1.0, backend="reference")
    steps = [
        ("top-K-variance coordinates", lambda b: ops.top_variance_coords(h, q, 100, backend=b)),
        ("distance block (Gram GEMM, L1, sqrt)", lambda b: ops.lcmat_distance(h, e, q, coords, 1.0, backend=b)),
        ("lazy greedy, k_c = 500", lambda b: ops.facility_location_greedy(dist, k, None, lazy=True, backend=b)),
    ]
    for name, step in steps:
        ref = median_seconds(lambda: step("reference"), args.reps)
        cpu = median_seconds(lambda: step("cpu"), args.reps)
        totals["reference"] += ref
        totals["cpu"] += cpu
        print(f"| {name} | {ref:.4f} | {cpu:.4f} | {ref / cpu:.1f}x |", flush=True)
    print(f"| **sum** | {totals['reference']:.3f} | {totals['cpu']:.3f} | "
          f"{totals['reference'] / totals['cpu']:.1f}x |")


if __name__ == "__main__":
    main()
