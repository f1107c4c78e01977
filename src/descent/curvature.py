"""The loss's curvature and the Jacobian chain at theta^k, after every evaluated epoch (opt-in):

- `Sharpness` (curvature.enabled=true): the top eigenvalues of the Hessian H of the mean training loss over all N
  samples, by the Lanczos method on exact Hessian-vector products. Each product H v is one pass over the training
  set in the run's chunks, spread over the ranks as a GD step is: per chunk, the gradient of (grad L_chunk . v), the
  chunks' sums added and divided by N. Logged as `curvature/sharpness` (the largest eigenvalue), `curvature/eig_2`,
  ... and `curvature/2_over_lr`: gradient descent with step size lr is stable on a quadratic only where the
  sharpness is below 2 / lr (Cohen et al. 2021, "Gradient Descent on Neural Networks Typically Occurs at the Edge of
  Stability", find it rising to 2 / lr and hovering there).
- `GradientFlow` (gradient_flow.enabled=true): each layer's weight norm |W_l|, the norm of its exact full-batch
  gradient |dL/dW_l| and their ratio, as `flow/grad_norm/<layer>` and so on, with the layers numbered from the
  input: the lecture's chain of Jacobians, which shrinks the gradient towards the input with sigmoid or tanh (Glorot
  and Bengio 2010).

Both measure in eval mode (dropout off, BatchNorm with its recomputed statistics), as every figure of theta^k is,
and touch neither the parameters' .grad nor the optimizer.
"""

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import lightning
import torch
from torch import Tensor, nn

from descent.errors import is_whole, require
from descent.measurement import EpochMeasurement, flat, gradient, summed_over_set, trained_parameters
from descent.results import SHARPNESS, TWO_OVER_LR, flow

if TYPE_CHECKING:
    from descent.module import Classifier

STREAM = 0x6375727665
"""Added to the seed of Lanczos's start vector ("curve" in ASCII)."""


def hessian_vector_product(module: "Classifier", vector: Tensor) -> Tensor:
    """H v, H the Hessian of the mean training loss over the whole training set at the present weights, in the
    run's chunks on each rank, summed over the ranks: per chunk, the gradient of (its gradient . v)."""
    data = module.trainer.datamodule
    images, labels = data.sets["train"]
    params = trained_parameters(module)
    pieces = vector.split([p.numel() for p in params])

    def product(loss: Tensor) -> Tensor:
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * piece.view_as(g).to(g.dtype)).sum() for g, piece in zip(grads, pieces, strict=True))
        return flat(torch.autograd.grad(dot, params, materialize_grads=True), vector.dtype)

    return summed_over_set(module, images, labels, data.samples_per_chunk, product)


def lanczos(product: Callable[[Tensor], Tensor], start: Tensor, iterations: int) -> Tensor:
    """The eigenvalues of the Lanczos tridiagonal matrix after `iterations` products (at most the dimension),
    highest first: the extreme ones converge to H's first. Full reorthogonalisation keeps the basis orthonormal in
    floating point."""
    basis = [start / start.norm()]
    alphas, betas = [], []
    for step in range(min(iterations, len(start))):
        w = product(basis[-1])
        alpha = torch.dot(w, basis[-1])
        w = w - alpha * basis[-1] - (betas[-1] * basis[-2] if step > 0 else 0)
        stacked = torch.stack(basis)
        w = w - stacked.T @ (stacked @ w)  # twice is enough (Kahan): against the drift of plain Lanczos
        w = w - stacked.T @ (stacked @ w)
        alphas.append(alpha)
        beta = w.norm()
        if step == min(iterations, len(start)) - 1 or beta <= 1e-10 * abs(float(alpha)):
            break  # done, or an invariant subspace found: its eigenvalues are exact
        betas.append(beta)
        basis.append(w / beta)
    tridiagonal = torch.diag(torch.stack(alphas))
    if len(alphas) > 1:
        off = torch.stack(betas[: len(alphas) - 1])
        tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigvalsh(tridiagonal.double()).flip(0)


def top_eigenvalues(module: "Classifier", count: int, iterations: int, seed: int) -> list[float]:
    """The `count` largest eigenvalues of the training loss's Hessian at the present weights (in the mode the
    module is in: `EpochMeasurement` puts it in eval mode)."""
    params = trained_parameters(module)
    dtype = torch.promote_types(params[0].dtype, torch.float32)
    generator = torch.Generator().manual_seed(STREAM + seed)
    dimension = sum(p.numel() for p in params)
    start = torch.randn(dimension, generator=generator, dtype=torch.float64).to(module.device, dtype)
    values = lanczos(lambda v: hessian_vector_product(module, v), start, iterations)
    return values[:count].tolist()


class Sharpness(EpochMeasurement):
    """`curvature/sharpness` and the next `eigenvalues - 1` eigenvalues (`curvature/eig_2`, ...) with
    `curvature/2_over_lr`, at every evaluated epoch: `iterations` Hessian-vector products (curvature.iterations),
    each about two passes over the training set."""

    def __init__(self, eigenvalues: int = 1, iterations: int = 20) -> None:
        for key, value in (("eigenvalues", eigenvalues), ("iterations", iterations)):
            require(is_whole(value) and value >= 1, f"curvature.{key}={value!r} is not allowed: give a positive number")
        require(
            eigenvalues <= iterations,
            f"curvature.eigenvalues={eigenvalues} needs at least as many Lanczos iterations: raise "
            f"curvature.iterations (now {iterations}) to {eigenvalues} or more, better 2 to 3 times more",
        )
        self.eigenvalues, self.iterations = eigenvalues, iterations

    def measure(self, trainer: lightning.Trainer, module: "Classifier") -> dict[str, float]:
        seed = (trainer.datamodule.seed or 0) * 1_000_003 + module.current_epoch
        values = top_eigenvalues(module, self.eigenvalues, self.iterations, seed)
        lr = module.optimizers().param_groups[0]["lr"]
        figures = {SHARPNESS: values[0], TWO_OVER_LR: 2 / lr if lr > 0 else math.inf}
        return figures | {f"curvature/eig_{i + 1}": value for i, value in enumerate(values) if i > 0}


def layers(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The weight matrices and kernels (biases and norms' scales left out) in the order the module registers them,
    which is the order the forward pass meets them in a plain stack such as descent's MLP and LeNet (a ResNet's
    shortcut convolutions come after their block's): a layer's depth is its place here, 1 at the input."""
    return [(name, p) for name, p in module.named_parameters() if p.requires_grad and p.dim() >= 2]


class GradientFlow(EpochMeasurement):
    """At every evaluated epoch, for the l-th weight from the input: `flow/grad_norm/<l>` |dL/dW_l| of the exact
    mean training loss, `flow/weight_norm/<l>` |W_l| and `flow/ratio/<l>` their ratio (how far one step of size
    lr moves the layer, relative to its size, is lr times it)."""

    def measure(self, trainer: lightning.Trainer, module: "Classifier") -> dict[str, float]:
        images, labels = trainer.datamodule.sets["train"]
        full = gradient(module, images, labels, None, trainer.datamodule.samples_per_chunk)
        names = [name for name, p in module.named_parameters() if p.requires_grad]
        pieces = dict(zip(names, full.split([p.numel() for p in trained_parameters(module)]), strict=True))
        figures = {}
        for depth, (name, weight) in enumerate(layers(module), start=1):
            grad_norm, weight_norm = float(pieces[name].norm()), float(weight.detach().norm())
            figures[flow("grad_norm", depth)] = grad_norm
            figures[flow("weight_norm", depth)] = weight_norm
            figures[flow("ratio", depth)] = grad_norm / weight_norm if weight_norm > 0 else math.inf
        return figures
