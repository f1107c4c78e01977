"""Checkpoints that survive a kill, load without unpickling code, and say why they do not fit a model."""

import pickle
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from descent import stopping
from descent.errors import DescentError, require
from descent.files import replace

SCHEDULE_LENGTHS = ("T_max", "total_iters")
"""Scheduler settings that are the run's length in epochs when they equal max_epochs (CosineAnnealingLR, LinearLR)."""

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


GOING_ON_FROM = ("last.ckpt", "interrupted.ckpt", "periodic.ckpt")
"""What `resume=` may go on from: the end of the last evaluated epoch, a stop signal's moment, a periodic save."""


def newest_checkpoint(run_dir: Path) -> Path | None:
    """Of a run's `GOING_ON_FROM` checkpoints, the one furthest into the run (the most optimizer steps; on a tie
    last.ckpt, whose epoch was evaluated, then interrupted.ckpt); None if it has none."""
    found = [run_dir / "checkpoints" / name for name in GOING_ON_FROM if (run_dir / "checkpoints" / name).is_file()]
    if not found:
        return None
    steps = {path: load(path, mmap=True).get("global_step", 0) for path in found}
    return max(found, key=lambda path: (steps[path], -GOING_ON_FROM.index(path.name)))


@dataclass(frozen=True)
class GoingOn:
    """What `resume=` goes on from, read once and handed to all that needs it: Lightning's fit, the loggers (the
    CSV log's rows and TensorBoard's purge step) and the SLURM requeue."""

    run_dir: Path
    checkpoint: Path
    global_step: int
    history: list[dict[str, Any]]

    @classmethod
    def read(cls, run_dir: Path | str) -> "GoingOn":
        run_dir = Path(run_dir)
        require(
            (run_dir / "config.yaml").is_file(),
            f"resume={run_dir}: no config.yaml there; give a run dir that src/train.py wrote",
        )
        newest = newest_checkpoint(run_dir)
        require(
            newest is not None,
            f"resume={run_dir}: no checkpoint there ({', '.join(GOING_ON_FROM)} in checkpoints/; the run was stopped "
            "before it wrote one); start it again without resume",
        )
        assert newest is not None
        checkpoint = load(newest, mmap=True)
        history = checkpoint.get("descent", {}).get("history", [])
        return cls(run_dir, newest, int(checkpoint.get("global_step", 0)), history)

    @property
    def purge_step(self) -> int:
        """Where the resumed run's TensorBoard events start: TensorBoard hides every point at or after this step
        that the stopped run wrote after its checkpoint (those steps are taken, and logged, again). Step losses sit
        at the count of steps before theirs, per-epoch figures at their epoch k: the later of the two keeps every
        evaluated epoch."""
        return max(self.global_step, len(self.history) + 1)


def resumed_config(cfg: DictConfig, overrides: list[str], going_on: GoingOn | None = None) -> DictConfig:
    """The config of the run in `cfg.resume`, to continue from its newest checkpoint in its own dir.

    `overrides` are the command line's; only RESUMABLE keys may change, since anything else would make the
    continued run a different one. `going_on` is `GoingOn.read(cfg.resume)` where the caller has it already.
    """
    going_on = going_on or GoingOn.read(cfg.resume)
    run_dir, saved = going_on.run_dir, going_on.run_dir / "config.yaml"
    resumed = OmegaConf.load(saved)

    def value(config: DictConfig, key: str) -> Any:
        node = OmegaConf.select(config, key)
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node

    # The run's own command with resume= appended repeats its settings: only values that differ are changes.
    changed = [item for item in overrides if not item.startswith(("resume=", "hydra.", "hydra/"))]
    keys = {item: item.lstrip("+~").split("=", 1)[0] for item in changed}
    refused = [
        f"{key} (the run has {value(resumed, key)!r}, the command line {value(cfg, key)!r})"
        for item, key in keys.items()
        if not key.startswith(RESUMABLE) and value(cfg, key) != value(resumed, key)
    ]
    require(
        not refused,
        f"resume={run_dir}: {'; '.join(refused)} cannot change when a run goes on; only "
        f"{', '.join(RESUMABLE)} can (start a new run for other settings, or from these weights with ckpt_path=)",
    )
    done = len(going_on.history)
    given = [key for key in keys.values() if key in ("max_epochs", "trainer.max_epochs")]  # one setting
    max_epochs = value(cfg, given[-1]) if given else resumed.max_epochs
    require(
        max_epochs > done,
        f"resume={run_dir}: the run has finished {done} epochs, so max_epochs={max_epochs} leaves nothing to do; "
        f"give max_epochs larger than {done} to train it longer",
    )
    resumed.max_epochs = max_epochs
    for key in keys.values():
        if key in ("max_epochs", "trainer.max_epochs"):
            continue  # set above and below
        if key in ("trainer", "logger"):  # a group choice: take the command line's whole composed group
            resumed[key] = cfg[key]
        else:
            OmegaConf.update(resumed, key, OmegaConf.select(cfg, key), force_add=True)
    # config.yaml is resolved: the keys that others were interpolated from must be passed on by hand. A schedule's
    # length (a cosine's T_max: ${max_epochs} in conf/scheduler/) follows the new max_epochs, so an extended run
    # goes on as a run launched with it would (Classifier rebuilds the restored scheduler from these settings).
    old_max_epochs = OmegaConf.load(saved).max_epochs
    for key in SCHEDULE_LENGTHS:
        if (resumed.get("scheduler") or {}).get(key) == old_max_epochs:
            resumed.scheduler[key] = resumed.max_epochs
    resumed.trainer.max_epochs = resumed.max_epochs
    resumed.trainer.default_root_dir = resumed.run_dir = str(run_dir)
    for node in (resumed.get("logger") or {}).values():
        if node and "save_dir" in node:
            node.save_dir = str(run_dir)
    resumed.ckpt_path, resumed.resume = None, str(run_dir)
    return resumed


def rebuild_schedule(trainer: Any, scheduler: Callable[[Any], LRScheduler] | None, epochs_done: int) -> None:
    """After resume=, the schedule a run launched with this config's settings would be at, after `epochs_done`.

    A restored scheduler keeps the settings of the run that saved it: a cosine over the old max_epochs would
    restart upward once extended. Rebuilt from the base rates and stepped once per epoch done, it is the new
    run's, whatever the schedule (one that depends on the epoch alone comes out as it was).
    """
    config = trainer.lr_scheduler_configs[0] if trainer.lr_scheduler_configs else None
    if config is None or scheduler is None or not isinstance(config.scheduler, LRScheduler):
        return
    if isinstance(config.scheduler, ReduceLROnPlateau):  # its state follows the figures: restored as it was saved
        return
    optimizer = config.scheduler.optimizer
    for group in optimizer.param_groups:  # the rate before any schedule (a warm-up's SequentialLR has no base_lrs)
        group["lr"] = group["initial_lr"]
    with warnings.catch_warnings():  # stepping the schedule before the optimizer is the point here
        warnings.simplefilter("ignore", UserWarning)
        config.scheduler = scheduler(optimizer)
        for _ in range(epochs_done):
            config.scheduler.step()


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
