"""Pure-PyTorch definitions of every kernel: slow, obvious, the oracle for tests.

Each family lives in its own module; `triton_kernels/` and `csrc/` hold twins with the same names.
"""
from .adacore import adacore_distance, preconditioned_gram
from .facility_location import (check_greedy_batch, facility_location_greedy, facility_location_greedy_batch,
                                facility_location_greedy_quotas, nearest_pick_counts)
from .facility_location import check_distance_block
from .fdmat import class_prototypes, fdmat_scores, fdmat_transform, prototype_cost
from .glister import glister_gains, glister_greedy, validation_gradient
from .last_layer import last_layer_factors, last_layer_grad_norms
from .linear_grad_norms import linear_grad_norms, per_sample_grad_norms
from .lcmat_distance import (coords_by_variance, curvature_moments, gradient_distance, gradient_gram,
                             hessian_diag_coords, lcmat_distance, pairwise_l1,
                             ordered_variance, top_variance_coords, top_variance_coords_pruned,
                             weight_row_bounds)
from .omp import (gradient_columns, gradient_target_dot, nnls_quadratic, omp_last_layer,
                  omp_last_layer_deepcore)
from .sinkhorn import (check_offsets, marginal_error, smallest_reg, sinkhorn_log, sinkhorn_log_ragged, sinkhorn_plan,
                       squared_euclidean_cost)
