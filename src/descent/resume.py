"""Going on with a stopped run: what `resume=<run dir>` reads from it (once) and the config it goes on with."""

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from descent.checkpoints import load
from descent.errors import require
from descent.runs import GOING_ON_FROM

SCHEDULE_LENGTHS = ("T_max", "total_iters")
"""Scheduler settings that are the run's length in epochs when they equal max_epochs (CosineAnnealingLR, LinearLR)."""

RESUMABLE = ("max_epochs", "trainer", "data.data_dir", "data.system_dir", "data.download", "logger")
"""What `resume=<run dir>` lets the command line change: how long and where the run goes on, not what it is."""


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
        return cls.of(run_dir, newest)

    @classmethod
    def of(cls, run_dir: Path, checkpoint: Path) -> "GoingOn":
        """Going on in `run_dir` from `checkpoint`, one of its GOING_ON_FROM."""
        saved = load(checkpoint, mmap=True)
        return cls(run_dir, checkpoint, int(saved.get("global_step", 0)), saved.get("descent", {}).get("history", []))

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
