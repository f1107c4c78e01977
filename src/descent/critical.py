"""Steps to a target validation error, measured at any batch size: the critical-batch experiment's clock.

Shallue et al. 2018 count the optimizer steps a run needs to first reach a target error; McCandlish et al. 2018
predict them as S = S_min (1 + B_crit / B). An evaluation after every epoch is too coarse for that at small B (an
epoch of B = 16 is thousands of steps), so the validation error is checked on a geometric grid of steps (each check
about `growth` times the step of the last), which resolves steps-to-target to that ratio at any scale for the
cost of a few hundred forward passes over the validation set. descent.critical_batch reads the runs' times.
"""

import torch
from lightning.pytorch.callbacks import Callback

from descent.batchnorm import recompute_statistics_of
from descent.data import set_chunks
from descent.measurement import evaluating
from descent.results import TARGET


class StepsToTarget(Callback):
    """Stops the run when the validation error first reaches `target_error`; records when, as `target/steps`,
    `target/epochs` (steps over steps an epoch) and `target/seconds` (training seconds), in the run's last epoch."""

    def __init__(self, target_error: float, growth: float = 1.05) -> None:
        self.target_error, self.growth = target_error, growth
        self.next_check, self.reached = 1, False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        step = trainer.global_step
        if self.reached or step < self.next_check:
            return
        self.next_check = max(step + 1, int(step * self.growth))
        if validation_error(trainer, module) <= self.target_error:
            self.reached = True
            # descent's training clock: the finished epochs' training, and this one's so far
            when = (self.target_error, float(step), step / trainer.num_training_batches, module.clock.seconds)
            module.add_figures(dict(zip(TARGET, when, strict=True)))
            trainer.should_stop = True  # Lightning evaluates the epoch it stops in, then ends the run


@torch.no_grad()
def validation_error(trainer, module) -> float:  # type: ignore[no-untyped-def]
    """The current weights' error rate on the whole validation set (this rank's share, summed over ranks), with
    BatchNorm statistics recomputed at these weights as every evaluation has them (a pass over the training set)."""
    recompute_statistics_of(module)
    data = trainer.datamodule
    images, labels = data.sets["val"]
    counts = torch.zeros(2, dtype=torch.float64, device=module.device)
    with evaluating(module.net):
        for chunk in set_chunks(images, labels, data.samples_per_chunk, trainer.global_rank, trainer.world_size):
            wrong = (module(chunk.x.to(module.dtype)).argmax(1) != chunk.y).sum().double()
            counts += torch.stack([wrong, torch.tensor(len(chunk.y), dtype=torch.float64, device=chunk.y.device)])
    errors, count = trainer.strategy.reduce(counts, reduce_op="sum").tolist()
    return errors / count
