"""Selection under a torch.distributed group (gloo, 2 and 3 processes on the CPU) gives the
single-process coreset; sharded Sinkhorn equals the single-process solver; a failing rank makes
every rank raise; the CLI runs under torchrun.

Each test spawns one group and runs many cases in it (process start-up dominates the time)."""
import os
import pickle
import datetime
import socket
import subprocess
import sys
import time
import traceback

import numpy as np
import pytest
import torch

import lcmat
from lcmat import distributed
from lcmat.reference.sinkhorn import sinkhorn_log
from lcmat.selectors import METHODS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 240  # seconds for a whole spawned group: a hang fails the test instead of blocking CI


# ------------------------------------------------------------------------------------------------
# Spawning
# ------------------------------------------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, phases, out_dir):
    """Run each phase (world size, port, jobs) in a fresh gloo group of its first `world` ranks:
    the processes (and their imports) are reused from one group to the next."""
    torch.set_num_threads(1)
    distributed.ROUTE_BYTES = 1024  # many routing rounds (about 20 rows each)
    timeout = datetime.timedelta(seconds=60)
    for world, port, jobs, backend in phases:
        if rank >= world:
            return
        if "nccl" in backend:
            torch.cuda.set_device(rank % torch.cuda.device_count())
        store = torch.distributed.TCPStore("127.0.0.1", port, world, rank == 0, timeout=timeout)
        torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
        results = []
        for job in jobs:
            start = time.perf_counter()
            try:
                results.append(("ok", globals()[job[0]](rank, world, *job[1:])))
            except Exception as err:
                results.append(("error", (type(err).__name__, str(err), traceback.format_exc())))
            if os.environ.get("LCMAT_TEST_TIMES"):
                print(f"rank {rank}/{world} {time.perf_counter() - start:.3f} s {job}", flush=True)
        with open(os.path.join(out_dir, f"{world}-{rank}.pkl"), "wb") as f:
            pickle.dump(results, f)
        torch.distributed.destroy_process_group()


def run_groups(phases, tmp_path, backend="gloo"):
    """Run phases [(world size, jobs [(function name, *args)])], largest world first, in one set
    of spawned processes; returns {world: per rank the list of ("ok", result) or ("error",
    (type, message, traceback))}."""
    phases = [(world, _free_port(), jobs, backend) for world, jobs in phases]
    ctx = torch.multiprocessing.start_processes(_worker, args=(phases, str(tmp_path)), nprocs=phases[0][0],
                                                join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT
    try:
        while not ctx.join(timeout=2):
            if time.monotonic() > deadline:
                pytest.fail(f"the spawned groups did not finish in {TIMEOUT} s (a hang)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    out = {}
    for world, _, _, _ in phases:
        out[world] = []
        for r in range(world):
            with open(tmp_path / f"{world}-{r}.pkl", "rb") as f:
                out[world].append(pickle.load(f))
    return out


def run_group(world, jobs, tmp_path):
    return run_groups([(world, jobs)], tmp_path)[world]


# ------------------------------------------------------------------------------------------------
# Problems and jobs (run inside the ranks)
# ------------------------------------------------------------------------------------------------

def make_problem(kind, seed=0):
    """(embeddings, logits, labels, forgetting) of a small problem of the given class layout."""
    if kind == "ties":  # every row twice, the copies adjacent (on different ranks when strided)
        rows = np.repeat(np.arange(40), 2)
        return tuple(x[rows] for x in make_problem("even", seed))
    rng = np.random.default_rng(seed)
    sizes = {"even": [30, 30, 30, 30, 30], "uneven": [120, 9, 25, 4, 40],
             "one_class": [60], "two_classes": [35, 21]}[kind]
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    labels = labels[rng.permutation(len(labels))]
    num_classes = len(sizes)
    embeddings = np.abs(rng.normal(size=(len(labels), 6))).astype(np.float32)
    logits = rng.normal(size=(len(labels), num_classes)).astype(np.float32)
    logits[np.arange(len(labels)), labels] += 1.5
    forgetting = rng.integers(0, 5, size=len(labels)).astype(np.float64)
    return embeddings, logits, labels, forgetting


def rows_of(rank, world, n, layout):
    """This rank's rows under a layout: 'strided', 'empty_last' (the last rank gets none) or
    'shuffled' (a random split of random sizes)."""
    if layout == "strided":
        return np.arange(rank, n, world)
    if layout == "empty_last":
        return np.array([], dtype=np.int64) if rank == world - 1 else np.arange(rank, n, world - 1)
    perm = np.random.default_rng(7).permutation(n)
    cuts = np.sort(np.random.default_rng(8).integers(0, n, size=world - 1))
    return np.split(perm, cuts)[rank]


def _selector(method, options):
    if method == "fdmat":  # a plan that converges well before max_iter on these random features
        options = dict({"lam": 2.0}, **options)
    return lcmat.get_method(method, progress=False, **options)


def select_job(rank, world, method, options, kind, form, device=None):
    embeddings, logits, labels, forgetting = make_problem(kind)
    if device is not None:  # the arrays as tensors on this rank's device
        device = torch.device(device, torch.cuda.current_device()) if device == "cuda" else device
        embeddings, logits, labels = (torch.from_numpy(x).to(device) for x in (embeddings, logits, labels))
    selector = _selector(method, options)
    if form == "full":
        coreset = selector.select_features(embeddings=embeddings, logits=logits, labels=labels,
                                           forgetting=forgetting)
    else:
        rows = rows_of(rank, world, len(labels), form)
        coreset = selector.select_features(embeddings=embeddings[rows], logits=logits[rows],
                                           labels=labels[rows], forgetting=forgetting[rows],
                                           num_classes=logits.shape[1], indices=rows)
    return coreset.indices, coreset.weights, coreset.scores, coreset.info


def single_process(method, options, kind, device=None):
    embeddings, logits, labels, forgetting = make_problem(kind)
    if device is not None:
        embeddings, logits, labels = (torch.from_numpy(x).to(device) for x in (embeddings, logits, labels))
    selector = _selector(method, options)
    coreset = selector.select_features(embeddings=embeddings, logits=logits, labels=labels,
                                       forgetting=forgetting, num_classes=logits.shape[1])
    return coreset.indices, coreset.weights, coreset.scores, coreset.info


def sinkhorn_job(rank, world, n, m, reg, tol):
    a, b, M = sinkhorn_problem(n, m)
    rows = rows_of(rank, world, n, "shuffled")
    f, g, n_iter, err = distributed.sinkhorn_log_sharded(a[rows], b, M[rows], reg, 500, tol)
    return rows, f.numpy(), g.numpy(), int(n_iter), float(err)


def sinkhorn_problem(n, m):
    gen = torch.Generator().manual_seed(3)
    M = torch.rand(n, m, generator=gen, dtype=torch.float64)
    a = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1
    a[0] = 0.0  # a zero mass: potential -inf
    b = torch.rand(m, generator=gen, dtype=torch.float64) + 0.1
    return a, b * a.sum() / b.sum(), M


class ToyImages(torch.utils.data.Dataset):
    def __init__(self, n):
        gen = torch.Generator().manual_seed(5)
        self.x = torch.randn(n, 5, generator=gen)
        self.y = torch.arange(n) % 3

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def toy_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def extract_job(rank, world, method, n, options=None):
    selector = lcmat.get_method(method, fraction=0.3, progress=False, **(options or {}))
    coreset = selector.select(toy_model(), ToyImages(n), batch_size=4)
    return coreset.indices, coreset.weights, coreset.scores, coreset.info


def memmap_job(rank, world, folder, form):
    """Read-only memory maps in: the full files, or this rank's rows of them."""
    arrays = {name: np.load(os.path.join(folder, name + ".npy"), mmap_mode="r") for name in ("emb", "logits")}
    labels = np.load(os.path.join(folder, "labels.npy"))
    rows = slice(None) if form == "full" else slice(len(labels) * rank // world, len(labels) * (rank + 1) // world)
    coreset = lcmat.LCMat(fraction=0.2, progress=False).select_features(
        embeddings=arrays["emb"][rows], logits=arrays["logits"][rows], labels=labels[rows],
        indices=None if form == "full" else np.arange(len(labels))[rows])
    return coreset.indices


def traffic_job(rank, world, kind):
    """The bytes this rank received in a global Herding and a global Cal, and its rows."""
    embeddings, logits, labels, _ = make_problem(kind)
    rows = rows_of(rank, world, len(labels), "strided")
    out = []
    for selector in (lcmat.Herding(fraction=0.2, balance=False, progress=False),
                     lcmat.get_method("cal", fraction=0.2, balance=False, progress=False)):
        selector.select_features(embeddings=embeddings[rows], logits=logits[rows], labels=labels[rows], indices=rows)
        out.append(dict(distributed.traffic))
    return out, len(rows), embeddings.shape[1], logits.shape[1], len(labels)


def _check_traffic(world, r, value):
    """Global budgets move no features to other ranks: Herding receives W - 1 candidates of
    D + 3 numbers per pick (plus N labels and a few sizes); Cal's ring pass each other rank's
    embeddings and log-probabilities once, with their positions, and the scores are gathered."""
    (herding, cal), n_r, D, C, n = value
    k = round(0.2 * n)
    assert herding["all_to_all"] == 0 and cal["all_to_all"] == 0
    assert herding["send_recv"] == 0
    picks = k * (world - 1) * (D + 3) * 8
    labels = (world - 1) * -(-n // world) * 2 * 8  # gather_rows: (position, label), padded to the largest shard
    assert picks <= herding["all_gather"] <= picks + labels + 64 * world, (herding, picks, labels)
    assert cal["send_recv"] == (n - n_r) * (D * 4 + C * 4 + 2 * 8), cal


def failing_job(rank, world, bad_rank):
    embeddings, logits, labels, _ = make_problem("even")
    if rank == bad_rank:
        embeddings = embeddings.copy()
        embeddings[-2, 2] = np.nan  # in the last rank's share of the full arrays
    return lcmat.LCMat(fraction=0.2, progress=False).select_features(embeddings=embeddings, logits=logits,
                                                                     labels=labels)


def failing_pick_job(rank, world, bad_rank):
    """A rank that raises inside its per-class picks (after the features were routed)."""
    selector = lcmat.Herding(fraction=0.2, progress=False)
    if rank == bad_rank:
        def broken(data, positions, k):
            raise RuntimeError("out of luck")
        selector.pick = broken
    embeddings, logits, labels, _ = make_problem("even")
    return selector.select_features(embeddings=embeddings, logits=logits, labels=labels)


# ------------------------------------------------------------------------------------------------
# Comparisons
# ------------------------------------------------------------------------------------------------

def assert_same_coreset(got, want, what):
    indices, weights, scores, info = got
    np.testing.assert_array_equal(indices, want[0], err_msg=what)
    for name, a, b in (("weights", weights, want[1]), ("scores", scores, want[2])):
        assert (a is None) == (b is None), f"{what}: {name} {a is None} vs {b is None}"
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=f"{what}: {name}")
    np.testing.assert_array_equal(info["class_counts"], want[3]["class_counts"], err_msg=what)
    if "rho" in want[3]:
        np.testing.assert_allclose(info["rho"], want[3]["rho"], rtol=1e-5, err_msg=f"{what}: rho")


def validation_set(kind):
    """Held-out (embeddings, logits, labels) for GradMatch and Glister: every rank passes them whole."""
    embeddings, logits, labels, _ = make_problem(kind, seed=11)
    return embeddings[::3], logits[::3], labels[::3]


# Every method that selects from features (DeepFool needs the model: see extract_job).
FEATURE_METHODS = [m for m, cls in METHODS.items() if not getattr(cls, "needs_model", False)]
# Methods whose balance=False runs one greedy or neighbour search over the whole set.
GLOBAL_METHODS = ("herding", "kcenter", "cdiv", "gradmatch", "glister", "cal")
GLOBAL_CASES = (
    [(m, {"fraction": 0.2, "balance": False}, "ties", "strided") for m in GLOBAL_METHODS]
    + [(m, {"fraction": 0.25, "balance": False}, "two_classes", "empty_last") for m in GLOBAL_METHODS]
    + [(m, {"fraction": 0.1, "balance": False}, "one_class", "shuffled") for m in GLOBAL_METHODS]
    + [(m, {"fraction": 0.2, "balance": False}, "uneven", "shuffled") for m in GLOBAL_METHODS]
    + [("gradmatch", {"fraction": 0.2, "balance": False, "deepcore": True}, "uneven", "empty_last"),
       ("glister", {"fraction": 0.2, "balance": False, "eta": 0.0}, "uneven", "strided"),
       ("gradmatch", {"fraction": 0.2, "balance": False, "validation": validation_set("uneven")}, "uneven", "strided"),
       ("glister", {"fraction": 0.2, "balance": False, "validation": validation_set("uneven")}, "uneven", "empty_last"),
       ("kcenter", {"fraction": 0.3, "balance": False, "coverage": True, "num_strata": 3}, "uneven", "strided"),
       ("herding", {"fraction": 0.3, "balance": False, "coverage": True, "difficulty": "forgetting",
                    "num_strata": 3}, "uneven", "empty_last"),
       ("cal", {"fraction": 0.3, "balance": False, "variant": "deepcore", "coverage": True, "difficulty": "own",
                "num_strata": 3}, "uneven", "full")]
)

SELECT_CASES = (
    [(m, {"fraction": 0.2}, "uneven", "full") for m in FEATURE_METHODS]
    + [(m, {"fraction": 0.2}, "even", "shuffled") for m in FEATURE_METHODS]
    + [(m, {"fraction": 0.25}, "two_classes", "empty_last")
       for m in ("lcmat", "fdmat", "kcenter", "el2n", "gradmatch", "glister", "adacore", "cdiv", "cal",
                 "moderate", "graphcut", "logdet")]
    + [(m, {"fraction": 0.1}, "one_class", "strided")
       for m in ("lcmat", "herding", "uniform", "fdmat", "glister", "cdiv", "cal", "moderate", "logdet")]
    + [(m, {"fraction": 0.2, "validation": validation_set("uneven")}, "uneven", "shuffled")
       for m in ("gradmatch", "glister")]
    + [(m, {"fraction": 0.1, "balance": False}, "uneven", "strided")
       for m in ("moderate", "graphcut", "logdet", "adacore")]
    + [("moderate", {"fraction": 0.3, "centre": "mean", "coverage": True, "difficulty": "own", "num_strata": 3},
        "uneven", "shuffled"),
       ("cal", {"fraction": 0.3, "variant": "deepcore", "coverage": True, "difficulty": "own", "num_strata": 3},
        "uneven", "strided"),
       ("cdiv", {"fraction": 0.3, "coverage": True, "num_strata": 3}, "uneven", "empty_last"),
       ("graphcut", {"fraction": 0.2, "metric": "euclidean", "space": "embeddings", "lazy": True}, "uneven",
        "empty_last"),
       ("gradmatch", {"fraction": 0.2, "deepcore": True}, "uneven", "empty_last")]
    + [("el2n", {"fraction": 0.1, "balance": False}, "uneven", "shuffled"),
       ("fdmat", {"fraction": 0.1, "balance": False}, "uneven", "strided"),
       ("uniform", {"fraction": 0.1, "balance": False}, "uneven", "full"),
       ("lcmat", {"fraction": 0.1, "balance": False}, "uneven", "strided"),
       ("lcmat", {"fraction": 0.3, "coverage": True, "num_strata": 4}, "uneven", "shuffled"),
       ("lcmat", {"fraction": 0.3, "coverage": True, "quotas": True, "num_strata": 3}, "uneven", "full"),
       ("lcmat", {"fraction": 0.2, "rho": "auto", "weights": True}, "uneven", "shuffled"),
       ("lcmat", {"fraction": 0.2, "mode": "compat", "batch_size": 16}, "uneven", "strided"),
       ("craig", {"fraction": 0.2}, "uneven", "empty_last"),
       ("kcenter", {"fraction": 0.3, "coverage": True, "num_strata": 3}, "uneven", "strided"),
       ("uniform", {"fraction": 0.3, "coverage": True, "num_strata": 3}, "uneven", "shuffled"),
       ("margin", {"fraction": 0.3, "coverage": True, "difficulty": "forgetting"}, "uneven", "full"),
       ("fdmat", {"fraction": 0.3, "coverage": True, "difficulty": "own", "balance": False}, "uneven", "full"),
       ("forgetting", {"fraction": 0.2, "balance": False}, "even", "strided"),
       ("lcmat", {"fraction": 0.2}, "uneven", "shuffled", "cpu"),  # torch tensors in
       ("fdmat", {"fraction": 0.2}, "uneven", "full", "cpu")]
)


def _check_select_results(out, cases):
    wants = [single_process(*case[:3], device=case[4] if len(case) > 4 else None) for case in cases]
    for r, results in enumerate(out):
        for case, want, (status, value) in zip(cases, wants, results):
            what = f"rank {r}: {case}"
            assert status == "ok", f"{what}: {value[0]}: {value[1]}\n{value[2]}"
            assert_same_coreset(value, want, what)


def _jobs(world, folder):
    """(selection cases, jobs): with 3 ranks, every method once and every other special case."""
    cases = SELECT_CASES + GLOBAL_CASES
    if world == 3:
        every = [c for c in SELECT_CASES if c[2:] == ("even", "shuffled")]
        cases = (every + [c for c in SELECT_CASES if c[3] != "full" and c not in every][::2]
                 + [c for c in GLOBAL_CASES if c[2] != "uneven"])
    jobs = [("select_job",) + case for case in cases]
    jobs += [("sinkhorn_job", 37, 5, 0.2, 1e-9), ("extract_job", "lcmat", 31), ("extract_job", "el2n", 31),
             ("failing_job", world - 1), ("failing_pick_job", 0), ("traffic_job", "uneven"),
             ("extract_job", "lcmat", 31, {"mode": "compat", "batch_size": 4}),
             ("memmap_job", folder, "full"), ("memmap_job", folder, "rows"),
             ("extract_job", "deepfool", 31), ("extract_job", "deepfool", 31, {"score": "steps", "coverage": True,
                                                                             "num_strata": 2}),
             ("extract_job", "grand", 31, {"layers": "all"})]
    return cases, jobs


def test_every_selector_matches_one_process(tmp_path):
    """Groups of 3 then 2 processes (one spawn): every selector, the sharded Sinkhorn, feature
    extraction under select(model, dataset), and a failing rank."""
    embeddings, logits, labels, _ = make_problem("uneven")
    for name, x in (("emb", embeddings), ("logits", logits), ("labels", labels)):
        np.save(tmp_path / f"{name}.npy", x)
    phases = {world: _jobs(world, str(tmp_path)) for world in (3, 2)}
    out = run_groups([(world, jobs) for world, (_, jobs) in phases.items()], tmp_path)
    for world, (cases, _) in phases.items():
        _check_group(world, cases, out[world])


def _check_group(world, cases, out):
    n_select = len(cases)
    _check_select_results([r[:n_select] for r in out], cases)

    a, b, M = sinkhorn_problem(37, 5)
    f_want, g_want, it_want, err_want = sinkhorn_log(a, b, M, 0.2, 500, 1e-9)
    for r in range(world):
        status, (rows, f, g, n_iter, err) = out[r][n_select]
        assert status == "ok"
        np.testing.assert_allclose(g, g_want.numpy(), rtol=0, atol=1e-6)
        assert np.isneginf(f_want[rows].numpy()).tolist() == np.isneginf(f).tolist()
        finite = np.isfinite(f)
        np.testing.assert_allclose(f[finite], f_want[rows].numpy()[finite], rtol=0, atol=1e-6)
        assert n_iter == int(it_want) and abs(err - float(err_want)) < 1e-9

    extracted = [(1, "lcmat", {}), (2, "el2n", {}), (9, "deepfool", {}),
                 (10, "deepfool", {"score": "steps", "coverage": True, "num_strata": 2}), (11, "grand", {"layers": "all"})]
    for j, method, options in extracted:
        want = lcmat.get_method(method, fraction=0.3, progress=False, **options).select(toy_model(), ToyImages(31),
                                                                                          batch_size=4)
        for r in range(world):
            status, value = out[r][n_select + j]
            assert status == "ok", value
            assert_same_coreset(value, (want.indices, want.weights, want.scores, want.info),
                                f"extract {method} {options}")

    for r in range(world):
        status, (kind, message, _) = out[r][n_select + 3]
        assert status == "error" and kind == "ValueError", (status, kind, message)
        n = len(make_problem("even")[2])
        assert message == f"rank {world - 1} of {world}: embeddings: contains NaN or Inf (first in dataset row {n - 2})"
        status, (kind, message, _) = out[r][n_select + 4]
        assert status == "error" and kind == "RuntimeError", (status, kind, message)
        assert message == f"rank 0 of {world}: RuntimeError: out of luck"
        status, value = out[r][n_select + 5]
        assert status == "ok", value
        _check_traffic(world, r, value)

    want = lcmat.LCMat(fraction=0.3, mode="compat", batch_size=4, progress=False).select(toy_model(), ToyImages(31))
    for r in range(world):
        status, value = out[r][n_select + 6]
        assert status == "ok", value
        assert_same_coreset(value, (want.indices, want.weights, want.scores, want.info), "extract compat")
    want = single_process("lcmat", {"fraction": 0.2}, "uneven")[0]
    for r in range(world):
        for j in (7, 8):
            status, value = out[r][n_select + j]
            assert status == "ok", value
            np.testing.assert_array_equal(value, want, err_msg=f"memory maps, job {j}")


def test_cli_under_torchrun(tmp_path):
    embeddings, logits, labels, _ = make_problem("uneven")
    features = tmp_path / "features.npz"
    np.savez(features, embeddings=embeddings, logits=logits, labels=labels)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    out = tmp_path / "picked.npz"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "lcmat", "select", "--method", "lcmat", "--fraction", "0.2", "--features", str(features),
           "--out", str(out), "--quiet"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("method lcmat:") == 1  # the table is printed by rank 0 only
    want = lcmat.LCMat(fraction=0.2, progress=False).select_features(embeddings=embeddings, logits=logits,
                                                                      labels=labels)
    np.testing.assert_array_equal(lcmat.Coreset.load(out).indices, want.indices)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npz", "picked.npz"]


def test_assign_classes_is_lpt():
    owner = distributed.assign_classes([1, 9, 4, 4, 2], 2)
    # 9 -> 0; 4 -> 1; 4 -> 1 (load 4 < 9); 2 -> 0? loads (9, 8): 2 -> 1; 1 -> 1 (9 vs 10 -> 0)
    assert owner.tolist() == [0, 0, 1, 1, 1]
    assert distributed.assign_classes([5, 5, 5], 4).tolist() == [0, 1, 2]


def test_indices_in_one_process_reorder_rows():
    embeddings, logits, labels, _ = make_problem("uneven")
    perm = np.random.default_rng(1).permutation(len(labels))
    want = lcmat.LCMat(fraction=0.2).select_features(embeddings=embeddings, logits=logits, labels=labels)
    got = lcmat.LCMat(fraction=0.2).select_features(embeddings=embeddings[perm], logits=logits[perm],
                                                    labels=labels[perm], indices=perm)
    np.testing.assert_array_equal(got.indices, want.indices)
    with pytest.raises(ValueError, match="indices: in one process"):
        lcmat.LCMat(fraction=0.2).select_features(embeddings=embeddings, logits=logits, labels=labels,
                                                  indices=np.zeros(len(labels), dtype=np.int64))


@pytest.mark.gpu
def test_cuda_tensors(tmp_path):
    """Device placement: CUDA tensors on every rank, NCCL with two GPUs or more, else gloo (the
    collectives then run on CPU copies) with both ranks on the one GPU."""
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.device_count() >= 2 else "gloo"
    cases = [c for c in SELECT_CASES if c[2:] == ("even", "shuffled")] + [
        ("lcmat", {"fraction": 0.2}, "uneven", "full"), ("fdmat", {"fraction": 0.1, "balance": False}, "uneven", "full")]
    cases += [c for c in GLOBAL_CASES if c[2] == "uneven"]
    out = run_groups([(2, [("select_job",) + c + ("cuda",) for c in cases])], tmp_path, backend)[2]
    for r, results in enumerate(out):
        for case, (status, value) in zip(cases, results):
            assert status == "ok", f"rank {r}: {case}: {value[0]}: {value[1]}\n{value[2]}"
            assert_same_coreset(value, single_process(*case[:3], device="cuda"), f"rank {r}: {case} on cuda")


def test_memory_map_pages_are_dropped_not_the_data(tmp_path):
    x = np.random.default_rng(0).normal(size=(5000, 300)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    m = np.load(tmp_path / "x.npy", mmap_mode="r")
    rows = slice(700, 4900)
    t, release = distributed._local_features("embeddings", m, rows, 4200, torch.float32, torch.device("cpu"),
                                             np.arange(700, 4900))
    assert release is not None
    release(0, 4200)  # dropped pages are read again from the file
    assert torch.equal(t, torch.from_numpy(x[rows]))
    assert distributed._page_release(x, 0) is None  # ordinary memory is never dropped
    assert distributed._page_release(np.load(tmp_path / "x.npy", mmap_mode="c"), 0) is None
    bad = np.lib.format.open_memmap(tmp_path / "bad.npy", "w+", np.float32, (10, 3))
    bad[7, 1] = np.inf
    bad.flush()
    with pytest.raises(ValueError, match=r"embeddings: contains NaN or Inf \(first in dataset row 9\)"):
        distributed._local_features("embeddings", np.load(tmp_path / "bad.npy", mmap_mode="r"), slice(0, 10), 10,
                                    torch.float32, torch.device("cpu"), np.arange(2, 12))
