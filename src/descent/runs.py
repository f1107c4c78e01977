"""The one reader of run dirs: what `src/train.py` wrote, as the sweep summary and the report both see it.

A run dir holds `metrics.json` (every epoch's figures in `history`, the `monitor`, and `stopped` if training ended
early), `config.yaml`, and, for a sweep job, `.hydra/overrides.yaml` and, if the job failed, `error.txt`.
`metrics.json` holds every figure the event files do, at float64 and whichever logger ran, so the event files are
not read: the one thing they add is the epochs of a run still in progress, which is reported as running instead.
"final" and "best" are `descent.results.final_and_best` of the history: best is the epoch of the lowest `monitor`
(the highest, for a figure whose `mode` is "max").
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from descent.errors import DescentError
from descent.results import final_and_best

GOING_ON_FROM = ("last.ckpt", "interrupted.ckpt", "periodic.ckpt")
"""What `resume=` may go on from: the end of the last evaluated epoch, a stop signal's moment, a periodic save."""

WITH_A_RESULT = ("ok", "pruned")
"""Run statuses whose figures are a result: finished, or stopped by a search's pruner (a result so far)."""

Row = dict[str, float]
"""One epoch's figures, as metrics.json's history holds them: `epoch` and every `{set}/{name}` and PROGRESS key."""


@dataclass
class Run:
    """One run of `src/train.py`: where it is, how it was overridden, how it ended and what it measured."""

    name: str  # its path relative to the dir searched; the dir's own name if it is the run dir
    path: Path
    overrides: dict[str, str] = field(default_factory=dict)
    status: str = "running"  # ok; pruned (by a search); failed (error.txt, or diverged); interrupted (a stop
    # signal); running (no result)
    monitor: str | None = None
    mode: str = "min"  # "max": the monitor is better higher
    history: list[Row] = field(default_factory=list)
    final: Row | None = None
    best: Row | None = None  # the first epoch with the lowest `monitor`
    error: str = ""
    partial: list[str] = field(default_factory=list)  # which figures are not over whole sets (metrics.json's)

    @property
    def objective(self) -> float:
        """The best epoch's `monitor` figure, what a sweep optimises (so far, for a pruned run); NaN for a run
        without a result."""
        return self.best[self.monitor] if self.status in WITH_A_RESULT and self.best and self.monitor else math.nan

    @property
    def rank(self) -> float:
        """What runs sort by, best first: the objective, negated where higher is better; infinite without one."""
        if math.isnan(self.objective):
            return math.inf
        return -self.objective if self.mode == "max" else self.objective

    def series(self, key: str) -> list[float]:
        """`key`'s value at every epoch, in epoch order."""
        return [row[key] for row in self.history]


NOT_SETTINGS = ("resume", "trial")
"""Overrides that say where a run goes on or which search's trial it is, not what it is (nor its dir's name)."""


def read_overrides(run_dir: Path) -> dict[str, str]:
    """The `key=value` command-line overrides Hydra saved for the run, but NOT_SETTINGS; {} for a run dir without
    `.hydra/`."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    pairs = (item.split("=", 1) for item in OmegaConf.load(path) if "=" in item)
    return {key: value for key, value in pairs if key.lstrip("+~") not in NOT_SETTINGS}


def read_metrics(path: Path) -> dict[str, Any] | None:
    """metrics.json of a training run; None if there is none, or it is one that `src/eval.py` wrote (no history)."""
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:  # written whole (descent.files): not a half-written file, a broken one
        raise DescentError(f"{path}: not JSON ({error}); move it or its run dir away") from None
    return content if isinstance(content, dict) and "history" in content else None


def read_run(run_dir: Path, name: str) -> Run | None:
    """The run in `run_dir`; None if the dir is not one of `src/train.py` (an eval run's metrics.json, say)."""
    run = Run(name, run_dir, read_overrides(run_dir))
    content = read_metrics(run_dir / "metrics.json")
    if content is not None:
        run.monitor, run.mode, run.history = content.get("monitor"), content.get("mode", "min"), content["history"]
        run.partial = content.get("partial", [])
        if run.history and run.monitor:
            run.final, run.best = final_and_best(run.history, run.monitor, run.mode)
        if "stopped" in content:  # diverged or interrupted: what it has is not a result
            interrupted = content["stopped"].get("reason") == "interrupted"
            run.status, run.error = "interrupted" if interrupted else "failed", content["stopped"]["message"]
        elif content.get("ended", {}).get("reason") == "pruned":  # a search's pruner stopped it: a result so far
            run.status, run.error = "pruned", content["ended"]["message"]
        else:
            run.status = "ok"
    elif (run_dir / "error.txt").is_file():
        run.status, run.error = "failed", (run_dir / "error.txt").read_text().strip()
    elif (run_dir / "metrics.json").is_file() or not (run_dir / ".hydra" / "overrides.yaml").is_file():
        return None
    return run


def not_over_whole_sets(runs: list[Run]) -> list[str]:
    """A markdown section naming each run whose figures are not over whole sets, and what they are over (debug=overfit,
    eval.train_samples); none where every run's are."""
    lines = [f"- `{run.name}`: {line}" for run in runs for line in run.partial]
    return ["## Figures not over whole sets", "", *lines] if lines else []


def going_on_from(run_dir: Path) -> bool:
    """Whether `resume=<run_dir>` has a checkpoint to go on from."""
    return any((run_dir / "checkpoints" / name).is_file() for name in GOING_ON_FROM)


def read_runs(root: Path) -> list[Run]:
    """Every run in `root` or below it, by name: dirs with a training metrics.json, or sweep jobs (`.hydra/`)."""
    found = {path.parent for path in root.rglob("metrics.json")}
    found |= {path.parent.parent for path in root.rglob(".hydra/overrides.yaml")}
    runs = []
    for run_dir in sorted(found):
        run = read_run(run_dir, run_dir.relative_to(root).as_posix() if run_dir != root else root.name)
        if run is not None:
            runs.append(run)
    return runs
