"""CPU time of the claims study's coreset trainings and test evaluations, one thread.

    OMP_NUM_THREADS=1 LCMAT_DATA_DIR=../shared/data python bench/claims_cpu_times.py

Measures process CPU seconds (time.process_time) rather than wall time, so that the figures hold for
one otherwise idle core even when other jobs share the machine: per network, the CPU time of one
coreset-training epoch per image (2 epochs on 2,000 images of a pool of 1,000 per class, after a
warm-up call; crop + flip on CIFAR-10, as the study trains) and of one evaluation over the 10,000
test images. bench/results/claims/run_claims.sh's stage estimates (BENCHMARKS.md 4.4) are built from them.
"""
import time

import numpy as np
import torch

from lcmat.data import load_dataset
from lcmat.models import get_model
from lcmat.train import evaluate, train_on_coreset

NETWORKS = (("fashion-mnist", "lenet", {}), ("fashion-mnist", "mlp", {}), ("cifar10", "convnet", {"width": 32}),
            ("cifar10", "convnet", {"width": 16}))


def main():
    torch.set_num_threads(1)
    print("| network, data | coreset training, ms CPU per image-epoch (wall) | one test evaluation, s CPU |")
    print("|---|---:|---:|")
    for name, model, options in NETWORKS:
        train, test = load_dataset(name, "train", pool=1000, pool_seed=0), load_dataset(name, "test")
        augment = name == "cifar10"

        def build():
            return get_model(model, 10, train.in_channels, train.im_size, **options)

        indices = np.arange(0, len(train), 5)
        train_on_coreset(build, train, indices[:256], epochs=1, lr=0.05, augment=augment, progress=False)
        cpu, wall = time.process_time(), time.perf_counter()
        train_on_coreset(build, train, indices, epochs=2, lr=0.05, augment=augment, progress=False)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        net = build()
        evaluation = time.process_time()
        evaluate(net, test)
        evaluation = time.process_time() - evaluation
        label = model + "".join(f" {k}={v}" for k, v in options.items())
        per = 1000 / (2 * len(indices))
        print(f"| {label}, {name} | {cpu * per:.2f} ({wall * per:.2f}) | {evaluation:.1f} |", flush=True)


if __name__ == "__main__":
    main()
