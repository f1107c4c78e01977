"""A sweep's jobs, launched where an earlier launch into the same sweep dir did not finish them: Hydra's basic
sweeper on it, and what the Optuna search (descent.search) launches its trials with.

Every job's outcome is read from its run dir (`descent.runs`), whether it ran now or before: a finished run (ok,
failed or pruned) is read back, not run again; one with a checkpoint goes on from it (`resume=<job dir>`, at its
exact step); any other runs from the start. So `python src/train.py resume=<sweep dir>` (which repeats the sweep's
own command into its dir, `descent.multirun.sweep_going_on`) ends as the sweep would have, had it never stopped.
Jobs are run by whichever Hydra launcher is set (the basic one, SLURM's). Nothing here imports torch: Hydra
imports this module at every start, to look for plugins.
"""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper as HydraBasicSweeper
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from descent.runs import WITH_A_RESULT, Run, going_on_from, read_run

log = logging.getLogger(__name__)

FINISHED = (*WITH_A_RESULT, "failed")
"""A job dir whose run ended so is read back when its sweep is launched again."""


class SweepFailed(CompactHydraException):
    """Some jobs failed: Hydra prints a compact exception as its message alone, exit status 1."""


class Launches:
    """The jobs of one sweep, launched by Hydra's launcher (the basic one, SLURM's) where they did not finish in an
    earlier launch into the same sweep dir, and each one's run as it ended."""

    def __init__(self, config: DictConfig, hydra_context: HydraContext, launcher: Any) -> None:
        self.config, self.hydra_context, self.launcher = config, hydra_context, launcher
        self.runs: list[Run] = []

    def job_dir(self, overrides: Sequence[str], number: int) -> Path:
        """Where the launcher will run the job: the sweep dir's `hydra.sweep.subdir` for these overrides."""
        job = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(job):
            job.hydra.job.id = job.hydra.job.num = number
        return Path(str(job.hydra.sweep.dir)) / str(job.hydra.sweep.subdir)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Run]:
        """Run the jobs (numbered from `initial_job_idx`) that have not finished; every job's run, in order."""
        dirs = [self.job_dir(overrides, initial_job_idx + i) for i, overrides in enumerate(job_overrides)]
        before = [read_run(job_dir, job_dir.name) if (job_dir / ".hydra").is_dir() else None for job_dir in dirs]
        todo = [i for i, run in enumerate(before) if run is None or run.status not in FINISHED]
        done = len(job_overrides) - len(todo)
        resumed = [i for i in todo if going_on_from(dirs[i])]
        errors: dict[int, str] = {}
        if done or resumed:
            log.info(
                "%s: %d of these %d jobs finished before (read back, not run again), %d go on from a checkpoint",
                self.config.hydra.sweep.dir, done, len(job_overrides), len(resumed),
            )  # fmt: skip
        for segment in contiguous(todo):  # each job keeps its number (hydra.job.num)
            batch = [
                [*job_overrides[i], f"resume={dirs[i]}", "hydra.output_subdir=null"]
                if i in resumed
                else list(job_overrides[i])
                for i in segment
            ]
            returns = self.launcher.launch(batch, initial_job_idx=initial_job_idx + segment[0])
            for i, job in zip(segment, returns, strict=True):
                if job.status == JobStatus.FAILED:
                    errors[i] = " ".join(f"{type(job._return_value).__name__}: {job._return_value}".split())
        ended = []
        for i, job_dir in enumerate(dirs):
            given = dict(item.split("=", 1) for item in job_overrides[i] if "=" in item)
            run = read_run(job_dir, job_dir.name) or Run(job_dir.name, job_dir, given)
            if i in errors and run.status != "failed":  # a job that failed before it could say so in its dir
                run.status, run.error = "failed", errors[i]
            ended.append(run)
        self.runs += ended
        return ended

    def failures(self, jobs: str) -> str:
        """One line of the failed runs, or "" if none failed."""
        failed = [run for run in self.runs if run.status == "failed"]
        if not failed:
            return ""
        first = f"{','.join(f'{k}={v}' for k, v in failed[0].overrides.items())}: {failed[0].error}"
        return (
            f"{len(failed)} of {len(self.runs)} {jobs} failed (the first: {first}); each one's error is in "
            f"{self.config.hydra.sweep.dir}/summary.md"
        )


def contiguous(indices: list[int]) -> list[list[int]]:
    """[0, 1, 3] -> [[0, 1], [3]]."""
    segments: list[list[int]] = []
    for i in indices:
        if segments and segments[-1][-1] == i - 1:
            segments[-1].append(i)
        else:
            segments.append([i])
    return segments


class ReadBackLauncher:
    """What Hydra's basic sweeper calls as its launcher: `Launches`, each job's return its best `monitor`
    figure (None where it failed, so that the sweep goes on)."""

    def __init__(self, launches: Launches) -> None:
        self.launches = launches

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        runs = self.launches.launch(job_overrides, initial_job_idx)
        return [
            JobReturn(
                overrides=list(overrides),
                working_dir=str(run.path),
                status=JobStatus.COMPLETED,
                _return_value=None if run.status == "failed" else run.objective,
            )  # fmt: skip
            for overrides, run in zip(job_overrides, runs, strict=True)
        ]


class BasicSweeper(HydraBasicSweeper):
    """Hydra's basic sweeper: every job runs (or is read back, or goes on), then one line if any failed (exit 1)."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launches = Launches(config, hydra_context, self.launcher)
        self.launcher = ReadBackLauncher(self.launches)  # type: ignore[assignment]

    def sweep(self, arguments: list[str]) -> Any:
        returns = super().sweep(arguments)
        if failed := self.launches.failures("jobs"):
            raise SweepFailed(f"error: {failed}")
        return returns
