"""Checkpoints that survive a kill, load without unpickling code, and say why they do not fit a model."""

import pickle
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig

from descent import stopping
from descent.errors import DescentError, require
from descent.files import replace


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


def load(path: Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """A checkpoint's contents, refusing anything but tensors and plain data (no unpickling of code). `mmap`: the
    tensors are mapped, not read, for a look at the bookkeeping (steps, history) of a large model's checkpoint."""
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
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
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


class PeriodicCheckpoint(Callback):
    """`path` rewritten every `every_n_steps` optimizer steps and/or `every_s` seconds, after a step, as every
    checkpoint is written (in the background, atomically): a kill -9 loses at most that interval.

    Not Lightning's ModelCheckpoint: under manual optimization (a step over several chunks) it ignores
    `train_time_interval` and warns at every save that the weights are those after the step, which is the point.
    """

    def __init__(self, path: Path, every_n_steps: int | None = None, every_s: float | None = None) -> None:
        self.path, self.every_n_steps, self.every_s = path, every_n_steps, every_s
        self.last = 0.0

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self.last = time.monotonic()

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.monotonic()
        due = self.every_n_steps is not None and trainer.global_step % self.every_n_steps == 0
        if self.every_s is not None:  # rank 0's clock decides for all: every rank must save, or none
            due = trainer.strategy.broadcast(due or now - self.last >= self.every_s)
        if due:
            trainer.save_checkpoint(self.path)
            self.last = now


class StepState(Callback):
    """What a checkpoint written inside an epoch holds beyond Lightning's own, to go on at that very step: torch's
    random state as the running step began (a stop inside a step takes that step again, so dropout's masks of the
    resumed run are those the uninterrupted run drew), and, in a stop signal's checkpoint, Lightning's loop
    counters as the place the run stopped needs them."""

    def __init__(self) -> None:
        self.rng_at_step_start: torch.Tensor | None = None

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        self.rng_at_step_start = torch.get_rng_state()

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.rng_at_step_start = None

    def on_save_checkpoint(self, trainer: Any, module: Any, checkpoint: dict[str, Any]) -> None:
        rng = self.rng_at_step_start
        checkpoint.setdefault("descent", {})["rng"] = rng if rng is not None else torch.get_rng_state()
        if not stopping.saving_a_stop() or "loops" not in checkpoint:
            return
        loops = checkpoint["loops"]["fit_loop"]
        if trainer.validating:
            # Stopped in the evaluation: resume= evaluates theta^k again from its first chunk (Lightning goes back
            # into an evaluation it finds stopped inside its first batch, and skips one it finds later).
            started = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
            loops["epoch_loop.val_loop.batch_progress"] |= {"total": started, "current": dict(started)}
        else:
            # Stopped before a step: Lightning's restore assumes a save after one, at on_train_batch_end, and adds
            # that step to the loggers' step count; count it back here.
            loops["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1

    def on_load_checkpoint(self, trainer: Any, module: Any, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("descent", {})
        if "rng" in state and trainer.state.fn == TrainerFn.FITTING:
            torch.set_rng_state(state["rng"].cpu())


def periodic_checkpoints(settings: DictConfig | dict, run_dir: Path) -> list[PeriodicCheckpoint]:
    """checkpoints/periodic.ckpt every `checkpoint.every_n_steps` optimizer steps and/or `every_n_minutes` minutes;
    `resume=` goes on from it at that step."""
    steps, minutes = settings.get("every_n_steps"), settings.get("every_n_minutes")  # checked by check_config
    if steps is None and minutes is None:
        return []
    path = run_dir / "checkpoints" / "periodic.ckpt"
    return [PeriodicCheckpoint(path, steps, None if minutes is None else 60 * minutes)]


def in_precision(model: torch.nn.Module, trainer: Any) -> None:
    """The module in the run's precision (float64 under 64-true) before any checkpoint is loaded into it: Lightning
    loads `ckpt_path` before it converts the module, which would round float64 weights to float32 on the way."""
    trainer.precision_plugin.convert_module(model)
