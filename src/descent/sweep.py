"""A multirun's summary: summary.csv and summary.md in its root dir, one row per run and per configuration.

Rewritten as each job ends (a Hydra callback), so it is there even when a job fails or the sweep is stopped. A run
is a job dir holding `.hydra/overrides.yaml`; its figures are the `metrics.json` that `train` wrote, or the
`error.txt` that a failed job leaves instead. Configurations are runs with the same overrides but the seed.
"""

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from descent.files import replace_text

FIGURES = (
    ("final", "test/error"),
    ("final", "test/loss"),
    ("final", "train/error"),
    ("final", "train/loss"),
    ("final", "gap/error"),
    ("best", "epoch"),
    ("best", "test/error"),
    ("final", "time/train_s"),
)
"""What each row shows besides the objective (the best epoch's `monitor` figure), as (row of metrics.json, key)."""


@dataclass
class Run:
    name: str
    overrides: dict[str, str]
    status: str  # ok, failed or running
    monitor: str | None = None
    figures: dict[str, float] | None = None
    error: str = ""

    def configuration(self, keys: list[str]) -> str:
        """The run's overrides of `keys` but the seed: runs that differ only in their seed share it."""
        return ",".join(f"{key}={self.overrides[key]}" for key in keys if key != "seed" and key in self.overrides)

    @property
    def objective(self) -> float:
        return self.figures["objective"] if self.figures else math.inf


def read_run(job_dir: Path, sweep_dir: Path) -> Run:
    overrides = dict(
        item.split("=", 1) for item in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml") if "=" in item
    )
    name = job_dir.relative_to(sweep_dir).as_posix()
    if (job_dir / "metrics.json").is_file():
        metrics = json.loads((job_dir / "metrics.json").read_text())
        if "stopped" in metrics:  # diverged or interrupted: what it has is not a result
            return Run(name, overrides, "failed", error=metrics["stopped"]["message"])
        monitor = metrics["monitor"]
        figures = {f"{row} {key}": metrics[row][key] for row, key in FIGURES}
        figures["objective"] = metrics["best"][monitor]
        return Run(name, overrides, "ok", monitor, figures)
    if (job_dir / "error.txt").is_file():
        return Run(name, overrides, "failed", error=(job_dir / "error.txt").read_text().strip())
    return Run(name, overrides, "running")


def read_runs(sweep_dir: Path) -> list[Run]:
    job_dirs = sorted(path.parent.parent for path in sweep_dir.rglob(".hydra/overrides.yaml"))
    return [read_run(job_dir, sweep_dir) for job_dir in job_dirs if job_dir != sweep_dir]


def mean_and_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def varying_keys(runs: list[Run]) -> list[str]:
    """The override keys whose values differ between runs (what the sweep swept), in the order first given."""
    keys = dict.fromkeys(key for run in runs for key in run.overrides)
    return [key for key in keys if len({run.overrides.get(key) for run in runs}) > 1]


def configurations(runs: list[Run], keys: list[str]) -> list[dict[str, Any]]:
    """Mean and standard deviation over the seeds of each configuration's finished runs, best objective first."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.configuration(keys), []).append(run)
    rows = []
    for configuration, members in groups.items():
        done = [run for run in members if run.figures]
        row: dict[str, Any] = {"configuration": configuration or "(all runs)", "runs": len(members)}
        row["finished"], row["failed"] = len(done), sum(run.status == "failed" for run in members)
        for figure in ("objective", *(f"{r} {k}" for r, k in FIGURES)):
            values = [run.figures[figure] for run in done]  # type: ignore[index]
            row[figure], row[f"{figure} std"] = mean_and_std(values) if values else (math.nan, math.nan)
        rows.append(row)
    return sorted(rows, key=lambda row: (math.isnan(row["objective"]), row["objective"]))


def write_summary(sweep_dir: Path) -> None:
    runs = sorted(read_runs(sweep_dir), key=lambda run: (run.objective, run.name))
    if not runs:
        return
    monitor = next((run.monitor for run in runs if run.monitor), "monitor")
    objective = f"best {monitor}"
    keys = varying_keys(runs)
    configs = configurations(runs, keys)
    figures = ["objective", *(f"{r} {k}" for r, k in FIGURES)]
    rows = [{"row": "configuration", **row, "status": f"{row['finished']}/{row['runs']} finished"} for row in configs]
    rows += [
        {"row": "run", "configuration": run.configuration(keys), "run": run.name, "status": run.status, "runs": 1}
        | run.overrides
        | (run.figures or {})
        | {"error": run.error}
        for run in runs
    ]
    columns = ["row", "configuration", "run", "status", "runs", *sorted({k for run in runs for k in run.overrides})]
    columns += [c for f in figures for c in (f, f"{f} std")] + ["error"]
    table = io.StringIO()
    writer = csv.DictWriter(table, [c.replace("objective", objective) for c in columns], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key.replace("objective", objective): value for key, value in row.items()})
    replace_text(sweep_dir / "summary.csv", table.getvalue())
    replace_text(sweep_dir / "summary.md", markdown(sweep_dir, runs, configs, objective))


def cell(figure: str, value: float) -> str:
    """A figure as the markdown shows it: error rates in percent, losses to 4 places, epochs whole, seconds."""
    if math.isnan(value):
        return "n/a"
    if figure.endswith("error"):
        return f"{100 * value:.2f}%"
    return f"{value:.0f}" if figure.endswith("epoch") else f"{value:.4f}" if "loss" in figure else f"{value:.1f}"


def markdown(sweep_dir: Path, runs: list[Run], configs: list[dict[str, Any]], objective: str) -> str:
    shown = [("objective", objective), *((f"{r} {k}", f"{r} {k}") for r, k in FIGURES)]
    # The name decides the format: the objective's is that of its figure.
    failed = sum(run.status == "failed" for run in runs)
    lines = [
        f"# Sweep {sweep_dir.name}",
        "",
        f"{len(runs)} runs, {failed} failed. Sorted by the objective, {objective} (lower is better). "
        "Errors are rates; `final` is the last epoch, `best` the epoch with the lowest objective.",
        "",
        "## Configurations (mean ± standard deviation over seeds)",
        "",
        "| configuration | finished | " + " | ".join(title for _, title in shown) + " |",
        "| --- | --- |" + " --- |" * len(shown),
    ]
    for row in configs:
        cells = [f"{cell(t, row[f])} ± {cell(t, row[f + ' std'])}" for f, t in shown]
        lines.append(f"| `{row['configuration']}` | {row['finished']}/{row['runs']} | " + " | ".join(cells) + " |")
    lines += ["", "## Runs", "", "| run | status | " + " | ".join(t for _, t in shown) + " |"]
    lines.append("| --- | --- |" + " --- |" * len(shown))
    for run in runs:
        cells = [cell(t, run.figures[f]) if run.figures else "" for f, t in shown]
        status = f"failed: {run.error}" if run.status == "failed" else run.status
        lines.append(f"| `{run.name}` | {status} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


class Summary(Callback):
    """Hydra callback (conf/train.yaml, hydra.callbacks): notes a failed job, then rewrites the sweep's summary."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hydra = job_return.hydra_cfg.hydra if job_return.hydra_cfg else None
        if hydra is None or hydra.mode != RunMode.MULTIRUN:
            return
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value
            message = " ".join(f"{type(error).__name__}: {error}".split())
            replace_text(Path(hydra.runtime.output_dir) / "error.txt", message + "\n")
        write_summary(Path(hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_summary(Path(config.hydra.sweep.dir))
