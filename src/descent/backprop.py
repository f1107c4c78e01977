"""Backpropagation as the lecture writes it: each gradient a product of Jacobians, computed layer by layer by hand.

The MLP of `descent.nets.MLP` is z_l = a_{l-1} W_l^T + b_l, a_l = f(z_l) from a_0 = x to the logits a_L = z_L, and
by the chain rule dL/dW_l = J_L(a_L) J_{a_L}(a_{L-1}) ... J_{a_l}(W_l), and the same for b_l. The row vector `delta`,
the gradient of L with respect to the output of the layer being passed (delta_l = dL/dz_l at linear layer l), is
carried down from the loss by one vector-Jacobian product per layer. Each product is written out for a whole chunk
(a row of delta per sample), never forming a Jacobian; nothing here uses autograd (tests/test_backprop.py compares).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from descent.errors import DescentError, require

# f'(z) from the activation's output a = f(z), which the forward pass keeps. J_a(z) = diag(f'(z)) is diagonal, since
# each unit's output depends on its own input only, so the vector-Jacobian product is an elementwise product.
ACTIVATION_DERIVATIVES: dict[type[nn.Module], Callable[[Tensor], Tensor]] = {
    nn.ReLU: lambda a: (a > 0).to(a.dtype),  # 1 where z > 0; 0 at z = 0, as autograd takes it
    nn.Tanh: lambda a: 1 - a * a,
    nn.Sigmoid: lambda a: a * (1 - a),
}

BACKPROPS = ("autograd", "manual")
"""model.backprop: autograd, or manual (this module: the lecture's chain of Jacobians written out)."""


def check_backprop(backprop: str) -> None:
    """The one check of model.backprop: before data loads (descent.config) and where it enters (the module)."""
    require(backprop in BACKPROPS, f"model.backprop={backprop!r} is not one of {', '.join(BACKPROPS)}")


def check_mlp(net: nn.Module | type) -> None:
    """model.backprop=manual knows the backward pass of an MLP's layers only: refuse any other network (or network
    class, when the config is checked before anything is built) up front."""
    from descent.nets import MLP

    kind = net if isinstance(net, type) else type(net)
    require(
        issubclass(kind, MLP),
        f"model.backprop=manual supports only MLPs (model=mlp: linear layers, relu/tanh/sigmoid, dropout), not "
        f"{kind.__name__}: use model.backprop=autograd for other networks",
    )


def backpropagate(net: nn.Sequential, x: Tensor, y: Tensor, loss_divisor: float) -> Tensor:
    """Add the gradient of (summed cross-entropy) / loss_divisor to every parameter's `.grad`; return the summed loss.

    Adding, as autograd's backward does, so a step accumulated over chunks sums to the step's exact gradient.
    """
    with torch.no_grad():
        z, kept = forward(net, x)
        loss_sum, delta = softmax_cross_entropy(z, y, loss_divisor)
        for i in reversed(range(len(net))):  # from the loss down to the input: delta_l -> delta_{l-1}
            layer = net[i]
            if isinstance(layer, nn.Linear):
                delta = linear_backward(layer, kept[i], delta, propagate=i > 0)
            elif isinstance(layer, nn.Dropout):
                delta = delta * kept[i]  # J = diag(mask / (1 - p)), the same mask as the forward pass
            else:
                delta = delta * ACTIVATION_DERIVATIVES[type(layer)](kept[i])  # J = diag(f'(z))
    return loss_sum


def forward(net: nn.Sequential, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The logits z = a_L, and what each layer's backward pass needs: a_{l-1} for a linear layer, a_l = f(z) for an
    activation, the scaled mask for dropout."""
    a, kept = x.flatten(1), []
    for layer in net:
        if isinstance(layer, nn.Linear):
            kept.append(a)  # a_{l-1}: J_{a_l}(W_l) is made of it
            a = layer(a)
        elif type(layer) in ACTIVATION_DERIVATIVES:
            a = layer(a)
            kept.append(a)
        elif isinstance(layer, nn.Dropout):
            mask = dropout_mask(layer, a)
            a = a * mask
            kept.append(mask)
        else:
            known = ", ".join(kind.__name__ for kind in [nn.Linear, *ACTIVATION_DERIVATIVES, nn.Dropout])
            raise DescentError(
                f"model.backprop=manual has no backward pass for a {type(layer).__name__} layer (only {known}): "
                "use model.backprop=autograd"
            )
    return a, kept


def dropout_mask(layer: nn.Dropout, a: Tensor) -> Tensor:
    """Bernoulli(1 - p) / (1 - p) in training, 1 in evaluation: drawn as F.dropout draws it on the CPU, so a seeded
    run drops the same units with either backprop there."""
    if not layer.training or layer.p == 0:
        return torch.ones((), dtype=a.dtype, device=a.device)
    return torch.empty_like(a).bernoulli_(1 - layer.p).div_(1 - layer.p)


def softmax_cross_entropy(z: Tensor, y: Tensor, loss_divisor: float) -> tuple[Tensor, Tensor]:
    """The summed loss -sum_i log softmax(z_i)[y_i], and delta_L = J_L(z) = (softmax(z) - onehot(y)) / loss_divisor."""
    log_p = torch.log_softmax(z, dim=1)
    loss_sum = -log_p.gather(1, y[:, None]).sum()
    delta = (log_p.exp() - F.one_hot(y, z.shape[1]).to(z.dtype)) / loss_divisor
    return loss_sum, delta


def linear_backward(layer: nn.Linear, a_prev: Tensor, delta: Tensor, propagate: bool = True) -> Tensor:
    """For z_l = a_{l-1} W_l^T + b_l: add dL/dW_l = delta_l^T a_{l-1} and dL/db_l = sum of delta_l's rows to `.grad`;
    return delta_{l-1} = delta_l W_l (J_{a_l}(a_{l-1}) = W_l), unless nothing below needs it."""
    accumulate(layer.weight, delta.T @ a_prev)  # sums the per-sample outer products delta_l,i^T a_{l-1},i
    if layer.bias is not None:
        accumulate(layer.bias, delta.sum(0))  # J_{a_l}(b_l) = I
    # dL/dx is of no use: skipping it, as autograd does, saves the pass's largest product (B x n_1 x 784).
    return delta @ layer.weight if propagate else delta


def accumulate(param: nn.Parameter, gradient: Tensor) -> None:
    """param.grad += gradient, in the parameter's dtype (autocast may compute in a narrower one)."""
    gradient = gradient.to(param.dtype)
    if param.grad is None:
        param.grad = gradient
    else:
        param.grad += gradient


def average_over_ranks(net: nn.Module, reduce_mean: Callable[[Tensor], Tensor]) -> None:
    """Average the gradients over the DDP ranks, as DDP's autograd hooks do for autograd's: one collective a step."""
    grads = [param.grad for param in net.parameters() if param.grad is not None]
    flat = reduce_mean(torch.cat([grad.flatten() for grad in grads]))
    for grad, part in zip(grads, flat.split([grad.numel() for grad in grads]), strict=True):
        grad.copy_(part.view_as(grad))
