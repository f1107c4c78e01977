"""Lightning's own progress bar (Rich when installed, else tqdm, as Lightning picks), fed at most every `refresh_s`.

Fed at every step, the bar cost a third of a B=64 epoch of the default MLP on a 2-core CPU (about 1.5 ms a step:
its task update and the metrics it reads back). Fed ten times a second, it looks the same to the eye and costs
about 1% of any epoch, however short its steps. The epoch's last step is always shown.
"""

import math
import time
from typing import Any

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

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
    """Lightning's RichProgressBar, fed at most every `refresh_s`."""


class TQDMBar(Throttled, TQDMProgressBar):
    """Lightning's TQDMProgressBar, fed at most every `refresh_s`."""


def progress_bar(refresh_s: float = REFRESH_S) -> ProgressBar:
    """The bar Lightning would choose by itself, fed at most every `refresh_s` seconds."""
    bar = RichBar() if _RICH_AVAILABLE else TQDMBar()
    bar.refresh_s = refresh_s
    return bar
