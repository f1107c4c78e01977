"""The LightningModule: a network trained on a loss summed over each chunk, one optimizer step per batch, evaluated
every epoch.

Another network is another `model.net` (see `descent.nets`); another loss is another `model.loss` (conf/loss/).
"""

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import Metric

from descent import metrics, results
from descent.batchnorm import ghost_batch_norm, recompute_statistics_of
from descent.clock import TrainingClock
from descent.data import EVAL_SETS, Chunk
from descent.losses import check_loss, check_loss_sums, check_precision
from descent.metrics import SetMetrics
from descent.resume import rebuild_schedule
from descent.schedules import follows_figures, with_warmup
from descent.stepping import take_step
from descent.stopping import check_evaluated_loss

log = logging.getLogger(__name__)


class Classifier(LightningModule):
    """`net` trained on `loss` (cross-entropy summed over a chunk unless given); after every epoch k, the whole
    train, val and test sets are evaluated with theta^k in eval mode (not the running mean of the minibatch losses
    seen during the epoch): descent's loss and error from exact sums, and each of `metrics` (torchmetrics).

    `gradient_clip_val` and `gradient_clip_algorithm` are the Trainer's settings of those names, applied here:
    Lightning refuses them under manual optimization, which a step over several chunks needs.

    Every BatchNorm in `net` normalises fixed groups of `norm_batch_size` samples in training, and its statistics
    are recomputed from the training set before every evaluation (`descent.batchnorm`): no figure depends on
    chunk_size or the number of devices.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., Optimizer] = torch.optim.SGD,
        scheduler: Callable[[Optimizer], LRScheduler] | None = None,
        backprop: str = "autograd",
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
        norm_batch_size: int = 32,
        loss: Callable[[Tensor, Tensor], Tensor] | None = None,
        metrics: Mapping[str, Metric] | None = None,
        warmup_epochs: int = 0,
        monitor: str = "val/error",
    ) -> None:
        super().__init__()
        self.criterion = loss if loss is not None else nn.CrossEntropyLoss(reduction="sum")
        check_loss(self.criterion, backprop, net)
        self.set_metrics = SetMetrics(metrics)  # the configured torchmetrics, a copy per evaluated set
        self.norms = ghost_batch_norm(net, norm_batch_size)
        self.norm_batch_size = norm_batch_size
        # Manual optimization: a step may span several chunks, and Lightning's gradient accumulation
        # scales by a fixed count instead of the samples actually in the step.
        self.automatic_optimization = False
        self.net, self.optimizer, self.scheduler, self.backprop = net, optimizer, scheduler, backprop
        self.warmup_epochs, self.monitor = warmup_epochs, monitor
        self.clip = (gradient_clip_val, gradient_clip_algorithm) if gradient_clip_val else None
        self.history: list[dict[str, float]] = []
        self.last_evaluation: dict[str, float] = {}
        self.samples_seen, self.samples_evaluated, self.clock = 0, 0, TrainingClock()
        self._measured: dict[str, float] = {}  # this epoch's figures of measurements (add_figures)
        self._shown: list[str] = []  # those of them the console shows

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """The loss of a chunk, summed over its samples: a step divides the sum by its own size, exactly."""
        return self.criterion(logits, y)

    def schedule(self, optimizer: Optimizer) -> LRScheduler | None:
        """The warm-up and the configured schedule (`descent.schedules`), as `resume=` rebuilds them too."""
        return with_warmup(optimizer, self.scheduler, self.warmup_epochs)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameters())
        scheduler = self.schedule(optimizer)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}  # stepped here, by epoch or on `monitor`

    def on_fit_start(self) -> None:
        num_classes = getattr(self.trainer.datamodule, "num_classes", None)
        if num_classes is not None:
            check_loss_sums(self.criterion, num_classes, next(self.net.parameters()).dtype, self.device)
        check_precision(self.backprop, self.trainer.precision_plugin, self.trainer.precision)

    def training_step(self, chunks: Sequence[Chunk], batch_idx: int) -> None:
        """One optimizer step, accumulated exactly over its chunks (`descent.stepping`)."""
        loss_sum, evaluations = take_step(self, chunks, batch_idx + 1)
        if self.global_step == self.trainer.max_steps:  # max_steps mid-epoch: evaluate the weights it ends with
            self.trainer.should_stop = True
        divisor = chunks[0].loss_divisor
        self.samples_seen += round(divisor * self.trainer.world_size)
        self.samples_evaluated += evaluations * round(divisor * self.trainer.world_size)
        every = self.trainer.log_every_n_steps  # the steps Lightning writes to the logger (0: none)
        if every and self.global_step % every == 0:
            self.log(results.STEP_LOSS, loss_sum / divisor, on_step=True, on_epoch=False)
            # Its x-axis, given (Lightning would add its own 0-based "epoch" figure): the count of steps before it,
            # as the loss is that of the weights before this step (resume.GoingOn.purge_step relies on it).
            self.log("step", float(self.global_step - 1), on_step=True, on_epoch=False)

    def on_train_start(self) -> None:
        if self.trainer.ckpt_path is not None:  # resume=: the schedule, for this config's max_epochs
            rebuild_schedule(self.trainer, self.schedule, self.current_epoch)
        self.clock.start()  # a run resumed mid-epoch gets no on_train_epoch_start for that epoch

    def on_train_epoch_start(self) -> None:
        self.clock.start()

    def on_train_epoch_end(self) -> None:
        """After the epoch's evaluation (Lightning 2 evaluates before this hook): the next epoch's rate."""
        self.clock.stop(self.device)
        epoch = self.current_epoch + 1
        lr = self.optimizers().param_groups[0]["lr"]
        evaluated = bool(self.history) and self.history[-1]["epoch"] == epoch
        if self.trainer.is_global_zero and not evaluated:
            every, epochs = self.trainer.check_val_every_n_epoch, self.trainer.max_epochs
            log.info(results.unevaluated_line(epoch, epochs, every, self.global_step, self.clock.done, lr))
        scheduler = self.lr_schedulers()
        if scheduler is None:
            return
        if not follows_figures(scheduler):
            scheduler.step()
        elif evaluated:  # a schedule on `monitor` steps on evaluated epochs only
            scheduler.step(self.history[-1][self.monitor])

    @property
    def evaluating_an_epoch(self) -> bool:
        """Evaluating theta^k within fit, not in a sanity check and not in `validate` (eval.py)."""
        return self.trainer.state.fn == TrainerFn.FITTING and not self.trainer.sanity_checking

    def add_figures(self, figures: dict[str, float], console: bool = False) -> None:
        """A measurement's figures of theta^k (descent.measurement), logged and kept with this epoch's own."""
        self._measured |= figures
        if console:
            self._shown += list(figures)

    @property
    def samples_per_group(self) -> int:
        """The samples a step's chunks must keep together: a BatchNorm's group, or 1 without BatchNorm."""
        return self.norm_batch_size if self.norms else 1

    def on_validation_model_eval(self) -> None:
        """Before anything is evaluated (a callback's measurement included): the statistics of theta^k."""
        if self.evaluating_an_epoch:
            self.clock.stop(self.device)
        recompute_statistics_of(self)
        super().on_validation_model_eval()

    def on_validation_epoch_start(self) -> None:
        if self.evaluating_an_epoch:
            self.clock.stop(self.device)
        self._sums = torch.zeros(len(EVAL_SETS), len(metrics.SUMS), dtype=torch.float64, device=self.device)

    def validation_step(self, chunk: Chunk, batch_idx: int, dataloader_idx: int = 0) -> None:
        """One chunk of a set (`dataloader_idx` in EVAL_SETS order): its summed loss, errors and count."""
        logits = self(chunk.x)
        self._sums[dataloader_idx] += metrics.chunk_sums(self.loss(logits, chunk.y), logits, chunk.y)
        self.set_metrics.add_chunk(dataloader_idx, logits, chunk.y)

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._sums, reduce_op="sum").tolist()
        figures = metrics.figures(sums, self.set_metrics.compute_and_reset())
        self.last_evaluation = figures
        if not self.evaluating_an_epoch:
            return
        epoch = self.current_epoch + 1
        lr = self.optimizers().param_groups[0]["lr"]
        check_evaluated_loss(figures["train/loss"], epoch, self.global_step + 1, lr)
        num_train = getattr(self.trainer.datamodule, "num_train", None)
        passes = self.samples_evaluated / num_train if num_train else math.nan
        progress = (float(self.global_step), float(self.samples_seen), passes, lr, self.clock.done)
        figures |= dict(zip(results.PROGRESS, progress, strict=True)) | self._measured
        shown = {name: self._measured[name] for name in self._shown}
        self._measured, self._shown = {}, []
        self.history.append({"epoch": epoch, **figures})
        self.log_dict(figures)
        self.log("epoch", float(epoch))  # counted from 1 in every logger, as in every line and in metrics.json
        self.log("step", float(epoch))  # the x-axis of every per-epoch chart is the epoch k
        if self.trainer.is_global_zero:
            log.info(results.epoch_line(self.history[-1]))
            if shown:
                log.info(results.measured_line(epoch, shown))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The run's bookkeeping (descent.checkpoints.StepState adds the step's own state)."""
        kept = {key: getattr(self, key) for key in ("history", "samples_seen", "samples_evaluated")}
        checkpoint.setdefault("descent", {}).update(kept, train_seconds=self.clock.seconds)
        # The epoch these weights belong to, counted from 1 as everywhere else in descent (Lightning's own resume
        # reads its loop state, not this).
        checkpoint["epoch"] = self.current_epoch + 1

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("descent", {})
        self.history, self.samples_seen = state.get("history", []), state.get("samples_seen", 0)
        self.samples_evaluated = state.get("samples_evaluated", self.samples_seen)
        self.clock = TrainingClock(state.get("train_seconds", 0.0))
