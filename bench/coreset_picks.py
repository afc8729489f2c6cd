"""What kind of samples does each method pick? Difficulty (and label noise) of the picks.

    python bench/coreset_picks.py --dataset fashion-mnist --model lenet --seed 0 --fraction 0.05 \
        --methods uniform,lcmat,lcmat:rho=1,uniform:coverage=True,lcmat:rho=1:coverage=True
    python bench/coreset_picks.py --dataset fashion-mnist --pool 1000 --label-noise 0.4 --fraction 0.05 \
        --methods uniform,fdmat,lcmat,herding,moderate

Uses the same cached selection model and features as `lcmat experiment` (same dataset, pool, corruption,
model, selection epochs and seed), selects with each method spec, and prints a markdown table: the share
of the picks that the selection model classifies as their (given) label, the median and 90th percentile
of their cross-entropy loss, and, on a training set with label noise, the share of the picks whose label
is wrong and the share the model classifies as their clean label, next to the same for the whole
training set ("pool").
"""
import argparse

import numpy as np
import torch
import torch.nn.functional as F

from lcmat.data import load_dataset
from lcmat.experiment import (SelectionFeatures, corruption_tag, format_model_label, pretrained_selection_model,
                              select_coreset)
from lcmat.methods import parse_methods, parse_model_option
from lcmat.models import get_model


def pick_stats(correct, loss, indices):
    """(% classified correctly, median loss, 90th percentile of the loss) over `indices`."""
    return 100.0 * correct[indices].mean(), np.median(loss[indices]), np.percentile(loss[indices], 90)


def mislabelled_share(labels, clean_labels, indices):
    """% of `indices` whose given label differs from the clean one (the label noise among the picks)."""
    return 100.0 * (np.asarray(labels)[indices] != np.asarray(clean_labels)[indices]).mean()


def clean_class_share(predictions, clean_labels, indices):
    """% of `indices` that the selection model assigns to their clean class."""
    return 100.0 * (np.asarray(predictions)[indices] == np.asarray(clean_labels)[indices]).mean()


def pick_table(rows, correct, loss, labels=None, clean_labels=None, predictions=None):
    """Markdown table of pick_stats per (label, indices) row; where clean labels differ from the given
    ones, also mislabelled_share and (given the selection model's `predictions`) the share of picks the
    model assigns to their clean class."""
    noisy = clean_labels is not None and bool((np.asarray(labels) != np.asarray(clean_labels)).any())
    head = "| picks of | classified as labelled | median loss | 90th percentile of the loss |"
    rule = "|---|---:|---:|---:|"
    if noisy:
        head, rule = head + " mislabelled |", rule + "---:|"
        if predictions is not None:
            head, rule = head + " classified as the clean label |", rule + "---:|"
    lines = [head, rule]
    for label, indices in rows:
        acc, median, p90 = pick_stats(correct, loss, indices)
        line = f"| {label} | {acc:.1f} % | {median:.3g} | {p90:.3g} |"
        if noisy:
            line += f" {mislabelled_share(labels, clean_labels, indices):.1f} % |"
            if predictions is not None:
                line += f" {clean_class_share(predictions, clean_labels, indices):.1f} % |"
        lines.append(line)
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--model-option", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--selection-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--methods", default="uniform,lcmat,lcmat:rho=1,uniform:coverage=True,"
                                             "lcmat:rho=1:coverage=True")
    parser.add_argument("--pool", type=int, default=None, help="images per class drawn first (as lcmat experiment)")
    parser.add_argument("--pool-seed", type=int, default=0)
    parser.add_argument("--label-noise", type=float, default=0.0)
    parser.add_argument("--imbalance", type=float, default=1.0)
    parser.add_argument("--corruption-seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model_options = dict(parse_model_option(text) for text in args.model_option)
    train = load_dataset(args.dataset, "train", args.data_dir, imbalance=args.imbalance,
                         label_noise=args.label_noise, corruption_seed=args.corruption_seed,
                         pool=args.pool, pool_seed=args.pool_seed)
    tag = corruption_tag(dict(train.corruption, **train.pool))

    def build():
        return get_model(args.model, train.num_classes, train.in_channels, train.im_size, **model_options)

    net, stats = pretrained_selection_model(train.name, format_model_label(args.model, model_options), build, train,
                                            args.selection_epochs, args.seed, "cpu", True, None, tag)
    features = SelectionFeatures(net, train, "cpu", True)
    _, logits, _ = features.eval_mode()
    labels = torch.as_tensor(train.targets)
    logits = torch.as_tensor(logits).float()
    predictions = logits.argmax(1).numpy()
    correct = predictions == labels.numpy()
    loss = F.cross_entropy(logits, labels, reduction="none").numpy()

    print(f"{train.name}{', ' + tag if tag else ''}, {args.model}, seed {args.seed}, selection model of "
          f"{args.selection_epochs} epochs, fraction {100 * args.fraction:g} %\n")
    rows = [("pool (all training samples)", np.arange(len(labels)))]
    for spec in parse_methods(args.methods):
        coreset, _ = select_coreset(spec, args.fraction, args.seed, train.targets, features, stats, None)
        rows.append((spec.label, coreset.indices))
    print(pick_table(rows, correct, loss, train.targets, train.clean_targets, predictions))


if __name__ == "__main__":
    main()
