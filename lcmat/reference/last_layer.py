"""Last-layer per-sample quantities for softmax cross-entropy and a final nn.Linear.

Notation (docs/design.md, "Notation"): p = softmax(z), e = p - onehot(y), q = p * (1 - p), h the embedding
(input of the last linear layer), s an optional per-sample scale. The last layer's parameters
are [bias (C); weight (C x D)], P = C (D + 1) coordinates, flattened in that order with the
weight row-major, so coordinate C + c * D + d is weight[c, d].

    gradient           g_i = s_i [ e_i ; vec(e_i h_i^T) ]
    Hessian diagonal   d_i = s_i [ q_i ; vec(q_i (h_i * h_i)^T) ]

None of these functions forms an N x P tensor.
"""
import torch


def last_layer_factors(logits, labels):
    """e = softmax(z) - onehot(y) and q = p (1 - p), both [N, C], in the dtype of `logits`."""
    p = torch.softmax(logits, dim=1)
    e = p.clone()
    e[torch.arange(len(labels), device=logits.device), labels] -= 1.0
    return e, p * (1.0 - p)


def last_layer_grad_norms(embeddings, logits, labels, scale=None):
    """(||g_i||, ||e_i||): the last-layer gradient norm and the error norm (EL2N), both [N].

    ||g_i||^2 = s_i^2 ||e_i||^2 (1 + ||h_i||^2): the bias part is ||e_i||^2 and the weight part
    ||e_i h_i^T||_F^2 = ||e_i||^2 ||h_i||^2.
    """
    e, _ = last_layer_factors(logits, labels)
    error_norm = e.norm(dim=1)
    grad_norm = error_norm * torch.sqrt(1.0 + (embeddings * embeddings).sum(dim=1))
    if scale is not None:
        grad_norm = grad_norm * scale.abs()
    return grad_norm, error_norm
