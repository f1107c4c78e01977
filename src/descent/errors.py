"""One exception for every mistake a user can fix, and the one-line report of it."""

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class DescentError(Exception):
    """A bad setting or file: the message names it, says what is wrong and how to fix it."""


def exit_on_error(main: Callable[P, R]) -> Callable[P, R]:
    """Turn a DescentError into one line on stderr and exit code 2 (a traceback with HYDRA_FULL_ERROR=1)."""

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return main(*args, **kwargs)
        except DescentError as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


def require(condition: Any, message: str) -> None:
    if not condition:
        raise DescentError(message)
