"""One process against a torch.distributed group of gloo processes on precomputed features of
ImageNet-1k's shape (or a share of its classes): wall time, bytes received per rank, and peak
memory per rank.

    PYTHONPATH=$PWD python bench/run_distributed.py --classes 250 --ranks 2 --repeats 3

writes (once) a features file of `classes` x `per_class` samples with `dim`-wide embeddings and
`logit_classes`-wide logits into --dir, then per repeat runs, as separate processes and one after
the other:
  - one process with --threads threads, the arrays loaded into memory (np.load);
  - `ranks` processes under torchrun with --threads / ranks threads each, every rank passing its
    contiguous rows as a memory map with `indices=` (so a rank's anonymous memory is the features
    of the classes it owns plus one routing round; lcmat drops the pages of a read-only memory map
    once a round has been sent).
Each run prints one JSON line: seconds (the selection only), peak resident memory (VmHWM, file
pages included), the peak anonymous memory (RssAnon sampled every 5 ms), bytes received from the
other ranks by collective, and the per-class seconds of the owners.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class AnonPeak:
    """The largest RssAnon seen by a sampling thread."""

    def __init__(self, every=0.005):
        self.peak, self.every, self.running = 0, every, True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            self.peak = max(self.peak, status_kib("RssAnon"))
            time.sleep(self.every)

    def stop(self):
        self.running = False
        self.thread.join()
        return max(self.peak, status_kib("RssAnon"))


def make_features(path, classes, per_class, dim, logit_classes, seed=0):
    """Post-ReLU embeddings and logits with a margin for the true class, rows in random class
    order, written chunk by chunk."""
    n = classes * per_class
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)[rng.permutation(n)]
    emb = np.lib.format.open_memmap(path + ".emb.npy", "w+", np.float32, (n, dim))
    logits = np.lib.format.open_memmap(path + ".logits.npy", "w+", np.float32, (n, logit_classes))
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    for lo in range(0, n, 65536):
        hi = min(lo + 65536, n)
        y = labels[lo:hi]
        emb[lo:hi] = np.maximum(centres[y] + rng.normal(size=(hi - lo, dim)).astype(np.float32), 0)
        z = rng.normal(size=(hi - lo, logit_classes)).astype(np.float32)
        z[np.arange(hi - lo), y] += 3.0
        logits[lo:hi] = z
    emb.flush()
    logits.flush()
    np.save(path + ".labels.npy", labels)


def worker(args):
    import torch
    torch.set_num_threads(args.threads)
    import lcmat
    from lcmat import distributed
    distributed.init_from_env(timeout=1800)
    if args.route_bytes:
        distributed.ROUTE_BYTES = args.route_bytes
    rank, world = distributed.rank(), distributed.world_size()
    labels = np.load(args.path + ".labels.npy")
    n = len(labels)
    if world == 1:
        mode = "r" if args.mmap else None
        emb = np.load(args.path + ".emb.npy", mmap_mode=mode)
        logits = np.load(args.path + ".logits.npy", mmap_mode=mode)
        rows, index = slice(None), None
    else:
        lo, hi = n * rank // world, n * (rank + 1) // world
        rows, index = slice(lo, hi), np.arange(lo, hi)
        emb = np.load(args.path + ".emb.npy", mmap_mode="r")[rows]
        logits = np.load(args.path + ".logits.npy", mmap_mode="r")[rows]
    selector = lcmat.get_method(args.method, fraction=args.fraction, balance=not args.global_budget, progress=False)
    warm = np.random.default_rng(0)  # load the kernels and warm the group up, outside the timing
    selector.select_features(embeddings=np.abs(warm.normal(size=(400, 8))).astype(np.float32),
                             logits=warm.normal(size=(400, 4)).astype(np.float32), labels=np.arange(400) % 4)
    if world > 1:
        torch.distributed.barrier()
    base = status_kib("RssAnon")
    peak = AnonPeak()
    start = time.perf_counter()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch on read-only memory maps
        coreset = selector.select_features(embeddings=emb, logits=logits, labels=labels[rows], indices=index,
                                           num_classes=logits.shape[1] if world > 1 else None)
    seconds = time.perf_counter() - start
    anon = peak.stop()
    print(json.dumps(dict(rank=rank, world=world, threads=args.threads, seconds=seconds,
                          vmhwm_mib=status_kib("VmHWM") / 1024, anon_peak_mib=anon / 1024,
                          anon_base_mib=base / 1024, mmap=bool(args.mmap),
                          selected=len(coreset), traffic=dict(distributed.traffic),
                          phases=dict(distributed.phase_seconds),
                          checksum=int(coreset.indices.sum()))), flush=True)
    if world > 1:
        torch.distributed.destroy_process_group()


def run(cmd, env):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-4000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--classes", type=int, default=250)
    p.add_argument("--per-class", type=int, default=1281)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--logit-classes", type=int, default=1000)
    p.add_argument("--method", default="lcmat")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--global-budget", action="store_true", help="balance=False: one budget over the whole set")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default="/tmp/lcmat-bench-distributed")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--mmap", action="store_true", help="worker: one process reads memory maps")
    p.add_argument("--route-bytes", type=int, default=None, help="lcmat.distributed.ROUTE_BYTES")
    p.add_argument("--group-only", action="store_true", help="only the group's runs")
    p.add_argument("--path")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, f"c{args.classes}-n{args.per_class}-d{args.dim}-z{args.logit_classes}")
    if not os.path.exists(path + ".labels.npy"):
        make_features(path, args.classes, args.per_class, args.dim, args.logit_classes)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    me = [sys.executable, os.path.abspath(__file__), "--worker", "--path", path, "--method", args.method,
          "--fraction", str(args.fraction)] + (["--global-budget"] if args.global_budget else []) \
        + (["--route-bytes", str(args.route_bytes)] if args.route_bytes else [])
    runs = {"one": [], "one_mmap": [], "one_1": [], "group": []}
    for _ in range(args.repeats):
        if not args.group_only:
            runs["one"] += [run(me + ["--threads", str(args.threads)], dict(env, OMP_NUM_THREADS=str(args.threads)))]
            runs["one_mmap"] += [run(me + ["--threads", str(args.threads), "--mmap"],
                                     dict(env, OMP_NUM_THREADS=str(args.threads)))]
        if args.threads > 1 and not args.group_only:
            runs["one_1"] += [run(me + ["--threads", "1"], dict(env, OMP_NUM_THREADS="1"))]
        per_rank = max(1, args.threads // args.ranks)
        runs["group"] += [run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                               str(args.ranks)] + me[1:] + ["--threads", str(per_rank)],
                              dict(env, OMP_NUM_THREADS=str(per_rank)))]
    group = runs["group"]
    if args.group_only:
        for r in range(args.ranks):
            rows = [g[r] for g in group]
            print(f"rank {r}: {statistics.median(x['seconds'] for x in rows):.2f} s, VmHWM "
                  f"{statistics.median(x['vmhwm_mib'] for x in rows):.0f} MiB, anon peak "
                  f"{statistics.median(x['anon_peak_mib'] for x in rows):.0f} MiB, phases {rows[-1]['phases']}")
        return
    one = [r[0] for r in runs["one"]]
    checksums = {x["checksum"] for name in ("one", "one_mmap", "one_1", "group") for g in runs[name] for x in g}
    assert len(checksums) == 1, "coresets differ"
    t1 = statistics.median(r["seconds"] for r in one)
    tg = statistics.median(max(x["seconds"] for x in g) for g in group)
    budget = " (balance=False)" if args.global_budget else ""
    print(f"{args.method}{budget}: {args.classes} classes x {args.per_class}, D = {args.dim}, C = {args.logit_classes}, "
          f"fraction {args.fraction}, {args.repeats} repeats (medians)")

    def memory(rows):
        return (f"VmHWM {statistics.median(r['vmhwm_mib'] for r in rows):6.0f} MiB   anon peak "
                f"{statistics.median(r['anon_peak_mib'] for r in rows):6.0f} MiB (base "
                f"{statistics.median(r['anon_base_mib'] for r in rows):4.0f})")
    print(f"  one process, {args.threads} thread(s), loaded:   {t1:8.2f} s   {memory(one)}")
    one_mmap = [r[0] for r in runs["one_mmap"]]
    print(f"  one process, {args.threads} thread(s), mmap:     "
          f"{statistics.median(r['seconds'] for r in one_mmap):8.2f} s   {memory(one_mmap)}")
    if runs["one_1"]:
        one_1 = [r[0] for r in runs["one_1"]]
        print(f"  one process, 1 thread:      {statistics.median(r['seconds'] for r in one_1):8.2f} s   VmHWM "
              f"{statistics.median(r['vmhwm_mib'] for r in one_1):8.0f} MiB   anon peak "
              f"{statistics.median(r['anon_peak_mib'] for r in one_1):8.0f} MiB")
    print(f"  {args.ranks} ranks, {max(1, args.threads // args.ranks)} thread(s) each:   {tg:8.2f} s   "
          f"ratio {t1 / tg:.2f}x")
    for r in range(args.ranks):
        rows = [g[r] for g in group]
        print(f"    rank {r}: {statistics.median(x['seconds'] for x in rows):8.2f} s   {memory(rows)}   received "
              + ", ".join(f"{k} {v / 2 ** 20:.1f} MiB" for k, v in rows[-1]["traffic"].items())
              + "; phases " + ", ".join(f"{k} {statistics.median(x['phases'].get(k, 0) for x in rows):.2f} s"
                                        for k in rows[-1].get("phases", {})))
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
