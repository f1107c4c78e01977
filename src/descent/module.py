"""The LightningModule: a network trained on cross-entropy, one optimizer step per batch, evaluated every epoch.

To train another loss, change `loss`; to train another network, give another `model.net` (see `descent.nets`).
"""

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from descent import metrics
from descent.backprop import check_mlp
from descent.batchnorm import ghost_batch_norm, recompute_statistics
from descent.checkpoints import rebuild_schedule
from descent.data import EVAL_SETS, Chunk, Chunks, Plan
from descent.errors import require
from descent.stepping import Diverged, take_step

log = logging.getLogger(__name__)

BACKPROPS = ("autograd", "manual")  # manual: descent.backprop, the lecture's chain of Jacobians written out


class Classifier(LightningModule):
    """`net` trained on cross-entropy; after every epoch k, the whole train, val and test sets are evaluated with
    theta^k in eval mode (not the running mean of the minibatch losses seen during the epoch).

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
    ) -> None:
        super().__init__()
        require(backprop in BACKPROPS, f"model.backprop={backprop!r} is not one of {', '.join(BACKPROPS)}")
        if backprop == "manual":
            check_mlp(net)
        self.norms = ghost_batch_norm(net, norm_batch_size)
        self.norm_batch_size = norm_batch_size
        # Manual optimization: a step may span several chunks, and Lightning's gradient accumulation
        # scales by a fixed count instead of the samples actually in the step.
        self.automatic_optimization = False
        self.net, self.optimizer, self.scheduler, self.backprop = net, optimizer, scheduler, backprop
        self.clip = (gradient_clip_val, gradient_clip_algorithm) if gradient_clip_val else None
        self.history: list[dict[str, float]] = []
        self.last_evaluation: dict[str, float] = {}
        self.samples_seen, self.samples_evaluated, self.train_seconds = 0, 0, 0.0
        self.stop_signal: str | None = None  # set by a SIGINT/SIGTERM handler: stop before the next step
        self.extra_figures: dict[str, float] = {}  # a callback's figures of theta^k (descent.noise), logged with them
        self.clock: float | None = None  # when this epoch's training started (time.perf_counter), while it runs
        self.rng_at_step_start: Tensor | None = None  # torch's random state as the running step began
        self.stopping = False  # while a stop signal's checkpoint is written (stepping.interrupted)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """The loss of a chunk, summed over its samples: a step divides the sum by its own size, exactly."""
        return F.cross_entropy(logits, y, reduction="sum")

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler(optimizer)}

    def on_fit_start(self) -> None:
        require(
            self.backprop == "autograd" or getattr(self.trainer.precision_plugin, "scaler", None) is None,
            f"model.backprop=manual with trainer.precision={self.trainer.precision}: its loss scaler works through "
            "autograd; use model.backprop=autograd or another precision",
        )

    def training_step(self, chunks: Sequence[Chunk], batch_idx: int) -> None:
        """One optimizer step, accumulated exactly over its chunks (`descent.stepping`)."""
        loss_sum, evaluations = take_step(self, chunks, batch_idx + 1)
        if self.global_step == self.trainer.max_steps:  # max_steps mid-epoch: evaluate the weights it ends with
            self.trainer.should_stop = True
        divisor = chunks[0].loss_divisor
        self.samples_seen += round(divisor * self.trainer.world_size)
        self.samples_evaluated += evaluations * round(divisor * self.trainer.world_size)
        if self.global_step % self.trainer.log_every_n_steps == 0:  # the steps Lightning writes to the logger
            self.log(metrics.STEP_LOSS, loss_sum / divisor, on_step=True, on_epoch=False)

    def on_train_start(self) -> None:
        if self.trainer.ckpt_path is not None:  # resume=: the schedule, for this config's max_epochs
            rebuild_schedule(self.trainer, self.scheduler, self.current_epoch)

    def on_train_epoch_start(self) -> None:
        self.clock = time.perf_counter()

    def stop_clock(self) -> None:
        """Training time ends at the evaluation or the epoch's end, whichever comes first (not every epoch is
        evaluated with check_val_every_n_epoch > 1)."""
        if self.clock is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.train_seconds += time.perf_counter() - self.clock
            self.clock = None

    def on_train_epoch_end(self) -> None:
        self.stop_clock()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def _end_of_epoch(self) -> bool:
        """Evaluating theta^k within fit, not in a sanity check and not in `validate` (eval.py)."""
        return self.trainer.state.fn == TrainerFn.FITTING and not self.trainer.sanity_checking

    @property
    def samples_per_group(self) -> int:
        """The samples a step's chunks must keep together: a BatchNorm's group, or 1 without BatchNorm."""
        return self.norm_batch_size if self.norms else 1

    def recompute_norm_statistics(self) -> None:
        """Precise BatchNorm at the present weights: each norm's statistics over the whole training set, read in
        the run's chunks (cut at group boundaries) on each rank and summed over the ranks."""
        if not self.norms:
            return
        data, trainer = self.trainer.datamodule, self.trainer
        images, labels = data.sets["train"]
        n, precision = len(labels), trainer.precision_plugin
        rank, world_size, group_size = trainer.global_rank, trainer.world_size, self.norm_batch_size
        plan = Plan(n, n, data.samples_per_chunk, rank=rank, world_size=world_size, group_size=group_size)
        chunks = (precision.convert_input(chunk.x) for chunk in Chunks(plan, images, labels))
        if trainer.world_size > 1:
            reduce = lambda sums: trainer.strategy.reduce(sums, reduce_op="sum")  # noqa: E731
        else:
            reduce = lambda sums: sums  # noqa: E731
        with precision.forward_context():
            recompute_statistics(self.net, self.norms, chunks, reduce)

    def on_validation_model_eval(self) -> None:
        """Before anything is evaluated (a callback's measurement included): the statistics of theta^k."""
        if self._end_of_epoch():
            self.stop_clock()
        self.recompute_norm_statistics()
        super().on_validation_model_eval()

    def on_validation_epoch_start(self) -> None:
        if self._end_of_epoch():
            self.stop_clock()
        self._sums = torch.zeros(len(EVAL_SETS), len(metrics.SUMS), dtype=torch.float64, device=self.device)

    def validation_step(self, chunk: Chunk, batch_idx: int, dataloader_idx: int = 0) -> None:
        """One chunk of a set (`dataloader_idx` in EVAL_SETS order): its summed loss, errors and count."""
        logits = self(chunk.x)
        self._sums[dataloader_idx] += metrics.chunk_sums(self.loss(logits, chunk.y), logits, chunk.y)

    def on_validation_epoch_end(self) -> None:
        figures = metrics.figures(self.trainer.strategy.reduce(self._sums, reduce_op="sum").tolist())
        self.last_evaluation = figures
        if not self._end_of_epoch():
            return
        epoch = self.current_epoch + 1
        lr = self.optimizers().param_groups[0]["lr"]
        if not math.isfinite(figures["train/loss"]):  # the epoch's last step made the weights non-finite
            raise Diverged(
                epoch,
                self.global_step + 1,
                f"training diverged in epoch {epoch}: the training loss after its last step is "
                f"{figures['train/loss']}; lower the learning rate (optimizer.lr, {lr:g})",
            )
        num_train = getattr(self.trainer.datamodule, "num_train", None)
        passes = self.samples_evaluated / num_train if num_train else math.nan
        progress = (float(self.global_step), float(self.samples_seen), passes, lr, self.train_seconds)
        figures |= dict(zip(metrics.PROGRESS, progress, strict=True)) | self.extra_figures
        self.extra_figures = {}
        self.history.append({"epoch": epoch, **figures})
        self.log_dict(figures)
        self.log("step", float(epoch))  # the x-axis of every per-epoch chart is the epoch k
        if self.trainer.is_global_zero:
            log.info(metrics.epoch_line(self.history[-1]))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.rng_at_step_start = torch.get_rng_state()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.rng_at_step_start = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        kept = ("history", "samples_seen", "samples_evaluated", "train_seconds")
        checkpoint["descent"] = {key: getattr(self, key) for key in kept}
        # The random state the next step starts from (a stop inside a step takes that step again): dropout's masks
        # of a resumed run are those the uninterrupted run drew.
        rng = self.rng_at_step_start
        checkpoint["descent"]["rng"] = rng if rng is not None else torch.get_rng_state()
        if self.stopping and "loops" in checkpoint:
            loops = checkpoint["loops"]["fit_loop"]
            if self.trainer.validating:
                # Stopped in the evaluation: resume= evaluates theta^k again from its first chunk (Lightning goes
                # back into an evaluation it finds stopped inside its first batch, and skips one it finds later).
                started = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
                loops["epoch_loop.val_loop.batch_progress"] |= {"total": started, "current": dict(started)}
            else:
                # Stopped before a step: Lightning's restore assumes a save after one, at on_train_batch_end, and
                # adds that step to the loggers' step count; count it back here.
                loops["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("descent", {})
        self.history, self.samples_seen = state.get("history", []), state.get("samples_seen", 0)
        self.samples_evaluated = state.get("samples_evaluated", self.samples_seen)
        self.train_seconds = state.get("train_seconds", 0.0)
        if "rng" in state and self.trainer.state.fn == TrainerFn.FITTING:
            torch.set_rng_state(state["rng"].cpu())
