"""Checkpoints that survive a kill, load without unpickling code, and say why they do not fit a model."""

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from descent.errors import DescentError, require
from descent.files import replace

RESUMABLE = ("max_epochs", "trainer", "data.data_dir", "data.system_dir", "data.download", "logger")
"""What `resume=<run dir>` lets the command line change: how long and where the run goes on, not what it is."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file and rename it into place: a kill during saving (even kill -9)
    leaves the previous checkpoint whole. Load with `weights_only=True`: tensors and plain data only, never code.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        replace(Path(path), lambda file: torch.save(checkpoint, file))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = True) -> dict[str, Any]:
        return load(Path(path), map_location)


class BackgroundCheckpointIO(AsyncCheckpointIO):
    """How a run writes its checkpoints: atomically (`AtomicCheckpointIO`), from a thread, while training goes on.

    Writing one (serialising, writing, fsync) took 3 to 15 ms for the default MLP on the 2-core machines measured,
    much of it waiting for the disk; two an epoch would add up to a twentieth to the evaluation, more beside a GPU.
    The tensors are copied to the host before the thread gets them, so later steps do not leak into the file and
    no copy holds GPU memory that the memory plan does not count. Lightning waits for the writes when `fit` ends,
    also when it ends in an error or a signal; a failed write is raised then or at the next save.
    """

    def __init__(self) -> None:
        super().__init__(AtomicCheckpointIO())

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        # .cpu() copies a device tensor to the host and returns a host tensor as it is; Lightning then copies that.
        super().save_checkpoint(apply_to_collection(checkpoint, torch.Tensor, torch.Tensor.cpu), path, storage_options)


def load(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint's contents, refusing anything but tensors and plain data (no unpickling of code)."""
    require(path.is_file(), f"{path}: no such checkpoint file")
    with open(path, "rb") as file:
        complete = zipfile.is_zipfile(file)  # torch.save writes a zip archive; its index is at the end
        file.seek(0)
        starts_as_zip = file.read(4) == b"PK\x03\x04"
    require(
        complete,
        f"{path}: is cut short (the file ends before its index; a copy or a write that did not finish): use "
        "another checkpoint, such as last.ckpt or best.ckpt of the same run"
        if starts_as_zip
        else f"{path}: is not a checkpoint (not a file written by torch.save); use a checkpoint written by descent",
    )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise DescentError(
            f"{path}: holds objects other than tensors and plain data, which descent does not load (they could run "
            "code); use a checkpoint written by descent"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile):
        raise DescentError(
            f"{path}: is damaged (its contents do not read back whole); use another checkpoint, such as last.ckpt "
            "or best.ckpt of the same run"
        ) from None


def check_fits(path: Path, model: torch.nn.Module, key: str = "ckpt_path") -> None:
    """Fail with the parameters whose shapes differ when a checkpoint was written by another model config."""
    saved = load(path)["state_dict"]
    here = model.state_dict()
    differences = [
        f"{name} is {list(saved[name].shape)} there, {list(here[name].shape)} here"
        for name in here
        if name in saved and saved[name].shape != here[name].shape
    ]
    differences += [f"{name} is missing there" for name in here if name not in saved]
    differences += [f"{name} is not in this model" for name in saved if name not in here]
    require(
        not differences,
        f"{key}={path} was written by a different model ({'; '.join(differences[:4])}"
        f"{'; ...' if len(differences) > 4 else ''}): use the model settings it was trained with "
        "(model.net, data)",
    )


def resumed_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The config of the run in `cfg.resume`, to continue from its last.ckpt in its own dir.

    `overrides` are the command line's; only RESUMABLE keys may change, since anything else would make the
    continued run a different one.
    """
    run_dir = Path(cfg.resume)
    saved, last = run_dir / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    require(saved.is_file(), f"resume={run_dir}: no config.yaml there; give a run dir that src/train.py wrote")
    require(
        last.is_file(),
        f"resume={run_dir}: no checkpoints/last.ckpt there (the run ended before its first epoch did); "
        "start it again without resume",
    )
    changed = [item for item in overrides if not item.startswith(("resume=", "hydra.", "hydra/"))]
    refused = [item for item in changed if not item.lstrip("+~").startswith(RESUMABLE)]
    require(
        not refused,
        f"resume={run_dir}: {', '.join(refused)} cannot change when a run goes on; only "
        f"{', '.join(RESUMABLE)} can (start a new run for other settings)",
    )
    resumed = OmegaConf.load(saved)
    for item in changed:
        key, value = item.lstrip("+~").split("=", 1)
        if key in ("trainer", "logger"):  # a group choice: take the command line's whole composed group
            resumed[key] = cfg[key]
        else:
            OmegaConf.update(resumed, key, OmegaConf.select(cfg, key), force_add=True)
    # config.yaml is resolved: the keys that others were interpolated from must be passed on by hand.
    resumed.trainer.max_epochs = resumed.max_epochs
    resumed.trainer.default_root_dir = resumed.run_dir = str(run_dir)
    if "save_dir" in (resumed.get("logger") or {}):
        resumed.logger.save_dir = str(run_dir)
    resumed.ckpt_path, resumed.resume = str(last), str(run_dir)
    return resumed
