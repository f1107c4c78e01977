"""descent's training clock: time/train_s, the seconds spent training, in every figure and checkpoint."""

import time
from typing import Any

import torch


class TrainingClock:
    """Seconds spent training (time/train_s): from an epoch's start (or a resume's) to its evaluation or its end,
    whichever comes first, summed over epochs; the running epoch's so far included in `seconds`."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.done: float = seconds
        self.started: float | None = None

    def start(self) -> None:
        self.started = time.perf_counter()

    def stop(self, device: Any = None) -> None:
        """Training time ends here, if it was running (on a GPU, once its queued work is done)."""
        if self.started is not None:
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize(device)
            self.done += time.perf_counter() - self.started
            self.started = None

    @property
    def seconds(self) -> float:
        return self.done + (time.perf_counter() - self.started if self.started is not None else 0.0)
