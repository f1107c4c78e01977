"""Lightning's own progress bar (Rich when installed, else tqdm, as Lightning picks), fed at most every `refresh_s`;
without one, a progress line every few minutes.

Fed at every step, the bar's task update and the metrics it reads back cost a large share of a short step (the
bench's a_bar row); fed ten times a second it looks the same to the eye. The epoch's last step is always shown.
"""

import logging
import math
import time
from typing import Any

from lightning.pytorch.callbacks import Callback, ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

log = logging.getLogger(__name__)

REFRESH_S = 0.1
"""Seconds between two updates of the training bar: ten a second, Rich's own redraw rate."""


class Throttled:
    """Passes a training step on to the bar only when `refresh_s` has passed since the last one, or at the last."""

    refresh_s = REFRESH_S
    _fed_at = -math.inf

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if now - self._fed_at < self.refresh_s and batch_idx + 1 < self.total_train_batches:  # type: ignore[attr-defined]
            return
        self._fed_at = now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # type: ignore[misc]


class RichBar(Throttled, RichProgressBar):
    """Lightning's RichProgressBar, fed at most every `refresh_s`, its epochs counted from 1 as descent's lines."""

    def _get_train_description(self, current_epoch: int) -> str:
        description = f"Epoch {current_epoch + 1}/{self.trainer.max_epochs}"
        return f"{description:{len(self.validation_description)}}"  # as wide as "Validation": no flicker


class TQDMBar(Throttled, TQDMProgressBar):
    """Lightning's TQDMProgressBar, fed at most every `refresh_s`, its epochs counted from 1 as descent's lines."""

    def on_train_epoch_start(self, trainer: Any, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")


def progress_bar(refresh_s: float = REFRESH_S) -> ProgressBar:
    """The bar Lightning would choose by itself, fed at most every `refresh_s` seconds."""
    bar = RichBar() if _RICH_AVAILABLE else TQDMBar()
    bar.refresh_s = refresh_s
    return bar


class ProgressLines(Callback):
    """Without a bar (a log file, a cluster's job): a line within each epoch every `every_minutes`, saying the
    steps done of the epoch's total, the samples a second so far, and about how long the epoch has left."""

    def __init__(self, every_minutes: float) -> None:
        self.every_s = 60 * every_minutes
        self.started, self.last, self.first = 0.0, 0.0, 0

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self.on_train_epoch_start(trainer, module)  # a run resumed mid-epoch gets no on_train_epoch_start for it

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        self.started = self.last = time.perf_counter()
        self.first = -1  # the epoch's first step here: not 0 when a resumed run starts mid-epoch

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.first < 0:
            self.first = batch_idx
        now = time.perf_counter()
        if now - self.last < self.every_s or not trainer.is_global_zero:
            return
        self.last = now
        done, total, taken = batch_idx + 1, trainer.num_training_batches, batch_idx + 1 - self.first
        seconds_a_step = (now - self.started) / taken
        samples = taken * trainer.datamodule.samples_per_step
        log.info(
            "epoch %d: step %d of %d (%d%%), %.0f samples/s, about %s left in the epoch",
            trainer.current_epoch + 1,
            done,
            total,
            100 * done // total,
            samples / (now - self.started),
            duration((total - done) * seconds_a_step),
        )


def duration(seconds: float) -> str:
    """`1 h 05 min`, `12 min`, `40 s`: as a person reads a time left."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    return f"{int(seconds // 60)} min" if seconds >= 60 else f"{int(seconds)} s"
