"""Pure-PyTorch definitions of every kernel: slow, obvious, the oracle for tests.

Each family lives in its own module; `triton_kernels/` and `csrc/` hold twins with the same names.
"""
from .facility_location import (check_greedy_batch, facility_location_greedy, facility_location_greedy_batch,
                                facility_location_greedy_quotas, nearest_pick_counts)
from .fdmat import class_prototypes, fdmat_scores, fdmat_transform, prototype_cost
from .last_layer import last_layer_factors, last_layer_grad_norms
from .linear_grad_norms import linear_grad_norms, per_sample_grad_norms
from .lcmat_distance import (coords_by_variance, curvature_moments, gradient_distance, gradient_gram,
                             hessian_diag_coords, lcmat_distance, pairwise_l1,
                             ordered_variance, top_variance_coords, top_variance_coords_pruned,
                             weight_row_bounds)
from .sinkhorn import (sinkhorn_log, sinkhorn_log_ragged, sinkhorn_plan,
                       squared_euclidean_cost)
from .gradient_moments import gradient_moments, gradient_moments_backward
