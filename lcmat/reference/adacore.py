"""AdaCore's distance block (Pooladzandi, Davini and Mirzasoleiman, ICML 2022) on the last layer.

AdaCore runs facility location on Hessian-preconditioned gradients u_i = H_i^{-1} g_i, with H_i
approximated by its diagonal. On the last layer (softmax cross-entropy) that diagonal is exact and
closed-form, d_i = [q_i ; vec(q_i (h_i * h_i)^T)] with q = p (1 - p) (see `last_layer`), so

    u_i[c]      = e_ic / (q_ic + eps)                       (bias coordinate c)
    u_i[c, d]   = e_ic h_id / (q_ic h_id^2 + eps)           (weight coordinate (c, d))

eps > 0 keeps the division finite (h_id = 0 or a saturated softmax). The preconditioning depends
on (i, c, d) jointly, so the Gram identity of plain gradients no longer factorises; the Gram
u_i . u_j = sum_c [ u_i[c] u_j[c] + sum_d u_i[c, d] u_j[c, d] ] is accumulated over chunks of
classes, holding n x (chunk * D) preconditioned coordinates at a time (never the n x C (D + 1)).
"""
import torch

CHUNK_ELEMENTS = 2 ** 22  # preconditioned coordinates held at once (16 MiB in float32)


def preconditioned_gram(embeddings, e, q, eps):
    """u_i . u_j, [n, n], with u_i = g_i / (d_i + eps) (the module docstring)."""
    n, D = embeddings.shape
    C = e.shape[1]
    bias = e / (q + eps)
    gram = bias @ bias.T
    h2 = embeddings.square()
    step = max(1, CHUNK_ELEMENTS // max(1, n * D))
    for start in range(0, C, step):
        cls = slice(start, min(C, start + step))
        # [n, c, D]: e_ic h_id / (q_ic h_id^2 + eps)
        u = e[:, cls, None] * embeddings[:, None, :] / (q[:, cls, None] * h2[:, None, :] + eps)
        u = u.reshape(n, -1)
        gram += u @ u.T
    return gram


def adacore_distance(embeddings, e, q, eps):
    """|| u_i - u_j ||_2, [n, n], from the preconditioned Gram."""
    gram = preconditioned_gram(embeddings, e, q, eps)
    sq = gram.diagonal()
    dist2 = (sq[:, None] + sq[None, :] - 2.0 * gram).clamp_min_(0.0)
    dist2.fill_diagonal_(0.0)
    return dist2.sqrt_()
