"""Selection across the processes of a torch.distributed group (launched by torchrun).

Under an initialised process group of more than one process, `Selector.select_features` and
`Selector.select` come here, and every rank returns the same Coreset as one process would on the
same inputs. The inputs come in one of two forms:

- every rank passes the full arrays: rank r works on the contiguous share
  [N r / W, N (r + 1) / W) of the rows;
- every rank passes only its own rows and their global dataset positions (`indices=`), together a
  permutation of 0..N-1.

Two paths, by what a method needs once its per-sample work is done:

- score methods (and Uniform): each rank scores its rows (FDMat: the transform's mean, the
  class prototypes and the Sinkhorn column updates are reduced across ranks, so the scores are
  those of the whole set). A score is one number per sample and is part of the result
  (`Coreset.scores`), so the scores are all-gathered; the picks of each class then run on the
  class's owner (a global budget, balance=False: on rank 0) and the picks are all-gathered.
- per-class feature methods (LCMat-S, CRAIG, AdaCore, Herding, k-Center, GradMatch, Glister,
  Contextual Diversity, graph cut, log-determinant): each sample's features are sent
  with `all_to_all` to the rank that owns its class, in rounds of at most ROUTE_BYTES per rank, so
  a rank holds its classes' features plus one round; each owner runs the method's own groups,
  batches and picks on its classes; the picks are all-gathered. Rows given as a read-only
  memory map (np.load(..., mmap_mode="r")) are read round by round and their pages dropped once
  sent, so features on disk need no more memory than the classes a rank owns. GradMatch and
  Glister match against `validation=`, which every rank passes whole, so an owner has it.
- score methods whose score needs the whole class (Cal's neighbours, Moderate-DS's class centre):
  the features are routed to the class owners as above, each owner scores its classes, and the
  scores are gathered and picked as in the first path. Moderate-DS's balance=False ranks the
  distances against their median over the whole set: the owners compute the distances, and every
  rank the median and scores from the gathered distances.

- global budgets of the greedy methods (balance=False of Herding, k-Center, Contextual Diversity,
  GradMatch, Glister): one greedy over the whole set, its rows left where they are. Each step every
  rank offers its best row (gain, position, the row's vector) in one all_gather, every rank takes
  the best (lowest position on exact ties, as one process) and updates its own rows with it; the
  small systems (GradMatch's k x k) are replicated. Cal over the whole set finds the neighbours by
  a ring pass of embedding shards. See `_select_global` and `cal_scores_global` for what each rank
  holds and receives.

DeepFool attacks the model, so it runs under `select(model, dataset)` only: each
rank attacks its own share of the dataset and its scores join the score path.

Class ownership: classes sorted by cost, largest first (ties: lower class), each to the least
loaded rank (ties: lower rank), the LPT rule; the cost is n_c^2 for the methods over n_c x n_c
blocks (facility location, graph cut, log-determinant, Cal's neighbours), k_c n_c for the greedy
ones (Herding, k-Center, Contextual Diversity, GradMatch, Glister) and n_c for the rest (a selector may define
`distributed_cost(n, k)` to override it).

Failure: every phase in which a rank can raise ends with an exchange of error flags
(all_gather_object) before the next collective, and every rank then raises the same error naming
the rank at fault: a ValueError stays a ValueError. Errors that depend only on replicated values
(budgets, class counts) are raised by every rank on its own.
"""
import datetime
import os
import time
import warnings

import numpy as np
import torch
import torch.distributed as dist

from .validation import as_float64_array, as_tensor, check_every_class_present, check_finite

ROUTE_BYTES = 2 ** 23  # feature bytes a rank sends per routing round
SINKHORN_ROWS = 2 ** 16  # cost rows per chunk in the sharded Sinkhorn (bounds its temporaries)

# Bytes this rank received from the others in the last selection, by kind of collective
# (all_to_all: routed features; all_gather: scores and picks; all_reduce: tensor sizes).
traffic = {"all_to_all": 0, "all_gather": 0, "all_reduce": 0, "send_recv": 0}
# Seconds of this rank in the phases of the last selection (inputs: validation and class counts;
# route: features to the owners; pick: the method on the owned classes, or the scores; gather).
phase_seconds = {}


# ------------------------------------------------------------------------------------------------
# The process group
# ------------------------------------------------------------------------------------------------

def active():
    """True under an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_lead():
    """True on rank 0, and in a single process: the one that writes files and prints."""
    return rank() == 0


def init_from_env(timeout=None):
    """Join the group that torchrun describes (WORLD_SIZE > 1 in the environment); gloo for CPU
    tensors and, when CUDA is there, NCCL for CUDA tensors on the device LOCAL_RANK. Collectives
    give up after `timeout` seconds (default: LCMAT_DIST_TIMEOUT, else 600). Returns whether a
    group was initialised here."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    limit = float(timeout if timeout is not None else os.environ.get("LCMAT_DIST_TIMEOUT", 600))
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=limit))
    return True


def _comm_device(device):
    """Where a collective on data of `device` runs: CUDA tensors need NCCL, CPU ones gloo."""
    backend = str(dist.get_backend())
    if device.type == "cpu" and "gloo" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    if device.type != "cpu" and "nccl" not in backend:
        return torch.device("cpu")
    return device


# ------------------------------------------------------------------------------------------------
# Errors: every rank raises the same one
# ------------------------------------------------------------------------------------------------

_KINDS = {"ValueError": ValueError, "NotImplementedError": NotImplementedError}


def _exchange(failure, payload=None):
    """All-gather (failure, payload) of every rank; raise the first failure on every rank."""
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, (None if failure is None else failure[:2], payload))
    for r, (fail, _) in enumerate(gathered):
        if fail is not None:
            kind = _KINDS.get(fail[0])
            text = f"rank {r} of {len(gathered)}: " + (fail[1] if kind else f"{fail[0]}: {fail[1]}")
            cause = failure[2] if failure is not None and r == rank() else None
            raise (kind or RuntimeError)(text) from cause
    return [p for _, p in gathered]


def _agree(fn, *args, gather=False):
    """Run fn on this rank; if any rank raised, every rank raises the same error. Returns fn's
    result (with gather=True: the list of every rank's result)."""
    try:
        result, failure = fn(*args), None
    except Exception as err:  # exchanged, then raised again on every rank
        result, failure = None, (type(err).__name__, str(err), err)
    gathered = _exchange(failure, result if gather else None)
    return gathered if gather else result


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------

class _Data:
    """The attributes of `selectors.Features` that the selectors read, for rows held locally."""

    def __init__(self, labels, num_classes, embeddings=None, logits=None, forgetting=None):
        self.labels, self.num_classes = labels, num_classes
        self.embeddings, self.logits, self.forgetting = embeddings, logits, forgetting
        self.scores = None
        labels_np = labels.cpu().numpy()
        order = np.argsort(labels_np, kind="stable")
        bounds = np.searchsorted(labels_np[order], np.arange(num_classes + 1))
        self.class_indices = [order[bounds[c]:bounds[c + 1]] for c in range(num_classes)]

    def __len__(self):
        return len(self.labels)


def _local_labels(labels):
    y = as_tensor("labels", labels, 1)
    if y.dtype == torch.bool:
        raise ValueError("labels: must be integers, got booleans")
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise ValueError("labels: must be integers, got non-integral floats")
    y = y.long()
    if len(y) and int(y.min()) < 0:
        raise ValueError(f"labels: must be >= 0, got {int(y.min())}")
    return y


def _page_release(x, first_row):
    """For a read-only memory map (np.load(..., mmap_mode="r")) of C-contiguous rows: a function
    release(a, b) that drops the pages of local rows [a, b) (rows first_row + a.. of x) from this
    process's memory once they have been read; they stay in the page cache and are read again if
    touched. None for anything else (dropping the pages of ordinary memory would zero them)."""
    import mmap
    mm = getattr(x, "_mmap", None)
    if (not isinstance(x, np.memmap) or mm is None or x.flags.writeable or not x.flags.c_contiguous
            or x.ndim != 2 or not hasattr(mm, "madvise")):
        return None
    view = np.frombuffer(mm, dtype=np.uint8)
    start = x.ctypes.data - view.ctypes.data
    del view
    row, page = x.strides[0], mmap.PAGESIZE

    def release(a, b):
        lo = -(-(start + (first_row + a) * row) // page) * page
        hi = (start + (first_row + b) * row) // page * page
        if hi > lo:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    return release


def _local_features(name, x, rows, n, dtype, device, positions):
    """(the rows as a finite tensor of `dtype` on `device`, their page release or None)."""
    release = _page_release(x, 0 if rows is None else rows.start)
    with warnings.catch_warnings():
        if release is not None:  # read-only memory: lcmat never writes to its inputs
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        x = as_tensor(name, x, 2)
    if rows is not None:
        x = x[rows]
    if x.shape[0] != n:
        raise ValueError(f"{name}: has {x.shape[0]} rows but labels has {n} entries")
    x = x.to(device)
    if not x.is_floating_point():
        x = x.to(dtype)
    step = 65536
    for lo in range(0, n, step):  # a memory map is read once here and once when routed
        try:
            check_finite(name, x[lo:lo + step])
        except ValueError:
            row = lo + int((~torch.isfinite(x[lo:lo + step])).any(1).nonzero()[0])
            raise ValueError(f"{name}: contains NaN or Inf (first in dataset row {positions[row]})") from None
        if release is not None:
            release(lo, min(lo + step, n))
    return x.to(dtype), release


class _Shard:
    """This rank's validated rows: tensors on one device, their global positions `index`."""

    def __init__(self, selector, embeddings, logits, labels, forgetting, indices, needs):
        given = {"embeddings": embeddings, "logits": logits}
        for name in needs:
            if given[name] is None:
                raise ValueError(f"{name}: {type(selector).__name__} needs {' and '.join(needs)}")
        self.device = next((x.device for x in given.values() if isinstance(x, torch.Tensor)),
                           torch.device("cpu"))
        y = _local_labels(labels)
        self.full = indices is None
        rows = None
        if self.full:
            n_all = len(y)
            lo, hi = n_all * rank() // world_size(), n_all * (rank() + 1) // world_size()
            rows = slice(lo, hi)
            y, self.index, self.n_all = y[rows], np.arange(lo, hi, dtype=np.int64), n_all
        else:
            self.index = as_tensor("indices", indices, 1).cpu().numpy()
            if not np.issubdtype(self.index.dtype, np.integer):
                raise ValueError(f"indices: must be integers, got dtype {self.index.dtype}")
            self.index = self.index.astype(np.int64)
            if len(self.index) != len(y):
                raise ValueError(f"indices: has {len(self.index)} entries but labels has {len(y)}")
            self.n_all = None
        self.labels = y.to(self.device)
        n = len(y)
        self.embeddings = self.logits = None
        self.release = {"embeddings": None, "logits": None}
        if "embeddings" in needs:
            self.embeddings, self.release["embeddings"] = _local_features(
                "embeddings", embeddings, rows, n, selector.dtype, self.device, self.index)
        if "logits" in needs:
            self.logits, self.release["logits"] = _local_features(
                "logits", logits, rows, n, selector.dtype, self.device, self.index)
        self.forgetting = None
        if forgetting is not None:
            f = as_tensor("forgetting", forgetting, 1).double().cpu().numpy()
            f = f[rows] if rows is not None else f
            if f.shape != (n,) or not np.isfinite(f).all():
                raise ValueError(f"forgetting: expected {n} finite values, got shape {f.shape}")
            self.forgetting = f

    def summary(self):
        dims = [None if x is None or len(x) == 0 else x.shape[1] for x in (self.embeddings, self.logits)]
        return dict(n=len(self.labels), n_all=self.n_all, full=self.full, dims=dims,
                    max_label=int(self.labels.max()) if len(self.labels) else -1,
                    index_range=(int(self.index.min()), int(self.index.max())) if len(self.index) else None,
                    forgetting=self.forgetting is not None)


def _check_global(summaries, num_classes, needs):
    """(N, C) from every rank's summary; the errors are the same on every rank."""
    if len({s["full"] for s in summaries}) > 1:
        raise ValueError("indices: give indices= on every rank (each its own rows) or on none "
                         "(every rank the full arrays)")
    if len({s["num_classes"] for s in summaries}) > 1:
        raise ValueError(f"num_classes: ranks disagree: {[s['num_classes'] for s in summaries]}")
    if len({s["forgetting"] for s in summaries}) > 1:
        raise ValueError("forgetting: give forgetting= on every rank or on none")
    if summaries[0]["full"]:
        sizes = {s["n_all"] for s in summaries}
        if len(sizes) > 1:
            raise ValueError(f"labels: every rank must pass the same full arrays, got lengths {sorted(sizes)}")
        n = summaries[0]["n_all"]
    else:
        n = sum(s["n"] for s in summaries)
        ranges = [s["index_range"] for s in summaries if s["index_range"] is not None]
        if ranges and (min(r[0] for r in ranges) < 0 or max(r[1] for r in ranges) >= n):
            raise ValueError(f"indices: must be positions in [0, {n}) (the rows of all ranks together)")
    if n == 0:
        raise ValueError("labels: is empty")
    dims = []
    for j, name in enumerate(("embeddings", "logits")):
        seen = {s["dims"][j] for s in summaries} - {None}
        if len(seen) > 1:
            raise ValueError(f"{name}: ranks disagree on the number of columns: {sorted(seen)}")
        if name in needs and not seen:
            raise ValueError(f"{name}: is empty")
        dims.append(seen.pop() if seen else 0)
    max_label = max(s["max_label"] for s in summaries)
    if "logits" in needs:
        if num_classes not in (None, dims[1]):
            raise ValueError(f"num_classes: is {num_classes} but logits has {dims[1]} columns")
        num_classes = dims[1]
    if num_classes is None:
        num_classes = max_label + 1
    if max_label >= num_classes:
        raise ValueError(f"labels: value {max_label} is out of range for num_classes={num_classes}")
    return n, num_classes, dims


def _check_permutation(shard, n):
    """The indices of all ranks together are a permutation of 0..N-1: N entries that cover every
    position (one byte per position, reduced by MAX)."""
    seen = torch.zeros(n, dtype=torch.uint8)
    seen[torch.from_numpy(shard.index)] = 1
    device = _comm_device(torch.device("cpu"))
    seen = seen.to(device)
    dist.all_reduce(seen, op=dist.ReduceOp.MAX)
    missing = int(n - seen.sum())
    if missing:
        raise ValueError(f"indices: the ranks' indices together must be a permutation of 0..{n - 1}; "
                         f"{missing} positions are missing (and as many duplicated)")


def _all_reduce(t, op=dist.ReduceOp.SUM):
    """all_reduce on the device the group's backend needs; returns the result on t's device."""
    device = _comm_device(t.device)
    buf = t.to(device, copy=True)
    dist.all_reduce(buf, op=op)
    traffic["all_reduce"] += buf.numel() * buf.element_size()
    return buf.to(t.device)


# ------------------------------------------------------------------------------------------------
# Class ownership
# ------------------------------------------------------------------------------------------------

_BLOCK_COST = ("lcmat", "graphcut", "logdet", "cal")  # n x n blocks per class (CRAIG, AdaCore: LCMat's)
_GREEDY_COST = ("herding", "kcenter", "cdiv", "gradmatch", "glister")  # k steps over the class


def _classes(names):
    """The selector classes of METHODS names (subclasses count as their method)."""
    from .methods import METHODS
    return tuple(METHODS[name] for name in names)


def class_cost(selector, n, k):
    """The cost of one class for load balancing: n^2 for the methods over n x n blocks, k n for
    the greedy methods, n otherwise; a selector's own `distributed_cost(n, k)` wins."""
    own = getattr(selector, "distributed_cost", None)
    if own is not None:
        return float(own(n, k))
    if isinstance(selector, _classes(_BLOCK_COST)):
        return float(n) * n
    if isinstance(selector, _classes(_GREEDY_COST)):
        return float(n) * max(k, 1)
    return float(n)


def assign_classes(costs, world):
    """Owner rank of each class by LPT: the costliest class first (ties: lower class), each to
    the least loaded rank (ties: lower rank)."""
    costs = np.asarray(costs, dtype=np.float64)
    owner = np.zeros(len(costs), dtype=np.int64)
    load = np.zeros(world)
    for c in np.argsort(-costs, kind="stable"):
        r = int(np.argmin(load))
        owner[c] = r
        load[r] += costs[c]
    return owner


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------

def select_features(selector, embeddings=None, logits=None, labels=None, num_classes=None,
                    forgetting=None, indices=None):
    """`Selector.select_features` under a process group (see the module docstring); in a single
    process, `indices` reorders the rows to dataset order first."""
    if not active():
        return _single_process(selector, embeddings, logits, labels, num_classes, forgetting, indices)
    from .selectors import ScoreSelector, Uniform
    start = time.perf_counter()
    traffic.update(dict.fromkeys(traffic, 0))
    phase_seconds.clear()
    needs = selector.required()
    shard = _agree(_Shard, selector, embeddings, logits, labels, forgetting, indices, needs)
    summaries = _exchange(None, dict(shard.summary(), num_classes=num_classes))
    n, num_classes, dims = _check_global(summaries, num_classes, needs)
    if not shard.full:
        _check_permutation(shard, n)
    # an empty rank may have passed (0, 0) arrays: give them the global width
    if shard.embeddings is not None and len(shard.embeddings) == 0:
        shard.embeddings = shard.embeddings.new_zeros(0, dims[0])
    if shard.logits is not None and len(shard.logits) == 0:
        shard.logits = shard.logits.new_zeros(0, dims[1])
    counts = _all_reduce(torch.bincount(shard.labels.cpu(), minlength=num_classes)).numpy()
    check_every_class_present(counts)
    budgets = selector.budgets(counts)
    phase_seconds["inputs"] = time.perf_counter() - start
    if isinstance(selector, (ScoreSelector, Uniform)):
        picks, weights, data = _select_by_scores(selector, shard, n, num_classes, counts, budgets, summaries, dims)
    else:
        picks, weights, data = _select_by_owner(selector, shard, n, num_classes, counts, budgets, summaries, dims)
    wall = float(_all_reduce(torch.tensor([time.perf_counter() - start], dtype=torch.float64),
                             dist.ReduceOp.MAX))
    return selector.make_coreset(data, picks, weights, wall)


def _single_process(selector, embeddings, logits, labels, num_classes, forgetting, indices):
    """One process with indices=: the rows in dataset order, then the ordinary path."""
    index = as_tensor("indices", indices, 1).cpu().numpy()
    if not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"indices: must be integers, got dtype {index.dtype}")
    n = len(index)
    if n == 0 or not np.array_equal(np.sort(index), np.arange(n)):
        raise ValueError(f"indices: in one process they must be a permutation of 0..N-1 (N = {n})")
    order = torch.from_numpy(np.argsort(index))

    def reorder(x):
        if x is None:
            return None
        x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        if len(x) != n:
            raise ValueError(f"indices: has {n} entries but an array has {len(x)} rows")
        return x[order.to(x.device)]
    return selector.select_features(embeddings=reorder(embeddings), logits=reorder(logits),
                                    labels=reorder(labels), num_classes=num_classes,
                                    forgetting=reorder(forgetting))


def select(selector, model, dataset, batch_size=256, device=None, forgetting=None):
    """`Selector.select` under a process group: each rank extracts the features of its disjoint
    contiguous share of the dataset (no padding, the last shard may be shorter), on its device,
    with a progress bar on rank 0 only; then the distributed select_features. LCMat's compat
    mode extracts per class on the class's owner (its BatchNorm batches are per class)."""
    if getattr(selector, "mode", "paper") == "compat":
        return _select_compat(selector, model, dataset, device, forgetting)
    n = len(dataset)
    lo, hi = n * rank() // world_size(), n * (rank() + 1) // world_size()
    positions = np.arange(lo, hi, dtype=np.int64)
    device = device or next(model.parameters()).device
    progress = selector.progress is not False and is_lead()
    embeddings, logits, labels = _agree(_extract, model, dataset, positions, batch_size, device, progress)
    local_forgetting = None if forgetting is None else np.asarray(forgetting)[lo:hi]
    norms = getattr(selector, "network_norms", None)
    if norms is not None and len(norms) == n:  # GraNd layers="all" measured every item: keep ours
        selector.network_norms = norms[lo:hi]
    if not getattr(selector, "needs_model", False):
        return select_features(selector, embeddings=embeddings, logits=logits, labels=labels,
                               forgetting=local_forgetting, indices=positions)
    # DeepFool: the attack on this rank's items; its scores are those of its rows (row-wise)
    selector.given_scores = _agree(selector.attack_scores, model, ShardDataset(dataset, positions), device)
    try:
        return select_features(selector, embeddings=embeddings, logits=logits, labels=labels,
                               forgetting=local_forgetting, indices=positions)
    finally:
        selector.given_scores = None


def _select_compat(selector, model, dataset, device, forgetting):
    from .data import dataset_targets
    from .features import extract_features_train_bn
    labels = dataset_targets(dataset)
    counts = np.bincount(labels)
    budgets = selector.budgets(counts)
    owner = assign_classes([class_cost(selector, int(nc), int(k)) for nc, k in zip(counts, budgets)],
                           world_size())
    positions = np.flatnonzero(owner[labels] == rank())
    device = device or next(model.parameters()).device

    def extract():
        if len(positions) == 0:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
        h, z, _ = extract_features_train_bn(model, ShardDataset(dataset, positions), labels[positions],
                                            batch_size=selector.batch_size, device=device)
        return h, z
    embeddings, logits = _agree(extract)
    local_forgetting = None if forgetting is None else np.asarray(forgetting)[positions]
    return select_features(selector, embeddings=embeddings, logits=logits, labels=labels[positions],
                           forgetting=local_forgetting, indices=positions)


class ShardDataset(torch.utils.data.Dataset):
    """The items of `dataset` at `positions`, keeping an ArrayDataset's batch path."""

    def __init__(self, dataset, positions):
        self.dataset, self.positions = dataset, np.asarray(positions, dtype=np.int64)
        if hasattr(dataset, "get_batch"):
            self.get_batch = self._get_batch

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, i):
        return self.dataset[int(self.positions[i])]

    def _get_batch(self, idx, apply_transform=False):
        return self.dataset.get_batch(self.positions[np.asarray(idx, dtype=np.int64)],
                                      apply_transform=apply_transform)


def _extract(model, dataset, positions, batch_size, device, progress):
    """(embeddings, logits, labels) of the dataset items at `positions` (the one call into the
    feature-extraction code)."""
    from .features import extract_features
    if len(positions) == 0:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return extract_features(model, ShardDataset(dataset, positions), batch_size=batch_size, device=device,
                            progress=progress)


# ------------------------------------------------------------------------------------------------
# Score methods: scores sharded, picks per class on the owner
# ------------------------------------------------------------------------------------------------

# Score methods whose score needs the sample's whole class (computed on the class owner).
_CLASS_SCORES = ("cal", "moderate")


def _select_by_scores(selector, shard, n, num_classes, counts, budgets, summaries, dims):
    from .diversity import ModerateDS
    from .selectors import FDMat, ScoreSelector, Uniform
    owner = _owners(selector, counts, budgets)
    local = _Data(shard.labels, num_classes, shard.embeddings, shard.logits, shard.forgetting)
    index = shard.index
    moderate = isinstance(selector, ModerateDS)
    if isinstance(selector, FDMat):
        local.scores = as_float64_array(fdmat_scores(selector, local, counts))
    elif isinstance(selector, _classes(_CLASS_SCORES)):
        if not (selector.balance or moderate):  # Cal over the whole set: the rows stay, shards go round
            scores = cal_scores_global(selector, local, index, [s["n"] for s in summaries], n)
            local.scores = _agree(lambda: selector.checked_scores(scores) if len(local) else np.zeros(0))
        else:
            local, index = _routed_data(selector, shard, owner, num_classes, counts, budgets, summaries, dims)
            if moderate:  # the distances to the class centres; the scores once they are gathered
                local.scores = _agree(lambda: as_float64_array(selector.distances(local)) if len(local)
                                      else np.zeros(0))
            else:
                local.scores = _agree(lambda: selector.prepare(local) if len(local) else np.zeros(0))
    elif isinstance(selector, ScoreSelector):
        _check_row_wise(selector)
        local.scores = _agree(lambda: selector.prepare(local) if len(local) else np.zeros(0))
    columns = [local.labels.cpu().double().numpy()]
    if local.scores is not None:
        columns.append(local.scores)
    # difficulty="own" is the gathered score itself: computed after the gather
    own_difficulty = selector.coverage and selector.difficulty == "own"
    if selector.coverage and not own_difficulty:
        columns.append(_agree(lambda: np.asarray(selector.difficulty_scores(local), np.float64) if len(local)
                              else np.zeros(0)))
    full = gather_rows(np.stack([np.asarray(c, np.float64).reshape(len(local)) for c in columns], 1),
                       index, n)
    data = _Data(torch.from_numpy(full[:, 0].astype(np.int64)), num_classes)
    data.counts, data.budgets = counts, budgets
    data.forgetting = None
    if moderate:  # the same scores on every rank, from the gathered distances (in the compute dtype)
        data.scores = _agree(_moderate_scores, selector, data, full[:, 1])
    elif isinstance(selector, ScoreSelector):
        data.scores = full[:, 1]
    elif isinstance(selector, Uniform):
        selector.prepare(data)
    difficulty = None
    if own_difficulty:
        difficulty = np.asarray(selector.difficulty_scores(data), np.float64)
    elif selector.coverage:
        difficulty = full[:, -1]
    groups = selector.groups(data, difficulty)
    if hasattr(selector, "rng"):  # draws in group order: every rank runs every group
        picks = [selector.pick_batch(data, [g])[0] for g in groups]
        return [np.asarray(p, np.int64) for p, _ in picks], [w for _, w in picks], data
    per_class = selector.balance or selector.per_class_only
    mine = [g for g in groups if (owner[int(data.labels[g[0][0]])] if per_class else 0) == rank()]
    results = _agree(lambda: selector.pick_groups(data, mine, show=False), gather=True)
    picks = [p for r in results for p, _ in r]
    weights = [w for r in results for _, w in r]
    return picks, weights, data


def _moderate_scores(selector, data, distances):
    from .validation import check_finite_result
    d = torch.from_numpy(distances).to(selector.dtype)  # float32 distances survive float64 exactly
    scores = selector.scores_from_distances(data, d)
    check_finite_result(f"{selector.name} scores", scores, selector.overflow_hint)
    return as_float64_array(scores)


# Score methods (METHODS names) whose score of a sample depends on that sample alone.
_ROW_WISE = ("grand", "el2n", "least_confidence", "entropy", "margin", "forgetting", "deepfool")


def _check_row_wise(selector):
    """Score methods whose score of a sample depends on that sample alone can score shards."""
    known = _classes(_ROW_WISE)
    if type(selector) not in known and type(selector).scores not in {cls.scores for cls in known}:
        raise NotImplementedError(
            f"{selector.name}: not known to score one sample at a time, so it cannot run on shards; "
            f"add its name to lcmat.distributed._ROW_WISE if its scores is row-wise")


def gather_rows(values, index, n):
    """The rows `values` [n_r, m] of every rank placed at their global positions `index`: a
    float64 array [n, m] on every rank (sizes exchanged first, then one padded all_gather)."""
    values = np.asarray(values, dtype=np.float64)
    width = values.shape[1] + 1
    sizes = _exchange(None, len(index))
    device = _comm_device(torch.device("cpu"))
    buf = torch.zeros(max(sizes), width, dtype=torch.float64)
    buf[:len(index), 0] = torch.from_numpy(index.astype(np.float64))
    buf[:len(index), 1:] = torch.from_numpy(values)
    out = [torch.empty_like(buf, device=device) for _ in sizes]
    dist.all_gather(out, buf.to(device))
    traffic["all_gather"] += (len(sizes) - 1) * buf.numel() * buf.element_size()
    full = np.empty((n, width - 1), dtype=np.float64)
    for size, part in zip(sizes, out):
        part = part[:size].cpu().numpy()
        full[part[:, 0].astype(np.int64)] = part[:, 1:]
    return full


# ------------------------------------------------------------------------------------------------
# Feature methods: features routed to the class owners
# ------------------------------------------------------------------------------------------------

# Per-class feature methods by METHODS name (CRAIG and AdaCore are LCMat's subclasses).
_PER_CLASS = ("lcmat", "herding", "kcenter", "gradmatch", "glister", "cdiv", "graphcut", "logdet")
# Those that draw a random first pick per group from one generator, in group order.
_DRAW_PER_GROUP = ("kcenter", "cdiv")


def _owners(selector, counts, budgets):
    return assign_classes([class_cost(selector, int(nc), int(k)) for nc, k in zip(counts, budgets)],
                          world_size())


def _routed_data(selector, shard, owner, num_classes, counts, budgets, summaries, dims):
    """The rows of the classes this rank owns (dataset order), with their global positions."""
    clock = time.perf_counter()
    routed = route_to_owners(shard, owner, summaries, dims, selector.dtype)
    phase_seconds["route"] = time.perf_counter() - clock
    local = _Data(routed["labels"], num_classes, routed["embeddings"], routed["logits"], routed["forgetting"])
    local.counts = counts
    local.budgets = np.where(owner == rank(), budgets, 0)
    return local, routed["index"]


def _select_by_owner(selector, shard, n, num_classes, counts, budgets, summaries, dims):
    if not isinstance(selector, _classes(_PER_CLASS)):
        raise NotImplementedError(f"{selector.name}: no distributed implementation (known: per-class "
                                  f"{', '.join(_PER_CLASS)} and the score methods)")
    if not (selector.balance or selector.per_class_only):
        return _select_global(selector, shard, n, num_classes, counts, budgets)
    owner = _owners(selector, counts, budgets)
    local, position = _routed_data(selector, shard, owner, num_classes, counts, budgets, summaries, dims)
    clock = time.perf_counter()

    def prepare():
        local.scores = selector.prepare(local)
        groups = [g for g in selector.groups(local) if len(g[0])]
        return groups
    groups = _agree(prepare)
    keys = _group_keys(local, groups)
    if isinstance(selector, _classes(_DRAW_PER_GROUP)):
        sizes = [s for r in _exchange(None, [(key, len(g[0])) for key, g in zip(keys, groups)]) for s in r]
        results = _agree(_replay_kcenter, selector, local, groups, keys, sorted(sizes))
    else:
        results = _agree(lambda: selector.pick_groups(local, groups, desc=f"{selector.name} (rank 0 of "
                                                     f"{world_size()})", show=is_lead()))
    phase_seconds["pick"], clock = time.perf_counter() - clock, time.perf_counter()
    rho = getattr(selector, "rho_used", None)
    mine = [(key, position[np.asarray(p, np.int64)], w, local.labels[torch.as_tensor(np.asarray(p, np.int64))]
             .cpu().numpy(), rho[i] if rho else None) for i, (key, (p, w)) in enumerate(zip(keys, results))]
    everything = sorted((item for r in _exchange(None, mine) for item in r), key=lambda item: item[0])
    if rho is not None:
        selector.rho_used = [item[4] for item in everything if item[4] is not None]
    labels = np.zeros(n, dtype=np.int64)
    for _, p, _, y, _ in everything:
        labels[p] = y
    data = _Data(torch.from_numpy(labels), num_classes)
    data.scores = None
    phase_seconds["gather"] = time.perf_counter() - clock
    return [item[1] for item in everything], [item[2] for item in everything], data


def _group_keys(local, groups):
    """(class, order within the class) of each group: its place in the single-process order."""
    keys, seen = [], {}
    for g in groups:
        c = int(local.labels[int(g[0][0])])
        keys.append((c, seen.get(c, 0)))
        seen[c] = seen.get(c, 0) + 1
    return keys


def _replay_kcenter(selector, local, groups, keys, sizes):
    """k-Center (and Contextual Diversity) draws its first center per group from one generator in
    group order, `integers(group size)`: draw for the other ranks' groups too, pick on ours."""
    mine = dict(zip(keys, groups))
    out = {}
    for key, size in sizes:
        if key in mine:
            out[key] = selector.pick_batch(local, [mine[key]])[0]
        else:
            selector.rng.integers(size)
    return [out[key] for key in keys]


def _rounds(summaries, dims, itemsize):
    rows = max(1, ROUTE_BYTES // max(1, (dims[0] + dims[1]) * itemsize))
    return rows, max(-(-s["n"] // rows) for s in summaries)


def _all_to_all(send, send_counts, recv_counts, device):
    """Rows of `send` (grouped by destination rank, send_counts each) to their ranks."""
    comm = _comm_device(device)
    recv = torch.empty((int(sum(recv_counts)),) + tuple(send.shape[1:]), dtype=send.dtype, device=comm)
    dist.all_to_all_single(recv, send.to(comm).contiguous(), output_split_sizes=list(map(int, recv_counts)),
                           input_split_sizes=list(map(int, send_counts)))
    others = int(sum(recv_counts)) - int(recv_counts[rank()])
    traffic["all_to_all"] += others * (recv[0].numel() * recv.element_size() if len(recv) else 0)
    return recv.to(device)


def route_to_owners(shard, owner, summaries, dims, dtype):
    """Send every local row to the rank owning its class, in rounds of at most ROUTE_BYTES per
    rank. A first pass sends (position, label, forgetting) and fixes where each arriving row goes
    (dataset order); the second sends the features straight to those places."""
    world = world_size()
    rows, num_rounds = _rounds(summaries, dims, torch.tensor([], dtype=dtype).element_size())
    dest = owner[shard.labels.cpu().numpy()]
    cpu = torch.device("cpu")
    forgetting = shard.forgetting if shard.forgetting is not None else np.zeros(len(dest))
    keys_np = np.stack([shard.index, shard.labels.cpu().numpy(), forgetting.view(np.int64)], 1)
    plan, received = [], []
    for r in range(num_rounds):
        lo, hi = min(r * rows, len(dest)), min((r + 1) * rows, len(dest))
        order = np.argsort(dest[lo:hi], kind="stable") + lo
        send_counts = np.bincount(dest[lo:hi], minlength=world)
        recv_counts = _all_to_all(torch.from_numpy(send_counts), [1] * world, [1] * world, cpu).numpy()
        received.append(_all_to_all(torch.from_numpy(keys_np[order]), send_counts, recv_counts, cpu).numpy())
        plan.append((order, send_counts, recv_counts))
    keys = np.concatenate(received) if received else np.zeros((0, 3), np.int64)
    arrival = np.argsort(keys[:, 0], kind="stable")
    slot = np.empty(len(keys), dtype=np.int64)
    slot[arrival] = np.arange(len(keys))
    out = {"index": keys[arrival, 0], "labels": torch.from_numpy(keys[arrival, 1].copy()).to(shard.device),
           "forgetting": keys[arrival, 2].copy().view(np.float64) if shard.forgetting is not None else None}
    for name, width in (("embeddings", dims[0]), ("logits", dims[1])):
        x = getattr(shard, name)
        if x is None:
            out[name] = None
            continue
        buf = torch.empty(len(keys), width, dtype=dtype, device=shard.device)
        start, release = 0, shard.release.get(name)
        for order, send_counts, recv_counts in plan:
            send = x[torch.from_numpy(order).to(x.device)]
            if release is not None and len(order):  # this round's rows of a memory map are read
                release(int(order.min()), int(order.max()) + 1)
            got = _all_to_all(send, send_counts, recv_counts, x.device)
            buf[torch.from_numpy(slot[start:start + len(got)]).to(x.device)] = got
            start += len(got)
        out[name] = buf
    return out


# ------------------------------------------------------------------------------------------------
# Global budgets (balance=False) of the greedy methods: one greedy over rows that stay put
# ------------------------------------------------------------------------------------------------

def _select_global(selector, shard, n, num_classes, counts, budgets):
    """balance=False of Herding, k-Center, Contextual Diversity, GradMatch and Glister: one greedy
    over the whole set (or over each coverage stratum of it), its rows left on the ranks that
    hold them. Every rank holds its own rows, the greedy's per-row state for them (running
    distances, Gram columns, validation logits) and what every rank replicates: the k picks,
    their vectors, and GradMatch's k x k system. Each step: every rank's best candidate among its
    rows, with that row's vector, in one all_gather (`_choose`); every rank then updates its rows
    with the winner's vector. Labels (and coverage's difficulty) are gathered, N numbers each;
    the features never are. Per rank and step, received: (W - 1) (P + 3) float64, P the vector
    (Herding, k-Center: D; Contextual Diversity: 2 C; GradMatch: D + C + 1 + k, plus an
    all_reduce of the new Gram column at the picks, at most k; Glister: D + C, plus without a
    validation set the partial validation gradient, W (C (D + 1)) float64)."""
    order = np.argsort(shard.index, kind="stable")
    index = shard.index[order]
    rows = torch.from_numpy(order).to(shard.device)
    local = _Data(shard.labels[rows], num_classes,
                  None if shard.embeddings is None else shard.embeddings[rows],
                  None if shard.logits is None else shard.logits[rows],
                  None if shard.forgetting is None else shard.forgetting[order])
    local.counts, local.budgets = counts, budgets

    def prepare():
        local.scores = selector.prepare(local)
        columns = [local.labels.cpu().double().numpy()]
        if selector.coverage:
            columns.append(np.asarray(selector.difficulty_scores(local), np.float64).reshape(len(local))
                           if len(local) else np.zeros(0))
        return np.stack(columns, 1)
    full = gather_rows(_agree(prepare), index, n)
    data = _Data(torch.from_numpy(full[:, 0].astype(np.int64)), num_classes)
    data.counts, data.budgets, data.scores = counts, budgets, None
    groups = selector.groups(data, full[:, 1] if selector.coverage else None)
    run = _global_run(selector)
    clock = time.perf_counter()
    picks, weights = [], []
    for positions, k, *_ in groups:
        member, keys = _group_members(positions, index)
        chosen, w = run(selector, local, torch.from_numpy(member).to(shard.device), keys, int(k), len(positions))
        picks.append(positions[np.asarray(chosen, dtype=np.int64)])
        weights.append(w)
    phase_seconds["pick"] = time.perf_counter() - clock
    return picks, weights, data


def _global_run(selector):
    for name, run in (("herding", _global_herding), ("kcenter", _global_kcenter), ("cdiv", _global_cdiv),
                      ("gradmatch", _global_gradmatch), ("glister", _global_glister)):
        if isinstance(selector, _classes((name,))):
            return run
    raise NotImplementedError(f"{selector.name}: balance=False has no distributed implementation")


def _group_members(positions, index):
    """(this rank's rows in the group, their places in the group), by increasing place: the tie
    rule (the lowest place first) then falls on the first of equal values, as in one process."""
    order = np.argsort(positions, kind="stable")
    sorted_positions = positions[order]
    at = np.minimum(np.searchsorted(sorted_positions, index), max(len(positions) - 1, 0))
    member = np.flatnonzero(sorted_positions[at] == index) if len(positions) else np.zeros(0, np.int64)
    keys = order[at[member]]
    by_key = np.argsort(keys, kind="stable")
    return member[by_key], keys[by_key]


def _gather_cpu(buf):
    """all_gather of a CPU tensor (the same size on every rank): every rank's, on the CPU."""
    device = _comm_device(torch.device("cpu"))
    out = [torch.empty_like(buf, device=device) for _ in range(world_size())]
    dist.all_gather(out, buf.to(device))
    traffic["all_gather"] += (world_size() - 1) * buf.numel() * buf.element_size()
    return [t.cpu() for t in out]


def _sum_in_rank_order(t):
    """The sum over the ranks of t (float64), added in rank order: the same bits on every rank."""
    parts = _gather_cpu(t.detach().double().cpu().reshape(-1))
    total = parts[0].clone()
    for part in parts[1:]:
        total += part
    return total.reshape(t.shape).to(t.device)


def _global_scale(x):
    """validation.power_of_two_scale over the rows of every rank (max |x| reduced by MAX)."""
    from .validation import power_of_two_scale
    top = x.abs().max().double().reshape(1) if x.numel() else torch.zeros(1, dtype=torch.float64, device=x.device)
    return power_of_two_scale(_all_reduce(top, dist.ReduceOp.MAX))


def _candidate_order(part):
    value, key = float(part[0]), float(part[1])
    return (not np.isnan(value), 0.0 if np.isnan(value) else -value, key)


def _choose(compute, keys, width):
    """One greedy step over the rows of every rank. compute() -> (values [m] of this rank's rows
    in key order, payload(j) -> the vector [width] of local row j that every rank needs once j is
    chosen). The choice is the largest value over the ranks (a NaN first, as torch.argmax; the
    lowest key among equal values, as one process's argmax over the group in key order). Each
    rank sends its own best (value, key, failure flag, payload) in one all_gather; a rank whose
    compute raised flags it, and every rank raises its error. Returns (key, value, the local
    row when this rank holds the winner else None, the payload as float64 on the CPU)."""
    buf = torch.zeros(width + 3, dtype=torch.float64)
    buf[0], buf[1] = -torch.inf, torch.inf
    failure, j = None, None
    try:
        values, payload = compute()
        if len(keys):
            j = int(torch.argmax(values))
            buf[0], buf[1] = float(values[j]), float(keys[j])
            buf[3:] = payload(j).detach().double().cpu().reshape(-1)
    except Exception as err:  # exchanged below, then raised on every rank
        failure, buf[2] = (type(err).__name__, str(err), err), 1.0
    parts = _gather_cpu(buf)
    if any(float(part[2]) for part in parts):
        _exchange(failure)
    best = min(range(len(parts)), key=lambda r: _candidate_order(parts[r]))
    return int(parts[best][1]), float(parts[best][0]), (j if best == rank() else None), parts[best][3:]


def _farthest_first(keys, k, first, width, payload, distances_to, like):
    """k-center greedy (selectors.kcenter_order, reference.kcenter_symmetric_kl) over the rows
    of every rank: the row of key `first`, then k - 1 times the row farthest from the picks
    (running minimum distances, -1 at a pick). distances_to(vector) -> [m]. Returns the keys."""
    if k == 0:
        return []
    is_first = torch.from_numpy(keys == first).to(like.device)
    start = torch.where(is_first, 0.0, -torch.inf).to(like.dtype)
    key, _, j, row = _choose(lambda: (start, payload), keys, width)
    picks = [key]
    state = {"min": torch.full((len(keys),), torch.inf, dtype=like.dtype, device=like.device), "j": j, "row": row}

    def compute():
        state["min"] = torch.minimum(state["min"], distances_to(state["row"].to(device=like.device, dtype=like.dtype)))
        if state["j"] is not None:
            state["min"][state["j"]] = -1.0  # never re-pick a center
        return state["min"], payload
    for _ in range(k - 1):
        key, _, state["j"], state["row"] = _choose(compute, keys, width)
        picks.append(key)
    return picks


def _global_herding(selector, local, member, keys, k, size):
    """selectors.herding_order over the rows of every rank; the group mean from the float64
    partial sums of the ranks, added in rank order."""
    from .selectors import herding_gaps
    x = local.embeddings[member]
    x = x / _global_scale(x)
    mean = (_sum_in_rank_order(x.double().sum(0)) / size).to(x.dtype)
    chosen_sum = torch.zeros_like(mean)
    available = torch.ones(len(x), dtype=torch.bool, device=x.device)
    picks = []
    for t in range(k):
        def compute():
            return -herding_gaps(x, mean, chosen_sum, t).masked_fill(~available, torch.inf), lambda j: x[j]
        key, _, j, row = _choose(compute, keys, x.shape[1])
        if j is not None:
            available[j] = False
        chosen_sum += row.to(device=x.device, dtype=x.dtype)
        picks.append(key)
    return picks, None


def _global_kcenter(selector, local, member, keys, k, size):
    """KCenterGreedy.pick over the rows of every rank (the first center from the replicated rng)."""
    from .selectors import squared_distances_to
    first = int(selector.rng.integers(size))
    x = local.embeddings[member]
    x = x / _global_scale(x)
    picks = _farthest_first(keys, k, first, x.shape[1], lambda j: x[j], lambda row: squared_distances_to(x, row), x)
    return picks, None


def _global_cdiv(selector, local, member, keys, k, size):
    """ContextualDiversity.pick over the rows of every rank: the picked row's log p and p travel."""
    from .reference import kl_to_row
    first = int(selector.rng.integers(size))
    log_p = torch.log_softmax(local.logits[member], 1)
    p = log_p.exp()
    C = log_p.shape[1]
    picks = _farthest_first(keys, k, first, 2 * C, lambda j: torch.cat([log_p[j], p[j]]),
                            lambda row: kl_to_row(log_p, p, row[:C], row[C:]), log_p)
    return picks, None


def _group_classes(labels, num_classes):
    """The classes present in the group, over every rank."""
    present = torch.bincount(labels.cpu(), minlength=num_classes).clamp_max_(1)
    return torch.nonzero(_all_reduce(present, dist.ReduceOp.MAX)).flatten()


def _global_gradmatch(selector, local, member, keys, k, size):
    """GradMatch.pick over the rows of every rank: the target from the ranks' float64 partial sums
    (or from the replicated validation rows), then `_global_omp`."""
    from . import ops
    from .reference import target_dot
    h, z, y = local.embeddings[member].double(), local.logits[member], local.labels[member]
    e, _ = ops.last_layer_factors(z.double(), y, backend=selector.backend)
    held = selector.held_out_rows(_group_classes(y, local.num_classes))
    if held is None:
        C, D = e.shape[1], h.shape[1]
        sums = _sum_in_rank_order(torch.cat([e.sum(0), (e.T @ h).reshape(-1)]))
        scale = (1.0 if selector.deepcore else float(size)) / size
        b = target_dot(h, e, sums[:C] * scale, sums[C:].reshape(C, D) * scale)
    else:
        hv, zv, yv = held
        ev = ops.last_layer_factors(zv.double(), yv, backend=selector.backend)[0]
        scale = (1.0 if selector.deepcore else float(size)) / len(hv)
        b = ops.gradient_target_dot(h, e, hv.double(), ev, scale, backend=selector.backend)
    picks, w = _global_omp(h, e, b, keys, k, selector.lam, selector.deepcore)
    if not bool(torch.isfinite(w).all()):
        raise RuntimeError("gradmatch: the weights are not finite (the gradients overflow)")
    return picks, as_float64_array(w)


def _global_omp(h, e, b, keys, k, lam, deepcore):
    """reference.omp_last_layer (deepcore=True: omp_last_layer_deepcore) over the rows of every
    rank. Each rank keeps the Gram columns of its rows; the picked row's h, e, b and its earlier
    Gram entries travel with it, and the new column's entries at the picks come from the picks'
    owners (an all_reduce of k numbers at most, each the sum of one value and zeros, so exact):
    the k x k system is then the one a single process solves, on every rank."""
    from .reference import gradient_column, nnls_quadratic, residual_correlation
    m, D, C = len(h), h.shape[1], e.shape[1]
    columns = b.new_zeros(m, k)
    available = torch.ones(m, dtype=torch.bool, device=b.device)
    gram = b.new_zeros(k, k)  # gram[s, t] = G[pick s, pick t], as pick s's owner computed it
    chosen_b = b.new_zeros(k)
    mine = {}  # step -> local row, for the picks this rank holds
    picks, w, A = [], b.new_zeros(0), None
    corr = b.clone()
    for step in range(k):
        def compute():
            def payload(j):
                return torch.cat([h[j], e[j], b[j:j + 1], columns[j, :step], b.new_zeros(k - step)])
            return corr.masked_fill(~available, -torch.inf), payload
        key, _, j, row = _choose(compute, keys, D + C + 1 + k)
        row = row.to(device=b.device, dtype=b.dtype)
        picks.append(key)
        if j is not None:
            available[j] = False
            mine[step] = j
        columns[:, step] = gradient_column(h, e, row[:D], row[D:D + C])
        at_picks = b.new_zeros(step + 1)
        for s, r in mine.items():
            at_picks[s] = columns[r, step]
        gram[:step + 1, step] = _all_reduce(at_picks)
        gram[step, :step] = row[D + C + 1:D + C + 1 + step]
        chosen_b[step] = row[D + C]
        b_picks = chosen_b[:step + 1].clone()
        if not deepcore:
            A = gram[:step + 1, :step + 1] + lam * torch.eye(step + 1, dtype=b.dtype, device=b.device)
            w = nnls_quadratic(A, b_picks, torch.cat([w, w.new_zeros(1)]), settled=True)
        elif step == 0:
            norm = gram[0, 0]
            w = b_picks / norm if float(norm) > 0 else b.new_zeros(1)
        else:
            A = gram[:step + 1, :step + 1] + lam * torch.eye(step + 1, dtype=b.dtype, device=b.device)
            w = torch.linalg.lstsq(A, b_picks[:, None]).solution[:, 0]
        corr = residual_correlation(b, columns[:, :step + 1], w)
    if deepcore and k == 1:
        w = b.new_ones(1)
    elif deepcore and k > 1:
        w = nnls_quadratic(A.T @ A, A.T @ chosen_b)
    return picks, w


def _global_glister(selector, local, member, keys, k, size):
    """Glister.pick over the rows of every rank. With validation= the held-out rows are
    replicated and every rank moves their logits alike; without, the validation rows are the
    group's own, each rank moves its rows' logits and the validation gradient is summed from the
    ranks' float64 partial sums (reference.validation_gradient_sums) each step."""
    from . import ops, reference
    h, z, y = local.embeddings[member], local.logits[member], local.labels[member]
    e, _ = ops.last_layer_factors(z, y, backend=selector.backend)
    held = selector.held_out_rows(_group_classes(y, local.num_classes))
    D, C = h.shape[1], e.shape[1]
    hv, z_val, yv = (h, z.clone(), y) if held is None else (held[0], held[1].clone(), held[2])

    def gains():
        if held is not None:
            return reference.glister_gains(h, e, *reference.validation_gradient(hv, z_val, yv))
        bias, weight = reference.validation_gradient_sums(hv, reference.last_layer_factors(z_val, yv)[0])
        sums = _sum_in_rank_order(torch.cat([bias, weight.reshape(-1)]))
        return reference.glister_gains(h, e, (sums[:C] / size).to(h.dtype), (sums[C:].reshape(C, D) / size).to(h.dtype))
    current = gains()
    available = torch.ones(len(h), dtype=torch.bool, device=h.device)
    picks, picked = [], []
    for _ in range(k):
        def compute():
            return current.masked_fill(~available, -torch.inf), lambda j: torch.cat([h[j], e[j]])
        key, value, j, row = _choose(compute, keys, D + C)
        picks.append(key)
        picked.append(value)
        if j is not None:
            available[j] = False
        if selector.eta != 0:  # eta = 0: the gains never change (the top k of the first ones)
            row = row.to(device=h.device, dtype=h.dtype)
            z_val -= selector.eta * reference.validation_logit_step(hv, row[:D], row[D:])
            current = gains()
    if not np.isfinite(picked).all():
        raise RuntimeError("glister: the gains are not finite (the validation logits overflow; lower eta)")
    return picks, None


# ------------------------------------------------------------------------------------------------
# Cal over the whole set: neighbours found by a ring pass of embedding shards
# ------------------------------------------------------------------------------------------------

KNN_ELEMENTS = 2 ** 24  # candidate distances held at once per rank in the ring pass


def _ring_shift(tensor, step, sizes):
    """This rank's rows `tensor` [n_r, ...] to rank r + step, rank r - step's rows here."""
    world, me = world_size(), rank()
    dst, src = (me + step) % world, (me - step) % world
    device = _comm_device(tensor.device)
    recv = torch.empty((sizes[src],) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=device)
    requests = []
    if len(tensor):
        requests.append(dist.isend(tensor.to(device).contiguous(), dst))
    if len(recv):
        requests.append(dist.irecv(recv, src))
    for request in requests:
        request.wait()
    traffic["send_recv"] += recv.numel() * recv.element_size()
    return recv.to(tensor.device)


def cal_scores_global(selector, local, index, sizes, n):
    """Cal's scores (balance=False: neighbours over the whole set) of this rank's rows, equal to
    one process's. Each rank holds its rows' embeddings and log-probabilities, their k best
    neighbours so far (distance and dataset position), and one other rank's shard at a time: in
    W - 1 ring steps every rank's embeddings (with their positions) visit every other rank once;
    the squared distances are computed as reference.knn_indices computes them, each shard's k
    nearest taken as it takes them, and merged with the best so far by (distance, position). A
    second ring pass brings the neighbours' log-probabilities, [n_r, k, C]. Received per rank:
    (N - n_r) (D + C + 2) numbers (float32 features, int64 positions)."""
    from .reference import neighbour_kl_rows, smallest_lowest_index
    order = torch.from_numpy(np.argsort(index, kind="stable")).to(local.embeddings.device)
    x = local.embeddings[order]  # in dataset order: a shard's columns are then in position order
    log_p = torch.log_softmax(local.logits[order], 1)
    k = min(selector.neighbours, n - 1)
    m = len(x)
    if k < 1:
        return torch.zeros(m, dtype=log_p.dtype, device=log_p.device)
    keys = torch.from_numpy(np.sort(index)).to(x.device)
    sq = (x * x).sum(1)
    best_d = torch.full((m, k), torch.inf, dtype=x.dtype, device=x.device)
    best_key = torch.full((m, k), n, dtype=torch.long, device=x.device)
    for step in range(world_size()):
        fx = x if step == 0 else _ring_shift(x, step, sizes)
        fkeys = keys if step == 0 else _ring_shift(keys, step, sizes)
        near = min(k, len(fx) - (step == 0))
        if near < 1:
            continue
        fsq = (fx * fx).sum(1)
        rows = max(1, KNN_ELEMENTS // len(fx))
        for lo in range(0, m, rows):
            hi = min(m, lo + rows)
            d2 = (sq[lo:hi, None] + fsq[None, :] - 2.0 * (x[lo:hi] @ fx.T)).clamp_min_(0.0)
            if step == 0:  # a row is never its own neighbour
                d2[torch.arange(hi - lo, device=x.device), torch.arange(lo, hi, device=x.device)] = torch.inf
            cols = smallest_lowest_index(d2, near)
            vals = torch.cat([best_d[lo:hi], d2.gather(1, cols)], 1)
            cand = torch.cat([best_key[lo:hi], fkeys[cols]], 1)
            by_key = cand.argsort(dim=1, stable=True)
            vals, cand = vals.gather(1, by_key), cand.gather(1, by_key)
            by_value = vals.argsort(dim=1, stable=True)[:, :k]
            best_d[lo:hi], best_key[lo:hi] = vals.gather(1, by_value), cand.gather(1, by_value)
    log_nb = torch.empty(m, k, log_p.shape[1], dtype=log_p.dtype, device=log_p.device)
    for step in range(world_size()):
        flog = log_p if step == 0 else _ring_shift(log_p, step, sizes)
        fkeys = keys if step == 0 else _ring_shift(keys, step, sizes)
        if len(fkeys):
            at = torch.searchsorted(fkeys, best_key).clamp_max_(len(fkeys) - 1)
            hit = fkeys[at] == best_key
            log_nb[hit] = flog[at[hit]]
    scores = torch.empty(m, dtype=log_p.dtype, device=log_p.device)
    scores[order] = neighbour_kl_rows(log_p, log_nb, selector.variant == "deepcore")
    return scores


# ------------------------------------------------------------------------------------------------
# FDMat and Sinkhorn over row shards
# ------------------------------------------------------------------------------------------------

def fdmat_scores(selector, local, counts):
    """FDMat's transport scores of the local rows, equal to those of one process on all rows:
    the global minimum (negative='shift'), the transform's mean, the class prototypes and the
    Sinkhorn column updates are reduced across ranks."""
    from . import ops
    x = local.embeddings
    low = _all_reduce(x.min().reshape(1) if len(x) else torch.full((1,), torch.inf, dtype=x.dtype,
                                                                    device=x.device), dist.ReduceOp.MIN)
    low = float(low)
    if low < 0:
        if selector.negative == "error":
            raise ValueError(f"embeddings: FDMat expects non-negative (post-ReLU) features, the "
                             f"smallest is {low:.4g}; pass negative='shift' to shift them")
        x = x - low
    n = int(counts.sum())
    # the transform of lcmat.reference.fdmat_transform, with the mean over all ranks' rows
    x = (x + 1e-6).pow(selector.beta)
    norm = x.norm(dim=1, keepdim=True)
    mean = _all_reduce(x.sum(0, dtype=torch.float64)).div_(n).to(x.dtype)
    x = x.sub_(mean).div_(norm)
    sums = _all_reduce(torch.zeros(local.num_classes, x.shape[1], dtype=torch.float64, device=x.device)
                       .index_add_(0, local.labels, x.double()))
    prototypes = (sums / torch.as_tensor(counts, dtype=torch.float64, device=x.device)[:, None]).to(x.dtype)
    M = ops.prototype_cost(x, prototypes, backend=selector.backend) if len(x) else x.new_zeros(0, len(counts))
    a = torch.ones(len(x), dtype=M.dtype, device=M.device)
    b = torch.as_tensor(counts, dtype=M.dtype, device=M.device)
    reg = 1.0 / selector.lam
    f, g, n_iter, err = sinkhorn_log_sharded(a, b, M, reg, selector.max_iter, selector.tol)
    selector.last_ot = {"iterations": int(n_iter), "marginal_error": float(err)}
    if not float(err) <= selector.tol:
        warnings.warn(f"FDMat: Sinkhorn stopped at max_iter={selector.max_iter} with relative marginal error "
                      f"{float(err):.2g} > tol={selector.tol:g}; the scores come from the last iterate (raise "
                      f"max_iter, or lower lam for a smoother plan)", RuntimeWarning, stacklevel=3)
    if len(x) == 0:
        return torch.zeros(0, dtype=M.dtype)
    return ops.fdmat_scores(M, f, g, reg, backend=selector.backend)


def _log_mass(x):
    return torch.where(x > 0, x.log(), torch.full_like(x, -torch.inf))


def _chunks(n):
    return [(s, min(s + SINKHORN_ROWS, n)) for s in range(0, n, SINKHORN_ROWS)] or [(0, 0)]


def _column_lse(f, M, reg):
    """LSE_i ((f_i - M_ij) / reg) over the rows of every rank, [m]: each rank's running maximum
    and shifted sum over its row chunks, then all_reduce of the maximum and of the sums shifted
    to it."""
    m = M.shape[1]
    top = torch.full((m,), -torch.inf, dtype=M.dtype, device=M.device)
    total = torch.zeros(m, dtype=M.dtype, device=M.device)
    for lo, hi in _chunks(len(f)):
        if hi == lo:
            continue
        z = (f[lo:hi, None] - M[lo:hi]) / reg
        new_top = torch.maximum(top, z.max(0).values)
        safe = torch.where(torch.isfinite(new_top), new_top, torch.zeros_like(new_top))
        total = total * torch.exp(top - safe).nan_to_num_(0.0) + torch.exp(z - safe).sum(0)
        top = new_top
    glob = _all_reduce(top, dist.ReduceOp.MAX)
    safe = torch.where(torch.isfinite(glob), glob, torch.zeros_like(glob))
    total = _all_reduce(total * torch.exp(top - safe).nan_to_num_(0.0))
    return safe + total.log()


def sinkhorn_log_sharded(a, b, M, reg, max_iter=1000, tol=1e-6, check_every=1):
    """Log-domain Sinkhorn (lcmat.reference.sinkhorn) with the rows split over the ranks: each
    rank holds a [n_r] and M [n_r, m] of its rows, every rank the same b [m]. The row update is
    local; the column update reduces its log-sum-exp across ranks; the relative marginal error
    is summed across ranks, so every rank stops at the same iteration. Returns (f [n_r] of the
    local rows, g [m], n_iter, err), equal to one process's solver on the stacked rows."""
    log_a, log_b = _log_mass(a), _log_mass(b)
    f, g = torch.zeros_like(a), torch.zeros_like(b)
    total_a = float(_all_reduce(a.sum().reshape(1)))
    err = torch.tensor(float("inf"), dtype=M.dtype)
    it = 0
    for it in range(1, max_iter + 1):
        for lo, hi in _chunks(len(f)):
            f[lo:hi] = reg * log_a[lo:hi] - reg * torch.logsumexp((g[None, :] - M[lo:hi]) / reg, dim=1)
        g = reg * log_b - reg * _column_lse(f, M, reg)
        if it % check_every == 0 or it == max_iter:
            local = torch.zeros(1, dtype=M.dtype, device=M.device)
            for lo, hi in _chunks(len(f)):
                rows = torch.exp((f[lo:hi, None] + g[None, :] - M[lo:hi]) / reg).sum(1)
                local += (rows - a[lo:hi]).abs().sum()
            err = (_all_reduce(local) / total_a)[0]
            if not bool(err > tol):
                break
    return f, g, it, err


# ------------------------------------------------------------------------------------------------
# The experiment command under torchrun
# ------------------------------------------------------------------------------------------------

def follower_settings(settings):
    """run_experiment's settings for this rank: unchanged on rank 0; on the others, a private
    temporary out_dir (holding a copy of OUT/results.csv, so --resume and the overwrite check
    decide the same on every rank), no progress bars and no log. Every rank then runs the same
    plan; only the selection is shared among them. Returns (settings, temporary folder or None)."""
    import shutil
    import tempfile
    from pathlib import Path
    if not active() or is_lead():
        if active():
            dist.barrier()
        return settings, None
    folder = tempfile.mkdtemp(prefix=f"lcmat-rank{rank()}-")
    results = Path(settings["out_dir"]) / "results.csv"
    if results.is_file() and not settings.get("overwrite"):
        shutil.copy(results, folder)
    dist.barrier()  # copied before rank 0 touches OUT
    return dict(settings, out_dir=folder, progress=False, log=lambda *args, **kwargs: None), folder
