"""Triton twins of `lcmat.reference` (installed as `lcmat.triton_kernels`).

Every public function here has the name and signature of its reference twin and returns the same
values (within floating-point tolerance, stated in the tests). The kernels run on CUDA tensors, or
on CPU tensors through Triton's interpreter when TRITON_INTERPRET=1 (set before triton is imported).
"""
import os


def available(backend="triton"):
    """True when triton imports and either CUDA is available or TRITON_INTERPRET=1."""
    try:
        import torch
        import triton  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1"


try:
    import triton  # noqa: F401
except ImportError:  # the package imports without triton; `available` then says False
    pass
else:
    from .facility_location import facility_location_greedy, facility_location_greedy_batch, nearest_pick_counts
    from .fdmat import fdmat_scores, prototype_cost
    from .gradient_moments import gradient_moments, gradient_moments_backward
    from .last_layer import curvature_moments, last_layer_factors, last_layer_grad_norms
    from .lcmat_distance import (gradient_distance, hessian_diag_coords, lcmat_distance,
                                 pairwise_l1)
    from .linear_grad_norms import linear_grad_norms, per_sample_grad_norms
    from .sinkhorn import sinkhorn_log, sinkhorn_log_ragged
    from .submodular import graph_cut_greedy, log_determinant_greedy
