"""The batched greedy (ops.facility_location_greedy_batch: many classes in one call, on the CPU one
class per thread) against one call per class, side by side in one run.

Two shapes, synthetic features of run_csrc.py: CIFAR-10 (10 classes of 5,000, D = 512) and an
ImageNet-like slice (100 classes of 1,280, D = 512; the ImageNet class size, a tenth of its
classes). For each: the greedy alone on the classes' real LCMat-S distance blocks (k_c = 10 %),
then the whole LCMat(fraction=0.1).select_features with batching on (the default) and off
(LCMat.BATCH_BYTES = 0: one class at a time), asserting the same picks. Median of --reps,
interleaved, after one untimed run each:

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive python bench/run_greedy_batch.py --reps 5
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from run_csrc import lcmat_data  # noqa: E402

import lcmat  # noqa: E402
from lcmat import ops  # noqa: E402


def interleaved_medians(fns, reps):
    """{name: median seconds}, the functions run in turn so that machine noise hits all alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def class_blocks(H, Z, y, classes, selector):
    blocks, ks = [], []
    for c in range(classes):
        idx = (y == c).nonzero().squeeze(1)
        blocks.append(selector.block_distance(H[idx], Z[idx], y[idx]))
        ks.append(round(0.1 * len(idx)))
    return blocks, ks


def whole_selection(H, Z, y, batch_bytes):
    saved = lcmat.LCMat.BATCH_BYTES
    lcmat.LCMat.BATCH_BYTES = batch_bytes
    try:
        return lcmat.LCMat(fraction=0.1).select_features(embeddings=H, logits=Z, labels=y).indices
    finally:
        lcmat.LCMat.BATCH_BYTES = saved


def bench_shape(name, N, C, D, reps):
    H, Z, y = lcmat_data(N, C, D)
    blocks, ks = class_blocks(H, Z, y, C, lcmat.LCMat(fraction=0.1))

    def one_by_one():
        return [ops.facility_location_greedy(d, k) for d, k in zip(blocks, ks)]

    def batched():
        return ops.facility_location_greedy_batch(blocks, ks)

    assert all(torch.equal(a[0], b[0]) for a, b in zip(one_by_one(), batched()))
    greedy = interleaved_medians({"one by one": one_by_one, "batch": batched}, reps)
    del blocks
    assert np.array_equal(whole_selection(H, Z, y, 0), whole_selection(H, Z, y, lcmat.LCMat.BATCH_BYTES))
    whole = interleaved_medians({"one by one": lambda: whole_selection(H, Z, y, 0),
                                 "batch": lambda: whole_selection(H, Z, y, lcmat.LCMat.BATCH_BYTES)}, reps)
    for what, t in (("greedy alone, all classes", greedy), ("whole LCMat-S selection", whole)):
        print(f"| {name} | {what} | {t['one by one']:.3f} | {t['batch']:.3f} | "
              f"{t['one by one'] / t['batch']:.2f}x |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, backend "
          f"{ops.resolve('facility_location_greedy_batch', None, torch.zeros(1))[0]}, median of {args.reps}\n")
    print("| shape | what | one class at a time (s) | batched (s) | speed-up |")
    print("|---|---|---:|---:|---:|", flush=True)
    bench_shape("CIFAR-10: 10 x 5,000", 50_000, 10, 512, args.reps)
    bench_shape("ImageNet-like: 100 x 1,280", 128_000, 100, 512, args.reps)


if __name__ == "__main__":
    main()
