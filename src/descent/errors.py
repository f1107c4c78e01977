"""One exception for every mistake a user can fix, and the one-line report of it."""

import functools
import math
import os
import sys
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
        except KeyboardInterrupt:  # Ctrl-C before training started (after, the run saves its weights and says so)
            print("stopped: SIGINT before training started; no checkpoint or metrics were written", file=sys.stderr)
            raise SystemExit(130) from None
        except DescentError as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"{error.label}: {error}", file=sys.stderr)
            if in_multirun() and not error.stops_a_sweep:
                raise
            if in_multirun() and when_a_sweep_stops is not None:
                when_a_sweep_stops()
            raise SystemExit(error.exit_code) from None

    return wrapper


def check_group_options(overrides: list[str], conf: Path) -> None:
    """Refuse `group=option` overrides naming an option that `conf/<group>/` does not have, in one line.

    Hydra's own message for it spans a dozen lines, the config search path among them. Multirun lists
    (`optimizer=gd,nope`) and lists of options (`callbacks=[a,b]`) are checked option by option.
    """
    searchpath = [item.partition("=")[2].strip("[]") for item in overrides if item.startswith("hydra.searchpath=")]
    roots = [conf, *(Path(entry.strip()[len("file://") :]) for entry in ",".join(searchpath).split(",") if entry)]
    if any(not entry.strip().startswith("file://") for entry in ",".join(searchpath).split(",") if entry):
        return  # a package on the search path: its options cannot be listed here, Hydra will say
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        groups = [root / key for root in roots if (root / key).is_dir()]
        if not sep or key.startswith("hydra") or not groups or value in ("", "null"):
            continue
        options = sorted({path.stem for group in groups for path in group.glob("*.yaml")})
        for option in value.strip("[]").split(","):
            require(
                option.strip() in options,
                f"{key}={option.strip()} is not an option of {key}: choose one of {', '.join(options)} "
                f"(the files in conf/{key}/)",
            )


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
