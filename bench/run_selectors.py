"""End-to-end selection time of every method on synthetic features, per backend, against the
peers a user would otherwise run, side by side in one run.

    python bench/run_selectors.py --n 10000 --classes 10 --dim 512 --fraction 0.1 --repeats 3

Peers: the released LCMat code's approach (per-sample gradients materialised as an
n_c x C(D+1) NumPy matrix, scikit-learn pairwise distances, a naive NumPy greedy), POT's
log-domain Sinkhorn for FDMat's OT, and torch.func per-sample gradients for GraNd.
Prints a markdown table: median seconds of `repeats` runs and the ratio to the reference.
"""
import argparse
import statistics
import time

import numpy as np
import torch

import lcmat
from lcmat import algorithms, ops


def synthetic_features(n, classes, dim, seed=0):
    """Post-ReLU embeddings, the last layer of a moderately confident classifier, its logits."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centers = torch.randn(classes, dim, generator=g)
    H = (centers[y] + 1.5 * torch.randn(n, dim, generator=g)).relu()
    layer = torch.nn.Linear(dim, classes)
    with torch.no_grad():
        layer.weight.copy_(2.0 * centers / dim ** 0.5)
        layer.bias.zero_()
        Z = layer(H)
    return H, Z, y, layer


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def released_code_lcmat(H, Z, y, fraction, rho=0.01, num_coords=100):
    """The released code's approach, in NumPy: materialise per-sample gradients and Hessian
    diagonals per class, full pairwise distances, naive greedy facility location."""
    from sklearn.metrics import pairwise_distances
    H, Z, y = H.double().numpy(), Z.double().numpy(), y.numpy()
    picks = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        z = Z[idx] - Z[idx].max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        e = p.copy()
        e[:, c] -= 1
        q = p * (1 - p)
        h = H[idx]
        grads = np.concatenate([e, (e[:, :, None] * h[:, None, :]).reshape(len(idx), -1)], 1)
        hess = np.concatenate([q, (q[:, :, None] * (h * h)[:, None, :]).reshape(len(idx), -1)], 1)
        coords = np.argsort(-hess.var(0), kind="stable")[:num_coords]
        dist = pairwise_distances(grads) + rho * pairwise_distances(hess[:, coords], metric="manhattan")
        sim = dist.max() - dist
        coverage = np.zeros(len(idx))
        chosen = []
        for _ in range(round(fraction * len(idx))):
            gains = np.maximum(sim - coverage[:, None], 0).sum(0)
            gains[chosen] = -1
            j = int(np.argmax(gains))
            chosen.append(j)
            coverage = np.maximum(coverage, sim[:, j])
        picks.append(idx[chosen])
    return np.sort(np.concatenate(picks))


def pot_fdmat_ot(H, y, lam=10.0):
    import ot
    x = ops.fdmat_transform(H.double(), 0.5)
    M = ops.prototype_cost(x, algorithms.class_prototypes(x, y, int(y.max()) + 1), backend="reference")
    a = np.full(len(y), 1.0 / len(y))
    b = np.bincount(y.numpy()) / len(y)
    return ot.bregman.sinkhorn_log(a, b, M.numpy(), 1.0 / lam, stopThr=1e-6, numItermax=1000)


def torch_func_grand(layer, H, y):
    """Per-sample last-layer gradient norms by autograd (torch.func.vmap over grad)."""
    from torch.func import functional_call, grad, vmap
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(p, h, t):
        return torch.nn.functional.cross_entropy(functional_call(layer, p, (h[None],)), t[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, H, y)
    return torch.sqrt(sum(g.flatten(1).square().sum(1) for g in grads.values()))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(lcmat.METHODS))
    parser.add_argument("--backends", default=",".join(b for b in ops.available_backends() if b != "triton"))
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()

    H, Z, y, layer = synthetic_features(args.n, args.classes, args.dim)
    forgetting = np.arange(args.n) % 7
    backends = args.backends.split(",")
    print(f"N = {args.n}, C = {args.classes}, D = {args.dim}, fraction = {args.fraction}, "
          f"median of {args.repeats}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    others = [b for b in backends if b != "reference"]
    print("| " + " | ".join(["method"] + [f"{b} (s)" for b in backends] + [f"{b} speed-up" for b in others]) + " |")
    print("|---" + "|---:" * (len(backends) + len(others)) + "|")
    for name in args.methods.split(","):
        seconds = {}
        for backend in backends:
            sel = lcmat.get_method(name, fraction=args.fraction, backend=backend, progress=False)
            seconds[backend] = median_time(
                lambda: sel.select_features(embeddings=H, logits=Z, labels=y, forgetting=forgetting), args.repeats)
        cells = [f"{seconds[b]:.3f}" for b in backends] + [f"{seconds['reference'] / seconds[b]:.1f}x" for b in others]
        print("| " + " | ".join([name] + cells) + " |")

    if args.peers:
        print("\n| task | peer | peer (s) | lcmat (s) | lcmat speed-up |\n|---|---|---:|---:|---:|")
        rows = [("LCMat-S selection", "released code's NumPy approach",
                 lambda: released_code_lcmat(H, Z, y, args.fraction),
                 lambda: lcmat.LCMat(fraction=args.fraction, progress=False).select_features(
                     embeddings=H, logits=Z, labels=y)),
                ("FDMat OT (N x C)", "POT ot.bregman.sinkhorn_log", lambda: pot_fdmat_ot(H, y),
                 lambda: lcmat.FDMat(fraction=args.fraction, progress=False).select_features(embeddings=H, labels=y)),
                ("GraNd last-layer norms", "torch.func vmap(grad)", lambda: torch_func_grand(layer, H, y),
                 lambda: ops.last_layer_grad_norms(H, Z, y))]
        for task, peer, peer_fn, ours_fn in rows:
            t_peer, t_ours = median_time(peer_fn, args.repeats), median_time(ours_fn, args.repeats)
            print(f"| {task} | {peer} | {t_peer:.3f} | {t_ours:.3f} | {t_peer / t_ours:.1f}x |")


if __name__ == "__main__":
    main()
