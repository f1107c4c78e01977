"""Sweeps and searches that outlive their bad jobs: Hydra's basic sweeper and the Optuna sweeper, each run to the end
when a job fails, the failures then said in one line.

Both read each job's return value, where a failed job re-raises its error: the basic sweeper ends in a traceback
after the jobs of its batch, the Optuna sweeper (hydra-optuna-sweeper 1.2) ends the whole search at the first bad
trial, with no `optimization_results.yaml`. Here a failed job's value is replaced (None; NaN for Optuna, whose study
records a NaN as its own FAIL state, as `Study.optimize` does) and its one-line error stays in its `error.txt`, and
so in the sweep summary (`descent.sweep`). Hydra takes sweepers from the `hydra_plugins` package only:
`hydra_plugins/descent_sweepers.py` names these there.
"""

import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper as HydraBasicSweeper
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException


class SweepFailed(CompactHydraException):
    """Some jobs failed: Hydra prints a compact exception as its message alone, exit status 1."""


class Failures:
    """The jobs a sweep ran and the one-line errors of those that failed."""

    def __init__(self) -> None:
        self.run, self.failed = 0, []

    def say(self, jobs: str, sweep_dir: str) -> str:
        return (
            f"{len(self.failed)} of {self.run} {jobs} failed (the first: {self.failed[0]}); each one's error is in "
            f"{sweep_dir}/summary.md"
        )


@contextmanager
def failures_kept(launcher: Any, value: Any) -> Iterator[Failures]:
    """While it is open, jobs that `launcher` runs and that fail return `value` instead of raising their error."""
    launch, failures = launcher.launch, Failures()

    def launch_keeping_failures(job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        returns = launch(job_overrides, initial_job_idx)
        failures.run += len(returns)
        for job in returns:
            if job.status == JobStatus.FAILED:
                failures.failed.append(f"{','.join(job.overrides)}: {job._return_value}")
                job.status, job.return_value = JobStatus.COMPLETED, value
        return returns

    launcher.launch = launch_keeping_failures
    try:
        yield failures
    finally:
        launcher.launch = launch


class BasicSweeper(HydraBasicSweeper):
    """Hydra's basic sweeper: every job runs, then one line if any failed (exit 1)."""

    def sweep(self, arguments: list[str]) -> Any:
        with failures_kept(self.launcher, None) as failures:
            returns = super().sweep(arguments)
        if failures.failed:
            raise SweepFailed(f"error: {failures.say('jobs', self.config.hydra.sweep.dir)}")
        return returns


try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as PluginOptunaSweeper
except ImportError:  # the optuna extra is not installed: hparams_search=optuna says so through Hydra
    PluginOptunaSweeper = object  # type: ignore[assignment,misc]


class OptunaSweeper(PluginOptunaSweeper):  # type: ignore[valid-type,misc]
    """The plugin's sweeper, with failed trials recorded as FAIL in the study while the search goes on."""

    def sweep(self, arguments: list[str]) -> None:
        import optuna  # here: Hydra imports this module at every start, to look for plugins

        tell = optuna.study.Study.tell

        def tell_nan_as_failed(study: Any, trial: Any, values: Any = None, state: Any = None) -> Any:
            if values is not None and any(math.isnan(value) for value in values):
                return tell(study, trial, state=optuna.trial.TrialState.FAIL)
            return tell(study, trial, values=values, state=state)

        optuna.study.Study.tell = tell_nan_as_failed  # type: ignore[method-assign]
        try:
            with failures_kept(self.sweeper.launcher, math.nan) as failures:
                self.sweeper.sweep(arguments)
        finally:
            optuna.study.Study.tell = tell  # type: ignore[method-assign]
        if failures.failed:  # recorded as FAIL in the study; the search itself went on to n_trials
            print(f"note: {failures.say('trials', self.sweeper.config.hydra.sweep.dir)}", file=sys.stderr)
