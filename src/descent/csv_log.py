"""Lightning's CSV logger, made to keep a resumed run's earlier rows: Lightning's own deletes metrics.csv when it
opens the file again, after warning that "Previous log files in this directory will be deleted"."""

import csv
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger

from descent.results import STEPS
from descent.resume import GoingOn


class CSVLogger(LightningCSVLogger):
    """`metrics.csv` in the run dir, every epoch's rows once, also across `resume=`.

    A resumed run goes on from its newest checkpoint (`going_on`, given by `loggers.build_loggers`): the rows
    written up to it (its evaluated epochs, and the step losses of its steps) are read back and kept; those written
    after it, by steps that are now taken again, are left out, since the resumed run writes them again.
    """

    def __init__(self, *args: Any, going_on: GoingOn | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._earlier: list[dict[str, Any]] = []
        csv_path = Path(self.log_dir) / "metrics.csv"
        if csv_path.is_file() and going_on is not None:
            epochs, steps = len(going_on.history), going_on.global_step
            with open(csv_path, newline="") as file:
                rows = [{key: float(value) for key, value in row.items() if value} for row in csv.DictReader(file)]
            per_epoch = [row for row in rows if STEPS in row]
            self._earlier = [row for row in per_epoch if row["step"] <= epochs]
            self._earlier += [row for row in rows if row not in per_epoch and row["step"] < steps]
            for row in self._earlier:
                row["step"] = int(row["step"])
        # Lightning warns whenever the dir holds files: here it always does (descent's config.yaml), and what it
        # warns of, earlier rows deleted, is what this class prevents.
        warnings.filterwarnings("ignore", message=r".*Previous log files in this directory will be deleted")

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self._earlier:  # the first rows of a resumed run: put back what came before them
            self.experiment.metrics[:0] = self._earlier
            self._earlier = []
        super().log_metrics(metrics, step)
