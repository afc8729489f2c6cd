"""`lcmat demo`: pre-train a small network, select coresets with every method, train on each,
and print test accuracy and selection time. Runs in a few minutes on 2 CPU cores."""
import math
import time

import numpy as np

from .data import load_dataset
from .models import get_model
from .selectors import get_method
from .train import extract_features, train_on_coreset, train_selection_model

CORESET_STEPS = 300  # SGD steps on every coreset, whatever its size, so fractions compare fairly


def run_demo(dataset="digits", methods=None, fractions=(0.01, 0.1), seed=0, device="cpu",
             selection_epochs=5):
    train, test = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    shape = train[0][0].shape
    model_name = "mlp" if dataset == "digits" else "convnet"

    def build():
        return get_model(model_name, len(train.classes), shape[0], shape[1])

    print(f"dataset {dataset}: {len(train)} training and {len(test)} test images, "
          f"{len(train.classes)} classes; model {model_name}")
    model, stats = train_selection_model(build, train, epochs=selection_epochs, seed=seed, device=device)
    H, Z, y = extract_features(model, train, device=device)
    print(f"selection model: {selection_epochs} epochs in {stats['seconds']:.1f} s, "
          f"train accuracy {stats['epoch_acc'][-1]:.1f} %")
    rows = []
    for fraction in fractions:
        for name in methods:
            selector = get_method(name, fraction=fraction, seed=seed, progress=False)
            extra = {"forgetting": stats["forgetting"]} if name == "forgetting" else {}
            coreset = selector.select_features(embeddings=H, logits=Z, labels=y, **extra)
            epochs = max(1, math.ceil(CORESET_STEPS / math.ceil(len(coreset) / 128)))
            result = train_on_coreset(build, train, coreset.indices, coreset.weights, epochs=epochs,
                                      test_dataset=test, seed=seed, device=device,
                                      eval_every=max(1, epochs // 10), progress=False)
            rows.append((fraction, name, len(coreset), result["final_acc"], result["best_acc"],
                         coreset.seconds))
            print(f"  {fraction:>6.1%} {name:<17} {len(coreset):>5} samples  "
                  f"test acc {result['final_acc']:5.1f} %  select {coreset.seconds * 1000:7.1f} ms")
    print_table(rows)
    return rows


def print_table(rows):
    print("\n| fraction | method | samples | final test acc (%) | best test acc (%) | selection (ms) |")
    print("|---:|---|---:|---:|---:|---:|")
    for fraction, name, n, final, best, seconds in rows:
        print(f"| {fraction:.1%} | {name} | {n} | {final:.1f} | {best:.1f} | {seconds * 1000:.1f} |")
