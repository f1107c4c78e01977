"""descent's sweepers: Hydra's basic sweep and an Optuna search (ask and tell, on today's Optuna), both going on
past failed jobs and from where an earlier launch into the same sweep dir stopped.

Every job's outcome is read from its run dir (`descent.runs`), whether it ran now or before: a finished run (ok,
failed or pruned) is read back, not run again; one with a checkpoint goes on from it (`resume=<job dir>`, at its
exact step); any other runs from the start. So `python src/train.py resume=<sweep dir>` (which repeats the sweep's
own command into its dir, `descent.multirun.sweep_going_on`) ends as the sweep would have, had it never stopped.

The search keeps its study in a file of the sweep dir (`storage: sqlite`, or `journal` for runs on a network file
system), so a continued search goes on from its trials: those a stop left running are run again (resumed) with the
parameters they were given, then new ones are asked for up to `n_trials` in all. Each trial's job gets its study,
number and pruner (the `trial` key, `descent.trial`), reports `monitor` after every evaluated epoch and stops when
the pruner says so. Search spaces keep the syntax of Hydra's Optuna sweeper (`interval`, `tag(log, ...)`,
`choice`, `range`). Hydra takes sweepers from the `hydra_plugins` package only: `hydra_plugins/descent_sweepers.py`
names these there. Nothing here imports torch: Hydra imports this module at every start, to look for plugins.
"""

import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper as HydraBasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from descent.errors import DescentError
from descent.runs import Run, going_on_from, read_run

log = logging.getLogger(__name__)

FINISHED = ("ok", "failed", "pruned")
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


def distribution(override: Override) -> Any:
    """Hydra's Optuna sweep syntax as an Optuna distribution, or the fixed value of a plain override."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(value, RangeSweep):  # range(start, stop, step): stop excluded, as in Python
        start, stop, step = value.start, value.stop, value.step
        last = start + step * math.floor((stop - start) / step - 1e-9)
        if all(isinstance(x, int) for x in (start, stop, step)):
            return IntDistribution(int(start), int(last), step=int(step))
        return FloatDistribution(float(start), float(last), step=float(step))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise DescentError(f"hydra.sweeper: {override.input_line} is no search space of Optuna's (choice, range, interval)")


def search_space(arguments: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The searched keys' distributions, and the fixed overrides, of `params` and the command line (which wins)."""
    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key, value = override.get_key_element(), distribution(override)
        space.pop(key, None), fixed.pop(key, None)
        (fixed if isinstance(value, str) else space)[key] = value
    return space, fixed


def grid(space: dict[str, Any]) -> dict[str, list[Any]]:
    """Every value of each distribution, for Optuna's GridSampler: choices and ranges only."""
    from optuna.distributions import CategoricalDistribution

    values = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            values[key] = list(dist.choices)
        elif getattr(dist, "step", None) is not None and not getattr(dist, "log", False):
            count = round((dist.high - dist.low) / dist.step) + 1
            values[key] = [dist.low + i * dist.step for i in range(count)]
        else:
            raise DescentError(
                f"hydra.sweeper.params.{key}: the grid sampler takes choice(...) and range(...) only, not an interval"
            )
    return values


def is_grid(sampler: DictConfig) -> bool:
    return sampler._target_.rsplit(".", 1)[-1] == "GridSampler"


def build_sampler(settings: DictConfig, space: dict[str, Any], trials_so_far: int = 0) -> Any:
    """The sampler of conf/hydra/sweeper/sampler/ for this search space (the grid's values, for GridSampler); a
    continued search's seed moved on by the trials so far, so that it does not draw the same values again."""
    given: dict[str, Any] = {"search_space": grid(space)} if is_grid(settings) else {}
    if trials_so_far and settings.get("seed") is not None:
        given["seed"] = settings.seed + trials_so_far
    return instantiate(settings, **given)


def build_pruner(settings: DictConfig | None) -> Any:
    """The pruner of conf/hydra/sweeper/pruner/; Optuna's NopPruner for `none` (an empty config)."""
    import optuna

    return instantiate(settings) if settings else optuna.pruners.NopPruner()


def storage_of(storage: str, sweep_dir: Path) -> str:
    """`sqlite` (a file in the sweep dir), `journal` (Optuna's journal file there: for jobs on a network file system,
    as SLURM's), or a database URL, as the URL or journal path every process of the search opens."""
    if storage == "sqlite":
        return f"sqlite:///{sweep_dir.resolve() / 'optuna.db'}"
    if storage == "journal":
        return str(sweep_dir.resolve() / "optuna.journal")
    if "://" not in storage:
        raise DescentError(
            f"hydra.sweeper.storage={storage}: give sqlite (a file in the sweep dir), journal (Optuna's journal file "
            "there) or a database URL such as postgresql://host/db"
        )
    return storage


def open_storage(storage: str) -> Any:
    """What `storage_of` gave, opened: Optuna's RDB storage for a URL, its journal storage for a journal file."""
    import optuna

    if "://" in storage:
        return optuna.storages.RDBStorage(storage)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))


def hydra_literal(value: Any) -> str:
    """`value` as Hydra's override grammar reads it back: {k:v}, [a,b], quoted strings, null, true."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{hydra_literal(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_literal(item) for item in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)


class OptunaSweeper(Sweeper):
    """A search of `n_trials` trials, `n_jobs` at a time through the configured launcher, from `sampler` and
    `pruner` (conf/hydra/sweeper/sampler/, pruner/), in `storage` (see `storage_of`)."""

    def __init__(
        self,
        sampler: DictConfig,
        direction: str,
        n_trials: int,
        pruner: DictConfig | None = None,
        storage: str = "sqlite",
        study_name: str = "descent",
        n_jobs: int = 1,
        params: DictConfig | None = None,
    ) -> None:
        self.sampler, self.pruner, self.direction = sampler, pruner, direction
        self.n_trials, self.n_jobs, self.storage, self.study_name = n_trials, n_jobs, storage, study_name
        self.params = params or {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.launches = Launches(config, hydra_context, launcher)

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        space, fixed = search_space([*(f"{key}={value}" for key, value in self.params.items()), *arguments])
        n_trials = self.n_trials
        if is_grid(self.sampler):
            n_trials = min(n_trials, math.prod(len(values) for values in grid(space).values()))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        storage = storage_of(self.storage, sweep_dir)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial is logged by its job, not twice
        study = optuna.create_study(
            storage=open_storage(storage),
            pruner=build_pruner(self.pruner),
            study_name=self.study_name,
            direction=self.direction,
            load_if_exists=True,
        )
        study.sampler = build_sampler(self.sampler, space, len(study.trials))
        pruner = OmegaConf.to_container(self.pruner, resolve=True) if self.pruner else None
        # Trials a stop left running go on first (resumed where they have a checkpoint), with the values they got.
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        waiting = [optuna.Trial(study, trial._trial_id) for trial in running]
        log.info(
            "study %s in %s: %d trials so far (%d to go on), %d in all; sampler %s, pruner %s",
            self.study_name, storage, len(study.trials), len(waiting), n_trials,
            self.sampler._target_.rsplit(".", 1)[-1], (pruner or {}).get("_target_", "none").rsplit(".", 1)[-1],
        )  # fmt: skip
        while waiting or len(study.trials) < n_trials:
            asked = min(self.n_jobs, n_trials - len(study.trials))
            batch = waiting[: self.n_jobs] or [study.ask(space) for _ in range(asked)]
            waiting = waiting[len(batch) :] if waiting else []
            for trial in batch:
                if "overrides" not in trial.user_attrs:  # kept in the study: a continued search runs it alike
                    about = {"number": trial.number, "id": trial._trial_id, "study_name": self.study_name}
                    about |= {"storage": storage, "pruner": pruner}
                    values = [f"{key}={value}" for key, value in (trial.params | fixed).items()]
                    trial.set_user_attr("overrides", [*values, f"trial={hydra_literal(about)}"])
            runs = self.launches.launch([t.user_attrs["overrides"] for t in batch], initial_job_idx=batch[0].number)
            for trial, run in zip(batch, runs, strict=True):
                if run.status == "ok" and not math.isnan(run.objective):
                    study.tell(trial.number, run.objective, skip_if_finished=True)
                else:
                    state = optuna.trial.TrialState.PRUNED if run.status == "pruned" else optuna.trial.TrialState.FAIL
                    study.tell(trial.number, state=state, skip_if_finished=True)
        self.write_results(study, sweep_dir)
        if failed := self.launches.failures("trials"):  # recorded as FAIL in the study; the search went on
            print(f"note: {failed}", file=sys.stderr)

    def write_results(self, study: Any, sweep_dir: Path) -> None:
        """optimization_results.yaml, as Hydra's Optuna sweeper wrote it: the best trial's parameters and value."""
        import optuna

        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not complete:
            log.warning("no trial of study %s completed: no optimization_results.yaml", self.study_name)
            return
        best = study.best_trial
        states = [trial.state.name.lower() for trial in study.trials]
        counts = {state: states.count(state) for state in dict.fromkeys(states)}
        results = {"name": "optuna", "best_params": best.params, "best_value": best.value, "trials": counts}
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        log.info("best of %d trials (%s): %s = %s at %s", len(states), counts, "value", best.value, best.params)
