"""A figure of theta^k after each evaluated epoch, measured by a callback of one's own: the base every measurement
of descent's is built on (the gradient noise, the sharpness, the gradient flow), and the one chunked pass over the
training set they share.

A measurement subclasses `EpochMeasurement` and returns its figures from `measure`; that is all. It runs at the
start of every evaluated epoch of fit, after BatchNorm's statistics are recomputed for theta^k and before the first
chunk is evaluated, with the training clock stopped, the module in eval mode (dropout off, as every figure of
theta^k) and gradients enabled (Lightning evaluates under inference mode); the module's mode is put back even when
`measure` raises. Its figures join the epoch's own (`Classifier.add_figures`): metrics.json's history, every
logger, the sweep summary's columns. `console = True` also prints them in a line after the epoch's.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import lightning
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from descent.data import Images, set_chunks

if TYPE_CHECKING:
    from descent.module import Classifier


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """The module in eval mode for the block, and back in the mode it was in afterwards, whatever happens."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class EpochMeasurement(Callback):
    """Figures of theta^k after every evaluated epoch of fit: implement `measure`."""

    console = False
    """True: the figures are printed in a line of their own after the epoch's line."""

    def measure(self, trainer: lightning.Trainer, module: "Classifier") -> dict[str, float]:
        """The figures at the module's present weights, named `{group}/{name}` (e.g. `relu/dead_fraction`)."""
        raise NotImplementedError

    def on_validation_epoch_start(self, trainer: lightning.Trainer, module: "Classifier") -> None:
        if not module.evaluating_an_epoch:  # theta^k of a finished epoch of fit only
            return
        module.clock.stop(module.device)  # no training from here: the module's own hook comes too late
        with evaluating(module), torch.inference_mode(False), torch.enable_grad():
            figures = self.measure(trainer, module)
        module.add_figures(figures, console=self.console)


def summed_over_set(
    module: "Classifier",
    images: Images,
    labels: Tensor,
    chunk_size: int,
    per_chunk: Callable[[Tensor], Tensor],
) -> Tensor:
    """Sum over the set of `per_chunk(loss)`, `loss` being a chunk's summed loss divided by the set's size, each
    rank taking its contiguous share in chunks of `chunk_size` and the shares summed over the ranks: with
    `per_chunk` the flattened gradient, the exact gradient of the mean loss over the set (a GD step's); with a
    Hessian-vector product, H v (descent.curvature)."""
    trainer, precision = module.trainer, module.trainer.precision_plugin
    n, total = len(labels), None
    for chunk in set_chunks(images, labels, chunk_size, trainer.global_rank, trainer.world_size):
        with precision.forward_context():
            loss = module.loss(module(precision.convert_input(chunk.x)), chunk.y) / n
        piece = per_chunk(loss)
        total = piece if total is None else total + piece
    assert total is not None, "a set of at least one sample on every rank"
    return trainer.strategy.reduce(total, reduce_op="sum")


def trained_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def flat(tensors: Any, dtype: torch.dtype) -> Tensor:
    return torch.cat([t.flatten() for t in tensors]).to(dtype)


def gradient(module: "Classifier", images: Images, labels: Tensor, rows: Tensor | None, chunk_size: int) -> Tensor:
    """The gradient of the mean loss over `rows` of a set (all of it for None), flattened, at the present weights.

    torch.autograd.grad, not backward: the parameters' .grad (and DDP's hooks on them) are never touched."""
    if rows is not None:
        rows = rows.to(labels.device)
        images, labels = images.subset(rows), labels[rows]
    params = trained_parameters(module)
    dtype = torch.promote_types(params[0].dtype, torch.float32)
    grad = lambda loss: flat(torch.autograd.grad(loss, params, materialize_grads=True), dtype)  # noqa: E731
    return summed_over_set(module, images, labels, chunk_size, grad)
