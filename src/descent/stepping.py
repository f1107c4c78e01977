"""One exact optimizer step over its chunks, and what is checked before it is taken: a stop signal, a finite loss.

A step's chunks each add (summed loss) / (the step's size) to the gradients, so the step is the exact mean gradient
however it is chunked or spread over ranks. Before stepping, the loss is checked (a NaN or infinity stops the run
with the weights of the last good step) and a SIGINT/SIGTERM is honoured (the weights of that moment are saved).
"""

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from descent import stopping
from descent.backprop import average_over_ranks, backpropagate
from descent.data import Chunk
from descent.stopping import Diverged, Interrupted

# `module` below is descent.module.Classifier, named by its base class: that module imports this one.

CHECK_EVERY = 32
"""Steps between checks for a non-finite loss or a stop signal on an accelerator (every step on the CPU)."""


def accumulate(module: LightningModule, chunks: Sequence[Chunk]) -> Tensor:
    """Add each chunk's (summed loss) / (its step's divisor) to the gradients; return the step's summed loss here."""
    trainer = module.trainer
    # manual_backward runs every callback's on_before/after_backward hooks at every chunk (about a tenth of a
    # B=64 step of the default MLP on a CPU); it is needed only for DDP's all-reduce and a loss scaler.
    needs_lightning = trainer.world_size > 1 or getattr(trainer.precision_plugin, "scaler", None) is not None
    backward = module.manual_backward if needs_lightning else Tensor.backward
    total: Tensor | None = None
    for chunk in chunks:
        if module.backprop == "manual":
            loss_sum = backpropagate(module.net, chunk.x, chunk.y, chunk.loss_divisor)
        else:
            loss_sum = module.loss(module(chunk.x), chunk.y)
            backward(loss_sum / chunk.loss_divisor)
        total = loss_sum.detach() if total is None else total + loss_sum.detach()
    if module.backprop == "manual" and trainer.world_size > 1:  # no DDP hooks ran: average here
        average_over_ranks(module.net, lambda flat: trainer.strategy.reduce(flat, reduce_op="mean"))
    assert total is not None
    return total


def take_step(module: LightningModule, chunks: Sequence[Chunk], step_in_epoch: int) -> tuple[Tensor, int]:
    """One optimizer step over `chunks`: the loss of the weights before it (summed, this rank's share) and how many
    times the step's exact loss and gradient were evaluated (1; more for L-BFGS, whose line search re-evaluates)."""
    optimizer = module.optimizers()
    if isinstance(optimizer.optimizer, torch.optim.LBFGS):
        return line_search_step(module, optimizer, chunks, step_in_epoch)
    loss_sum = accumulate(module, chunks)
    check_before_step(module, loss_sum, step_in_epoch)
    if module.clip is not None:
        module.clip_gradients(optimizer, gradient_clip_val=module.clip[0], gradient_clip_algorithm=module.clip[1])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, 1


def line_search_step(
    module: LightningModule, optimizer: Any, chunks: Sequence[Chunk], step_in_epoch: int
) -> tuple[Tensor, int]:
    """An optimizer that takes a closure (L-BFGS): each call is the step's exact mean loss and gradient, over its
    chunks and ranks (the same value on every rank, so that their line searches agree). The checks come after the
    step here, since its first evaluation is inside it; a non-finite loss stops the run before the next."""
    trainer, evaluations = module.trainer, 0
    divisor = chunks[0].loss_divisor

    def closure() -> Tensor:
        nonlocal evaluations
        evaluations += 1
        optimizer.zero_grad(set_to_none=True)
        mean = accumulate(module, chunks) / divisor
        return trainer.strategy.reduce(mean, reduce_op="mean") if trainer.world_size > 1 else mean

    first = optimizer.step(closure)
    optimizer.zero_grad(set_to_none=True)
    loss_sum = first.detach() * divisor
    check_before_step(module, loss_sum, step_in_epoch)
    return loss_sum, evaluations


def check_before_step(module: LightningModule, loss_sum: Tensor, step_in_epoch: int) -> None:
    """Raise `Diverged` on a non-finite loss, `Interrupted` after SIGINT/SIGTERM; before the step is taken.

    Reading the loss costs nothing on the CPU but waits for an accelerator, so there it is read every CHECK_EVERY
    steps and at the end of an epoch. Under DDP both are summed over the ranks, so that every rank stops at the same
    step (a rank that stopped alone would leave the others waiting in the next all-reduce).
    """
    trainer = module.trainer
    last = step_in_epoch == trainer.num_training_batches
    if module.device.type != "cpu" and step_in_epoch % CHECK_EVERY and not last:
        return
    if trainer.world_size > 1:
        asked_here = torch.tensor(float(stopping.received() is not None), device=module.device)
        flags = torch.stack([loss_sum.to(torch.float32), asked_here])
        loss, asked_anywhere = trainer.strategy.reduce(flags, reduce_op="sum").tolist()
        asked = asked_anywhere > 0
    else:
        loss, asked = loss_sum.item(), stopping.received() is not None
    if math.isfinite(loss) and not asked:
        return
    if not math.isfinite(loss):
        epoch, step = module.current_epoch + 1, trainer.global_step + 1
        lr = module.optimizers().param_groups[0]["lr"]
        raise Diverged(
            epoch,
            step,
            f"training diverged at epoch {epoch}, step {step_in_epoch} of the epoch ({step} in all): the loss "
            f"is {loss}; lower the learning rate (optimizer.lr, {lr:g} at this step)",
        )
    raise interrupted(module)


def interrupted(module: LightningModule) -> Interrupted:
    """Save the weights of this moment to interrupted.ckpt and say so: what a stop signal ends in."""
    trainer = module.trainer
    epoch, step = module.current_epoch + 1, trainer.global_step + 1
    checkpoints = Path(trainer.checkpoint_callback.dirpath)
    with stopping.writing_a_stop():
        trainer.save_checkpoint(checkpoints / "interrupted.ckpt")
    name = stopping.received()
    return Interrupted(
        epoch,
        step,
        f"{name or 'a signal on another rank'} before step {step}, in epoch {epoch}: these "
        f"weights are in {checkpoints / 'interrupted.ckpt'}; resume=<run dir> goes on from this step",
        name or "SIGTERM",
    )


class KeepWeightsOnLightningStop(Callback):
    """Lightning's own SIGTERM handler stops fit at its next check, between steps or in the evaluation, before
    `check_before_step` can: keep the weights of that moment as a stop inside a step does (`stopped`)."""

    stopped: Interrupted | None = None

    def on_exception(self, trainer: Any, module: Any, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self.stopped = interrupted(module)
