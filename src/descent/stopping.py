"""How a run stops early, and what a stop signal does in each phase of it: no torch, no Lightning.

Before training starts (imports, data, set-up), SIGINT or SIGTERM stops the process at once: nothing is worth
keeping yet. From the start of training, they ask the run to stop before its next optimizer step, whose weights
are then saved (`descent.stepping.interrupted`); a second SIGINT stops at once. SIGUSR1 (SLURM's warning ahead of
a time limit) does the same during training.
"""

import math
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from descent.errors import DescentError, exit_code

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SignalBeforeTraining(KeyboardInterrupt):
    """SIGINT or SIGTERM before the first optimizer step: a KeyboardInterrupt (what Ctrl-C is to any Python code
    in its way), which `descent.errors.exit_on_error` reports in one line, with nothing written."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


class StoppedEarly(DescentError):
    """Training stopped before max_epochs, at `epoch` (1-based, not finished) before optimizer step `step`."""

    def __init__(self, epoch: int, step: int, message: str) -> None:
        super().__init__(message)
        self.epoch, self.step = epoch, step

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its own arguments: a sweep job on another process or node (SLURM's launcher) returns its
        error pickled, and Exception's default would call __init__ with the message alone."""
        return type(self), (self.epoch, self.step, str(self))


class Diverged(StoppedEarly):
    """The loss became NaN or infinite."""


def check_evaluated_loss(train_loss: float, epoch: int, step: int, lr: float) -> None:
    """The epoch's last step may have made the weights non-finite, which the evaluation of theta^k shows first."""
    if not math.isfinite(train_loss):
        raise Diverged(
            epoch,
            step,
            f"training diverged in epoch {epoch}: the training loss after its last step is {train_loss}; lower the "
            f"learning rate (optimizer.lr, {lr:g})",
        )


class Interrupted(StoppedEarly):
    """SIGINT or SIGTERM arrived in training: exit as the signal's default action would (128 + its number)."""

    label = "stopped"
    stops_a_sweep = True

    def __init__(self, epoch: int, step: int, message: str, signal_name: str) -> None:
        super().__init__(epoch, step, message)
        self.signal_name, self.exit_code = signal_name, exit_code(signal_name)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.epoch, self.step, str(self), self.signal_name)


def stop_before_training() -> None:
    """From now until training starts, SIGINT and SIGTERM end the process with one `stopped:` line (also where the
    shell started it with SIGINT ignored, as `command &` does)."""

    def stop(signum: int, frame: Any) -> None:
        raise SignalBeforeTraining(signal.Signals(signum).name)

    if threading.current_thread() is threading.main_thread():  # signals can only be handled there
        for number in STOP_SIGNALS:
            signal.signal(number, stop)


_received: str | None = None
"""The stop signal received during training, if any: signals are the process's, and so is this."""
_saving_a_stop = False


def received() -> str | None:
    """The name of the stop signal received since training started (SIGINT, SIGTERM, SIGUSR1), or None."""
    return _received


def saving_a_stop() -> bool:
    """Whether the checkpoint being written is a stop signal's (descent.checkpoints.StepState edits its loops)."""
    return _saving_a_stop


@contextmanager
def writing_a_stop() -> Iterator[None]:
    global _saving_a_stop
    _saving_a_stop = True
    try:
        yield
    finally:
        _saving_a_stop = False


@contextmanager
def stop_on_signals() -> Iterator[dict[int, Any]]:
    """During training: SIGINT, SIGTERM and SIGUSR1 ask the run to stop before its next optimizer step
    (`received`; descent.stepping checks it), a second SIGINT stops at once. Yields the handlers they had before
    (`descent.slurm.requeue` hands SIGUSR1 on to submitit's)."""
    global _received
    _received = None

    def ask_to_stop(signum: int, frame: Any) -> None:
        global _received
        if _received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        _received = signal.Signals(signum).name

    if threading.current_thread() is not threading.main_thread():  # signals can only be handled there
        yield {}
        return
    numbers = (*STOP_SIGNALS, signal.SIGUSR1)
    previous = {number: signal.signal(number, ask_to_stop) for number in numbers}
    try:
        yield previous
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def why_it_ended(trainer: Any, last: dict[str, float]) -> dict[str, Any]:
    """Why fit returned, for metrics.json and the console: max_epochs, max_steps, a time limit (Lightning's Timer:
    trainer.max_time), an early-stopping callback, a search's pruner (descent.trial), or any other callback that
    set `should_stop`; the epoch it ended in, and whether `last`, the last evaluated epoch's row, is of the weights
    it ended with (an epoch that trainer.check_val_every_n_epoch leaves out is not evaluated, a stop in it neither)."""
    from lightning.pytorch.callbacks import Timer
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

    from descent.trial import TrialReports

    epoch, step = trainer.current_epoch, trainer.global_step  # after fit: the epoch it ended in, from 1
    stopper = trainer.early_stopping_callback
    pruned = [c for c in trainer.callbacks if isinstance(c, TrialReports) and c.pruned_after is not None]
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    left = timer.time_remaining() if timer is not None else None  # None: no time limit
    if pruned:
        reason, message = "pruned", pruned[0].why()
    elif (
        stopper is not None
        and stopper.stopping_reason != EarlyStoppingReason.NOT_STOPPED
        and stopper.stopped_epoch == epoch - 1  # in this fit, not one a resumed run's state recalls
    ):
        reason, message = "early_stopping", f"ended early after epoch {epoch}: {stopper.stopping_reason_message}"
    elif trainer.max_steps != -1 and step >= trainer.max_steps:
        reason, message = "max_steps", f"ended at trainer.max_steps={trainer.max_steps}, in epoch {epoch}"
    elif timer is not None and left is not None and left <= 0:
        limit = round(timer.time_elapsed() + left)  # the duration it was given, in seconds
        reason = "max_time"
        message = f"ended at its time limit ({limit} s of fit: trainer.max_time, Lightning's Timer), in epoch {epoch}"
    elif trainer.max_epochs not in (None, -1) and epoch < trainer.max_epochs:
        reason = "stopped"
        message = f"ended in epoch {epoch} of max_epochs={trainer.max_epochs}: a callback set trainer.should_stop"
    else:
        reason, message = "max_epochs", f"ended after max_epochs={trainer.max_epochs}"
    if last["progress/steps"] != step:  # a stop, or the end, in an epoch left unevaluated
        message += (
            f", at step {step}; its figures are epoch {int(last['epoch'])}'s, the last evaluated "
            f"(trainer.check_val_every_n_epoch={trainer.check_val_every_n_epoch}), and last.ckpt holds the weights "
            "it ended with, not evaluated"
        )
    return {"reason": reason, "epoch": epoch, "step": step, "message": message}
