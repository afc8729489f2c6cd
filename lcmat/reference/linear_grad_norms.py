"""Per-sample gradient norms of nn.Linear layers, on sequence inputs (GraNd over a whole network).

For a linear layer y = x W^T + b applied to sample i's T positions, with input A_i [T, d_in] and
output gradient G_i [T, d_out] (the gradient of sample i's loss with respect to the layer's output),
sample i's gradients are

    dW_i = G_i^T A_i  [d_out, d_in],    db_i = sum_t G_i[t]  [d_out],

and ||dW_i||_F^2 = ||A_i^T G_i||_F^2. The reference materialises every per-sample gradient (the
obvious definition); the kernels use the ghost-norm identity ||A^T G||_F^2 = <A A^T, G G^T>_F where
it is cheaper. A layer called several times in one forward pass (weight sharing) gets the sum of
its calls' gradients, i.e. A and G concatenated along T.
"""
import torch
from torch import nn


def linear_grad_norms(activations, grad_outputs):
    """||A_i^T G_i||_F^2 per sample, [N], from A [N, T, d_in] and G [N, T, d_out] (a 2-D [N, d]
    pair is read as T = 1). These are SQUARED norms, so that layers add up."""
    A, G = as_sequences(activations, grad_outputs)
    per_sample = torch.einsum("nti,nto->nio", A, G)  # materialised: N x d_in x d_out
    return per_sample.square().sum(dim=(1, 2))


def as_sequences(activations, grad_outputs):
    """(A, G) as [N, T, d] tensors (a 2-D [N, d] pair is T = 1), after checking their shapes."""
    if activations.dim() == 2:
        activations = activations[:, None, :]
    if grad_outputs.dim() == 2:
        grad_outputs = grad_outputs[:, None, :]
    if activations.dim() != 3 or grad_outputs.dim() != 3:
        raise ValueError(f"activations, grad_outputs: expected [N, T, d] (or [N, d]) tensors, "
                         f"got shapes {tuple(activations.shape)} and {tuple(grad_outputs.shape)}")
    if activations.shape[:2] != grad_outputs.shape[:2]:
        raise ValueError(f"activations, grad_outputs: expected the same N and T, got shapes "
                         f"{tuple(activations.shape)} and {tuple(grad_outputs.shape)}")
    return activations, grad_outputs


def per_sample_grad_norms(model, inputs, targets, loss_fn):
    """||grad_theta loss_i||_2 per sample, [N], over the weights and biases of every nn.Linear in
    `model` whose parameters require grad.

    `loss_fn(outputs, targets)` must return the per-sample losses [N] (e.g.
    nn.CrossEntropyLoss(reduction="none")); their sum is backpropagated once, so sample i's output
    gradients are those of its own loss. Samples must not interact in the forward pass (BatchNorm
    in train mode does): put the model in eval mode first. Only nn.Linear parameters count.
    """
    return collect_linear_grad_norms(model, inputs, targets, loss_fn, linear_grad_norms)


def collect_linear_grad_norms(model, inputs, targets, loss_fn, weight_sq_norms):
    """The hook machinery behind `per_sample_grad_norms`, with the per-layer squared weight-norm
    function `weight_sq_norms(A [N, T, d_in], G [N, T, d_out]) -> [N]` as a parameter so that
    every backend shares it.

    The backward pass asks autograd for the gradients at the layers' OUTPUTS only (G), so the
    engine skips every parameter-gradient product (the batch dW = sum_i G_i^T A_i, T d_in d_out
    per sample and layer, which the norms do not need) and the first layers' input gradients.
    Each output is named by its gradient edge, taken in the forward hook: an in-place op after
    the layer (ReLU(inplace=True)) rewrites the tensor's history but not that edge, so G is the
    gradient at the layer's own output."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)
              and any(p.requires_grad for p in m.parameters(recurse=False))]
    calls = []  # per call: (layer, A, A's version, the output's gradient edge, watched tensor, its version)

    def forward_hook(layer, args, output):
        if output.requires_grad:
            target = whole_base(output)
            edge, watched = output_edge(target)
            calls.append((layer, args[0].detach(), args[0]._version, edge, watched, target._version))

    handles = [layer.register_forward_hook(forward_hook) for layer in layers]
    try:
        outputs = model(inputs)
        losses = loss_fn(outputs, targets)
    finally:
        for handle in handles:
            handle.remove()
    n = inputs.shape[0] if isinstance(inputs, torch.Tensor) else len(targets)
    if not isinstance(losses, torch.Tensor) or losses.shape != (n,):
        raise ValueError(f"loss_fn: must return the per-sample losses, shape ({n},) "
                         f"(use reduction='none'), got "
                         f"{tuple(losses.shape) if isinstance(losses, torch.Tensor) else losses!r}")
    total = losses.new_zeros(n)
    if not calls or not losses.requires_grad:
        return total
    grads = torch.autograd.grad(losses.sum(), [call[3] for call in calls], allow_unused=True)
    per_layer = {layer: [] for layer in layers}
    for (layer, a, version, _, watched, watched_version), g in zip(calls, grads):
        if a._version != version:
            raise ValueError(f"model: the input of {layer} was modified in place after the layer "
                             f"read it; its per-sample gradients would be wrong")
        if watched is not None and watched._version != watched_version:
            raise ValueError(f"model: the output of {layer} was modified in place (an in-place "
                             f"activation?) where its gradient cannot be taken before that (a "
                             f"partial view, or a torch without torch.autograd.graph."
                             f"get_gradient_edge): use inplace=False")
        if g is not None:  # None: this call's output does not reach the loss
            per_layer[layer].append((a.reshape(n, -1, a.shape[-1]), g.reshape(n, -1, g.shape[-1])))
    for layer, used in per_layer.items():
        if not used:
            continue
        # Calls of one layer add their gradients: concatenate their positions along T (one call:
        # no copy).
        A = torch.cat([a for a, _ in used], dim=1) if len(used) > 1 else used[0][0]
        G = torch.cat([g for _, g in used], dim=1) if len(used) > 1 else used[0][1]
        if layer.weight.requires_grad:
            total = total + weight_sq_norms(A, G).to(total.dtype)
        if layer.bias is not None and layer.bias.requires_grad:
            total = total + G.sum(dim=1).square().sum(dim=1).to(total.dtype)
    return total.sqrt()


def whole_base(output):
    """The tensor whose gradient G is taken for a layer's output: the output, or the tensor it is
    a reshaped view of (nn.Linear on [N, T, d] inputs returns a view of a [N T, d_out] product),
    whose gradient holds the same numbers in the same order."""
    base = output._base
    if base is not None and base.numel() == output.numel() and base.is_contiguous() \
            and output.is_contiguous():
        return base
    return output


def output_edge(target):
    """(what autograd.grad is asked for, a tensor to watch for in-place changes or None).

    The gradient edge of `target`, taken before anything else runs: an in-place op on a tensor
    that is not a view (ReLU(inplace=True)) records its own node on top of that edge, so the
    gradient at the edge is the layer's output gradient from before the op. An in-place op on a
    view replaces the view's history (its edge leaves the graph), and a torch without
    `torch.autograd.graph.get_gradient_edge` has no edges to ask for (the tensor is asked for,
    whose gradient an in-place op moves past it): in those cases the tensor is watched, and a
    change refused."""
    get_edge = getattr(torch.autograd.graph, "get_gradient_edge", None)
    if get_edge is None:
        return target, target
    return get_edge(target), (target if target._base is not None else None)
