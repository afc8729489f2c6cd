"""Gradient-matching baselines of the LCMat and DeepCore comparison tables: GradMatch, Glister and
AdaCore, thin selectors over `lcmat.ops` on last-layer gradients (never materialised: see
lcmat/reference/omp.py, glister.py and adacore.py for the identities).

GradMatch and Glister take an optional held-out set, `validation=`: its features as a dict
{"embeddings", "logits", "labels"}, a tuple (embeddings, logits, labels), the path of an .npz file
holding those three arrays (the command line's form), or, for `select(model, dataset)` only, a
dataset whose features the same model extracts. With balance=True a class is matched against the
validation rows of that class (as DeepCore does); every class needs some.
"""
import os

import numpy as np
import torch

from . import ops
from .selectors import Features, LCMat, Selector
from .validation import as_float64_array, check_bool, check_positive


def _validation_arrays(validation):
    """(embeddings, logits, labels) from the accepted forms of `validation=`."""
    if isinstance(validation, (str, os.PathLike)):
        if not os.path.isfile(validation):
            raise ValueError(f"validation: no such file {str(validation)!r}")
        with np.load(validation) as f:
            missing = [k for k in ("embeddings", "logits", "labels") if k not in f]
            if missing:
                raise ValueError(f"validation: {str(validation)!r} lacks the arrays {missing}")
            return f["embeddings"], f["logits"], f["labels"]
    if isinstance(validation, dict):
        missing = [k for k in ("embeddings", "logits", "labels") if validation.get(k) is None]
        if missing:
            raise ValueError(f"validation: the dict lacks {missing}")
        return validation["embeddings"], validation["logits"], validation["labels"]
    if isinstance(validation, torch.utils.data.Dataset):
        raise ValueError("validation: a dataset needs the model, so select(model, dataset); "
                         "select_features takes the validation features (embeddings, logits, labels)")
    if isinstance(validation, (tuple, list)) and len(validation) == 3:
        return tuple(validation)
    raise ValueError("validation: expected None, a dict or a tuple (embeddings, logits, labels), an .npz "
                     f"path or a dataset, got {type(validation).__name__}")


def _check_validation_option(validation):
    if validation is not None and not isinstance(validation, torch.utils.data.Dataset):
        _validation_arrays(validation)  # fail at construction, not after the work has started
    return validation


class _ValidationSelector(Selector):
    """Shared by GradMatch and Glister: the held-out rows each group is matched against."""
    needs = ("embeddings", "logits")

    def select(self, model, dataset, batch_size=256, device=None, forgetting=None):
        if not isinstance(self.validation, torch.utils.data.Dataset):
            return super().select(model, dataset, batch_size, device, forgetting)
        from .features import extract_features
        device = device or next(model.parameters()).device
        held_out = extract_features(model, self.validation, batch_size=batch_size, device=device,
                                    progress=self.progress is not False)
        given, self.validation = self.validation, held_out
        try:
            return super().select(model, dataset, batch_size, device, forgetting)
        finally:
            self.validation = given

    def prepare(self, data):
        self._val = None
        if self.validation is None:
            return None
        h, z, y = _validation_arrays(self.validation)
        try:
            val = Features(y, h, z, data.num_classes, self.dtype)
        except ValueError as err:
            raise ValueError(f"validation: {err}") from None
        if val.embeddings.shape[1] != data.embeddings.shape[1]:
            raise ValueError(f"validation: embeddings have {val.embeddings.shape[1]} columns, the training "
                             f"ones {data.embeddings.shape[1]}")
        self._val = val.embeddings.to(data.embeddings.device), val.logits.to(data.embeddings.device), \
            val.labels.to(data.embeddings.device)
        return None

    def _group_rows(self, data, positions):
        """(h, z, y) of the group's training rows, and of the rows it is matched against: the
        validation rows of the group's classes, or the group itself without a validation set."""
        index = torch.as_tensor(positions, device=data.labels.device)
        rows = data.embeddings[index], data.logits[index], data.labels[index]
        if self._val is None:
            return rows, rows
        return rows, self.held_out_rows(torch.unique(rows[2]))

    def held_out_rows(self, classes):
        """(h, z, y) of the validation rows of the given classes (after `prepare`), or None
        without a validation set. Every class has validation rows (prepare refuses a class
        without), so none of them is empty."""
        if self._val is None:
            return None
        h, z, y = self._val
        keep = torch.isin(y, torch.as_tensor(classes, device=y.device))
        return h[keep], z[keep], y[keep]


class GradMatch(_ValidationSelector):
    """GradMatch (Killamsetty et al., ICML 2021): non-negative orthogonal matching pursuit on
    last-layer gradients, per class, with weights. Per group, the pursuit on the gradients g_i
    (lcmat/reference/omp.py) approximately solves

        min_{|S| = k, w >= 0} || sum_{j in S} w_j g_j - t ||^2 + lam ||w||^2,

    t the group's gradient sum sum_i g_i (the paper's full training gradient). Each step picks
    the unselected g_i of largest g_i . r (r the residual), then re-solves the weights by NNLS on
    the picks. Returns the weights, which count training samples (sum about the group size).
    The paper's pursuit may stop once the residual is below a tolerance; here it always makes its
    k picks (a pick that cannot help keeps weight 0), as every lcmat budget is exact.
    GradMatch-Val: `validation=` held-out features (see lcmat.matching); t is then the group size
    times the mean gradient of the validation rows of the group's classes, so the weights keep
    the same scale. lam: the paper's ridge (0.5, the GradMatch authors' default).

    The pursuit runs in float64 (its k x k solves amplify rounding); memory n x k for the Gram
    columns of the picks, never n x n nor n x C (D + 1).

    deepcore=True runs DeepCore's code instead (deepcore/methods/gradmatch.py, with lam=1 there):
    t is the mean gradient (weights sum to about 1), the weights during the pursuit are the
    unconstrained ridge solutions, the final ones DeepCore's NNLS on the normal equations, a
    single pick gets weight 1. DeepCore then drops picks of weight 0 and returns fewer than k;
    here every group keeps its k picks and such picks keep weight 0.
    """
    name = "gradmatch"

    def __init__(self, fraction=0.1, lam=0.5, validation=None, deepcore=False, balance=True, seed=0,
                 backend=None, progress=None, dtype=torch.float32, coverage=False, difficulty="el2n",
                 prune_hard=0.1, num_strata=50):
        super().__init__(fraction, balance, seed, backend, progress, dtype, coverage, difficulty,
                         prune_hard, num_strata)
        self.lam = check_positive("lam", lam, allow_zero=True)
        self.validation = _check_validation_option(validation)
        self.deepcore = check_bool("deepcore", deepcore)

    def pick(self, data, positions, k):
        (h, z, y), (hv, zv, yv) = self._group_rows(data, positions)
        h, hv = h.double(), hv.double()
        e, _ = ops.last_layer_factors(z.double(), y, backend=self.backend)
        ev = e if self._val is None else ops.last_layer_factors(zv.double(), yv, backend=self.backend)[0]
        # t = sum of the group's gradients (paper) or their mean (DeepCore), from the target rows.
        scale = (1.0 if self.deepcore else float(len(h))) / len(hv)
        b = ops.gradient_target_dot(h, e, hv, ev, scale, backend=self.backend)
        picks, w = ops.omp_last_layer(h, e, b, k, self.lam, self.deepcore, backend=self.backend)
        if not bool(torch.isfinite(w).all()):
            raise RuntimeError("gradmatch: the weights are not finite (the gradients overflow)")
        return positions[picks.cpu().numpy()], as_float64_array(w)


class Glister(_ValidationSelector):
    """Glister (Killamsetty et al., AAAI 2021): greedy first-order gain on the validation loss,
    with the last layer's update step after each pick. GLISTER-ONLINE's greedy on the last
    layer: per group (class), repeatedly pick the sample of largest first-order (Taylor) gain on
    the validation loss, g_i . grad L_V(theta_S), then take the model update step of the paper,
    theta_S <- theta_S - eta g_pick, and re-evaluate the validation gradient under the moved
    last layer (exact: only the last layer moves, lcmat/reference/glister.py). The validation
    set is the group itself (the training set) unless `validation=` gives held-out features
    (Glister-Val; see lcmat.matching). No weights.

    eta: the step (DeepCore's default, its args.lr = 0.1). eta=0 reproduces DeepCore's code,
    whose greedy never takes the update step (deepcore/methods/glister.py hands it over as
    `upadate_state=`, a keyword its optimizers never read), i.e. the top k of g_i . grad L_V(theta).
    """
    name = "glister"

    def __init__(self, fraction=0.1, eta=0.1, validation=None, balance=True, seed=0, backend=None,
                 progress=None, dtype=torch.float32, coverage=False, difficulty="el2n", prune_hard=0.1,
                 num_strata=50):
        super().__init__(fraction, balance, seed, backend, progress, dtype, coverage, difficulty,
                         prune_hard, num_strata)
        self.eta = check_positive("eta", eta, allow_zero=True)
        self.validation = _check_validation_option(validation)

    def pick(self, data, positions, k):
        (h, z, y), (hv, zv, yv) = self._group_rows(data, positions)
        e, _ = ops.last_layer_factors(z, y, backend=self.backend)
        picks, gains = ops.glister_greedy(h, e, hv, zv, yv, k, self.eta, backend=self.backend)
        if not bool(torch.isfinite(gains).all()):
            raise RuntimeError("glister: the gains are not finite (the validation logits overflow; lower eta)")
        return positions[picks.cpu().numpy()], None


class AdaCore(LCMat):
    """AdaCore (Pooladzandi, Davini and Mirzasoleiman, ICML 2022): facility location on
    Hessian-preconditioned last-layer gradients, per class, with weights. The distance is
    ||u_i - u_j|| with u_i = g_i / (d_i + eps) the gradient preconditioned by
    the sample's own diagonal Hessian (the paper's H_i^{-1} g_i with H_i approximated by its
    diagonal; on the last layer the diagonal is exact, lcmat/reference/adacore.py), returning the
    cluster-size weights as CRAIG. eps: the damping of AdaHessian, whose diagonal estimator the
    paper uses (1e-4). The authors released no code (their repository holds a README only), so
    the paper's single-step form is taken: no exponential average over training steps, Hessian
    power 1. The rest is LCMat-S's machinery (L = max D, lazy greedy, coverage and quotas).
    """
    name = "adacore"

    def __init__(self, fraction=0.1, eps=1e-4, weights=True, balance=True, seed=0, backend=None,
                 progress=None, dtype=torch.float32, coverage=False, difficulty="el2n", prune_hard=0.1,
                 num_strata=50, quotas=False):
        super().__init__(fraction, 0.0, 0, "paper", 128, weights, balance, seed, backend, progress,
                         dtype, coverage, difficulty, prune_hard, num_strata, quotas)
        self.eps = check_positive("eps", eps)

    def block_distance(self, embeddings, logits, labels, scale=None):
        e, q = ops.last_layer_factors(logits, labels, backend=self.backend)
        return ops.adacore_distance(embeddings, e, q, self.eps, backend=self.backend)
