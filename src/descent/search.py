"""An Optuna search of descent's own (ask and tell, on today's Optuna): its space, samplers, pruners and storage.

Hydra's sweeper interface, its trials launched by `descent.launches` (so a failed trial is Optuna's FAIL and the
search goes on, and a stopped search goes on where it stopped). The study is a file of the sweep dir (`storage:
sqlite`, or `journal` for runs on a network file system), so a continued search goes on from its trials: those a
stop left running are run again (resumed) with the values they were given, then new ones are asked for up to
`n_trials` in all. Each trial's job gets its study, number and pruner (the `trial` key, `descent.trial`), reports
`monitor` after every evaluated epoch and stops when the pruner says so. Search spaces keep the syntax of Hydra's
Optuna sweeper (`interval`, `tag(log, ...)`, `choice`, `range`). Hydra takes sweepers from the `hydra_plugins`
package only: `hydra_plugins/descent_sweepers.py` names this one there. Nothing here imports torch or, until a
search starts, Optuna.
"""

import logging
import math
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from descent.errors import DescentError
from descent.launches import Launches, SweepFailed

log = logging.getLogger(__name__)


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
    # The grid's order is its seed's: a continued grid search goes on through the same order.
    if trials_so_far and settings.get("seed") is not None and not given:
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
    """`value` as Hydra's override grammar reads it back: {k:v}, [a,b], quoted strings, null, true. In a quoted
    string Hydra takes a backslash literally but before a quote, and `${` as an interpolation."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{hydra_literal(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_literal(item) for item in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("'", "\\'").replace("${", "\\${") + "'"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)


def override_of(key: str, value: Any) -> str:
    """`key=value` that Hydra reads back as this very value: a sampled choice may be a string with a comma (a sweep
    to Hydra) or one that reads as a number or null, which need escaping or quotes."""
    text = Transformer.str(value)
    try:
        (back,) = OverridesParser.create().parse_overrides([f"{key}={text}"])
        same = not back.is_sweep_override() and type(back.value()) is type(value) and back.value() == value
    except Exception:  # Hydra's grammar refused it: quoted below
        same = False
    return f"{key}={text}" if same else f"{key}={hydra_literal(value)}"


def trial_states(study: Any) -> dict[str, int]:
    """How many of the study's trials are in each state ("complete", "pruned", "fail", ...), in order first met."""
    states = [trial.state.name.lower() for trial in study.trials]
    return {state: states.count(state) for state in dict.fromkeys(states)}


def tell(study: Any, number: int, value: float | None, state: Any) -> None:
    """Optuna's tell, once per trial. The grid sampler stops its study when the grid is used up, which outside
    `Study.optimize` raises once the trial is recorded: here that is the search's last trial, as `n_trials` says."""
    try:
        study.tell(number, value, state=state, skip_if_finished=True)
    except RuntimeError as error:
        if "Study.stop" not in str(error):
            raise


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
        try:  # a bad setting: one line (Hydra prints a compact exception as its message alone), exit status 1
            space, fixed = search_space([*(f"{key}={value}" for key, value in self.params.items()), *arguments])
            n_trials = self.n_trials
            if is_grid(self.sampler):
                n_trials = min(n_trials, math.prod(len(values) for values in grid(space).values()))
            storage = storage_of(self.storage, sweep_dir)
        except DescentError as error:
            raise SweepFailed(f"error: {error}") from None
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
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
                    values = [override_of(key, value) for key, value in trial.params.items()]
                    values += [f"{key}={value}" for key, value in fixed.items()]  # as the command line gave them
                    trial.set_user_attr("overrides", [*values, f"trial={hydra_literal(about)}"])
            try:
                runs = self.launches.launch([t.user_attrs["overrides"] for t in batch], batch[0].number)
            except Exception:  # a job that cannot even be composed: FAIL, so that a continued search does not retry it
                for trial in batch:
                    tell(study, trial.number, None, optuna.trial.TrialState.FAIL)
                raise
            for trial, run in zip(batch, runs, strict=True):
                if run.status == "ok" and not math.isnan(run.objective):
                    tell(study, trial.number, run.objective, None)
                else:
                    state = optuna.trial.TrialState.PRUNED if run.status == "pruned" else optuna.trial.TrialState.FAIL
                    tell(study, trial.number, None, state)
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
        counts = trial_states(study)
        results = {"name": "optuna", "best_params": best.params, "best_value": best.value, "trials": counts}
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        log.info("best of %d trials (%s): %s = %s at %s", len(study.trials), counts, "value", best.value, best.params)
