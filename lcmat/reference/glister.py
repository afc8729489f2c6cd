"""Glister's greedy (Killamsetty et al., AAAI 2021) on the last layer, with its model update step.

Training rows: gradients g_i = [e_i ; vec(e_i h_i^T)] at the current parameters theta (fixed for
the whole selection). Validation rows (h_v, z_v, y_v), m of them. After the picks S the last layer
has moved to theta_S = theta - eta sum_{s in S} g_s; since only the last layer moves, the
validation logits are exactly

    z_v(theta_S) = z_v - eta sum_{s in S} e_s (1 + h_s . h_v)

and the mean validation gradient is grad L_V(theta_S) = (1/m) sum_v [e_v' ; vec(e_v' h_v^T)]
with e_v' = softmax(z_v(theta_S)) - onehot(y_v). Each step picks the unselected row of largest
first-order gain (the Taylor approximation of the decrease of the validation loss, up to eta)

    gain_i = g_i . grad L_V(theta_S) = e_i . beta + e_i . (W h_i),
    beta = (1/m) sum_v e_v',  W = (1/m) sum_v e_v' h_v^T      (C x D, never an n x P tensor)

lowest index on ties, then moves theta_S by -eta g_pick. eta = 0: the gains never change, and the
greedy is the top k of the gains at theta.
"""
import torch

from .last_layer import last_layer_factors


def validation_gradient(val_embeddings, val_logits, val_labels):
    """(beta [C], W [C, D]): the mean validation gradient's bias and weight parts, summed in
    float64 (`validation_gradient_sums`) and rounded once to the inputs' dtype."""
    e_val, _ = last_layer_factors(val_logits, val_labels)
    m = val_embeddings.shape[0]
    beta, W = validation_gradient_sums(val_embeddings, e_val)
    return (beta / m).to(e_val.dtype), (W / m).to(e_val.dtype)


def validation_gradient_sums(val_embeddings, e_val):
    """(sum_v e_v [C], sum_v e_v h_v^T [C, D]) in float64: rows split across processes add their
    partial sums (lcmat.distributed), and the rounding to float32 hides the order of the adds."""
    e64 = e_val.double()
    return e64.sum(0), e64.T @ val_embeddings.double()


def glister_gains(embeddings, e, beta, W):
    """g_i . [beta ; vec(W)] for every row, [n]. W h_i is computed in float64 and rounded once:
    a float32 matrix product can round equal rows differently by their place in memory, and
    equal rows must tie exactly (lowest index first), in one process as across several."""
    hw = (embeddings.double() @ W.double().T).to(e.dtype)
    return (e * (beta + hw)).sum(1)


def validation_logit_step(val_embeddings, h_j, e_j):
    """d z_v / d(-eta) for the step theta_S -= eta g_j: e_j (1 + h_v . h_j), [m, C] (row sums, as
    in omp.gradient_column, so that rows split across processes get the same bits)."""
    return (1.0 + (val_embeddings * h_j).sum(1))[:, None] * e_j[None, :]


def glister_greedy(embeddings, e, val_embeddings, val_logits, val_labels, k, eta):
    """The greedy of the module docstring: (picks LongTensor [k] in pick order, gains [k]: each
    pick's gain when it was picked)."""
    n = embeddings.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k: must lie in [0, {n}], got {k}")
    gains = glister_gains(embeddings, e, *validation_gradient(val_embeddings, val_logits, val_labels))
    if eta == 0:  # static gains: the greedy keeps the top k, lowest index first among equals
        order = torch.sort(-gains, stable=True).indices[:k]
        return order, gains[order]
    z = val_logits.clone()
    available = torch.ones(n, dtype=torch.bool, device=e.device)
    picks, picked_gains = [], []
    for _ in range(k):
        j = int(torch.argmax(gains.masked_fill(~available, -torch.inf)))
        picks.append(j)
        picked_gains.append(gains[j])
        available[j] = False
        # theta_S -= eta g_j: bias by -eta e_j, weight by -eta e_j h_j^T
        z -= eta * validation_logit_step(val_embeddings, embeddings[j], e[j])
        gains = glister_gains(embeddings, e, *validation_gradient(val_embeddings, z, val_labels))
    picked = torch.stack(picked_gains) if picked_gains else gains.new_zeros(0)
    return torch.tensor(picks, dtype=torch.long, device=e.device), picked
