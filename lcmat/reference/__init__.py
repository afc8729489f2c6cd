"""Pure-PyTorch definitions of every kernel: slow, obvious, the oracle for tests.

Each family lives in its own module; `triton_kernels/` and `csrc/` hold twins with the same names.
Nothing here calls a backend: the algorithms composed of kernels (the pruned coordinate search,
the greedy under quotas, the plan assembly) are lcmat.algorithms.
"""
from .adacore import adacore_distance, preconditioned_gram
from .facility_location import (check_greedy_batch, facility_location_greedy, facility_location_greedy_batch,
                                greedy_result, lazy_greedy_picks, nearest_pick_counts, similarity_columns)
from .facility_location import check_distance_block
from .fdmat import class_prototypes, fdmat_scores, fdmat_transform, prototype_cost
from .glister import (glister_gains, glister_greedy, validation_gradient, validation_gradient_sums,
                      validation_logit_step)
from .last_layer import last_layer_factors, last_layer_grad_norms
from .linear_grad_norms import linear_grad_norms, per_sample_grad_norms
from .lcmat_distance import (coords_by_variance, curvature_moments, gradient_distance, gradient_gram,
                             hessian_diag_coords, lcmat_distance, pairwise_l1,
                             ordered_variance, top_variance_coords)
from .omp import (gradient_column, gradient_columns, gradient_target_dot, nnls_quadratic, omp_last_layer,
                  omp_last_layer_deepcore, residual_correlation, target_dot)
from .sinkhorn import (check_offsets, marginal_error, smallest_reg, sinkhorn_log, sinkhorn_log_ragged, sinkhorn_plan,
                       squared_euclidean_cost)
from .gradient_moments import differentiable_moments, gradient_moments, gradient_moments_backward
from .knn import knn_indices, neighbour_kl, neighbour_kl_rows, smallest_lowest_index
from .pairwise_kl import kcenter_symmetric_kl, kl_to_row, symmetric_kl
from .submodular import (graph_cut_greedy, graph_cut_value, log_determinant_deepcore_greedy,
                         log_determinant_greedy, log_determinant_value)
