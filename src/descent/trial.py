"""A search's trial as its run sees it: `monitor` reported to the study after every evaluated epoch, and the run
stopped when the study's pruner says so (Optuna's own pruners: median, successive halving, hyperband).

The Optuna sweeper (`descent.search`) gives each job its trial in the `trial` key: the study's name and storage,
the trial's number and id, and the pruner's settings (a pruner lives in the process that asks it, not in the
storage). The global rank 0 reports and asks, and every rank follows its answer; a pruned run ends as one that
reached max_epochs does (its checkpoints, metrics.json, logs), with `ended.reason` "pruned", and exits 0.
"""

import logging
from typing import Any

import lightning
from lightning.pytorch.callbacks import Callback

from descent.search import build_pruner, open_storage

log = logging.getLogger(__name__)


class TrialReports(Callback):
    def __init__(self, number: int, id: int, study_name: str, storage: str, monitor: str, pruner: Any = None) -> None:
        self.number, self.id, self.study_name, self.storage = number, id, study_name, storage
        self.monitor, self.pruner = monitor, pruner
        self.trial: Any = None
        self.pruned_after: int | None = None  # the epoch

    def on_fit_start(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        import optuna

        storage = open_storage(self.storage)
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=build_pruner(self.pruner))
        state = storage.get_trial(self.id).state
        if state != optuna.trial.TrialState.RUNNING:  # a finished trial's run extended by hand (resume=<its dir>)
            log.info("trial %d of study %s is %s: this run goes on without reporting to it", self.number,
                     self.study_name, state.name)  # fmt: skip
            return
        self.trial = optuna.Trial(study, self.id)

    def on_validation_end(self, trainer: lightning.Trainer, module: Any) -> None:
        if not module.evaluating_an_epoch or not module.history:
            return
        row, prune = module.history[-1], False
        if trainer.is_global_zero and self.trial is not None:
            self.trial.report(row[self.monitor], step=int(row["epoch"]))
            # After the last epoch the trial is complete, not pruned: its value is a result.
            prune = row["epoch"] < trainer.max_epochs and self.trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned_after, trainer.should_stop = int(row["epoch"]), True

    def why(self) -> str:
        pruner = (self.pruner or {}).get("_target_", "").rsplit(".", 1)[-1]
        return (
            f"pruned after epoch {self.pruned_after}: {pruner} stopped trial {self.number} of study {self.study_name}"
        )


def trial_reports(cfg: Any) -> tuple[Callback, ...]:
    """The callback of a search's trial (`cfg.trial`, set by descent.search); none for any other run."""
    trial = cfg.get("trial")
    if not trial:
        return ()
    return (TrialReports(trial.number, trial.id, trial.study_name, trial.storage, cfg.monitor, trial.get("pruner")),)
