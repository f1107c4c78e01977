"""One exception for every mistake a user can fix, and the one-line report of it."""

import functools
import logging
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from hydra.errors import InstantiationException

P = ParamSpec("P")
R = TypeVar("R")


class DescentError(Exception):
    """A bad setting or file: the message names it, says what is wrong and how to fix it."""

    label = "error"
    exit_code = 2
    stops_a_sweep = False  # True: end the whole multirun (Ctrl-C), not just this job


def exit_on_error(main: Callable[P, R] | None = None, *, when_a_sweep_stops: Callable[[], None] | None = None) -> Any:
    """Turn a DescentError into one line on stderr and exit code 2 (a traceback with HYDRA_FULL_ERROR=1).

    In a multirun the error is raised on after its line, so that Hydra marks the job failed, runs the others
    and fails the sweep at the end, rather than the first bad job ending the whole sweep; an error that ends the
    whole sweep (a stop signal) calls `when_a_sweep_stops` first (train.py: the sweep's summary).
    Bare (`@exit_on_error`) or with it (`@exit_on_error(when_a_sweep_stops=...)`).
    """
    if main is None:
        return functools.partial(exit_on_error, when_a_sweep_stops=when_a_sweep_stops)

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            try:
                return main(*args, **kwargs)
            except InstantiationException as error:  # raised in a constructor that Hydra called: report ours
                if isinstance(error.__cause__, DescentError):
                    raise error.__cause__ from None
                raise
        except KeyboardInterrupt as stop:  # before training started (after, the run saves its weights, says so)
            name = getattr(stop, "signal_name", "SIGINT")  # SIGTERM too: descent.stopping.stop_before_training
            print(f"stopped: {name} before training started; no checkpoint or metrics were written", file=sys.stderr)
            if in_multirun() and when_a_sweep_stops is not None:
                when_a_sweep_stops()
            remove_unused_run_dir()
            raise SystemExit(exit_code(name)) from None
        except DescentError as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"{error.label}: {error}", file=sys.stderr)
            if in_multirun() and not error.stops_a_sweep:
                raise
            if in_multirun() and when_a_sweep_stops is not None:
                when_a_sweep_stops()
            remove_unused_run_dir()
            raise SystemExit(error.exit_code) from None

    return wrapper


def exit_code(signal_name: str) -> int:
    """What the signal's default action would exit with: 128 + its number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signal.Signals[signal_name].value


STARTED = time.time()
"""When this process imported descent's entry point: a file modified since was written by it."""


def remove_unused_run_dir() -> None:
    """A single run refused or stopped before it kept anything leaves no run dir (TensorBoard would list an empty
    run): Hydra's run dir goes when it holds no checkpoint and no metrics.json and every file in it was written by
    this process (a pinned dir that held an earlier run, or a resumed run's own, stays as it is)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.RUN:
        return
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    files = [path for path in run_dir.rglob("*") if path.is_file()] if run_dir.is_dir() else []
    kept = (run_dir / "metrics.json").exists() or any(path.suffix == ".ckpt" for path in files)
    if kept or any(path.stat().st_mtime < STARTED for path in files):
        return
    logging.shutdown()  # Hydra's train.log handler lets go of its file
    shutil.rmtree(run_dir, ignore_errors=True)


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def is_whole(value: object) -> bool:
    """An int, and not a bool (YAML's `true` would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite int or float, and not a bool: nan and inf are refused wherever a number is expected."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def require(condition: Any, message: str) -> None:
    if not condition:
        raise DescentError(message)
