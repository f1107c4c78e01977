"""Files written whole or not at all: a reader, or a kill at any moment, never sees half of one."""

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from descent.errors import DescentError


def replace(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temporary file beside `path`, flushed to disk, then rename it over `path`.

    A disk that fills up or a dir that cannot be written ends in one line naming `path`; the earlier version of the
    file, if any, is untouched (the rename never happened) and no temporary file is left behind.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        raise DescentError(
            f"{path}: cannot be written ({error.strerror or error}); free some space on that disk or give a run dir "
            "that can be written (hydra.run.dir=...); the files written before are whole"
        ) from None
    except RuntimeError as error:  # torch.save reports a full disk as "unexpected pos" from its zip writer
        if "unexpected pos" not in str(error) and "file write failed" not in str(error):
            raise
        raise DescentError(
            f"{path}: cannot be written (the disk is full); free some space on that disk or give a run dir that "
            "can be written (hydra.run.dir=...); the files written before are whole"
        ) from None
    finally:
        with contextlib.suppress(OSError):  # a dir that cannot be written cannot hold the temporary file either
            temporary.unlink(missing_ok=True)


def replace_text(path: Path, text: str) -> None:
    replace(path, lambda file: file.write(text.encode()))
