"""A multirun's summary: summary.csv and summary.md in its root dir, one row per run and per configuration.

Rewritten as each job ends (a Hydra callback), so it is there even when a job fails or the sweep is stopped. Runs
are read by `descent.runs` (a job's `metrics.json`, or the `error.txt` a failed job leaves instead); the columns are
made from `descent.results`. Configurations are runs with the same overrides but the seed.
"""

import csv
import io
import logging
import math
import statistics
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from descent import results
from descent.files import replace_text
from descent.monitor import LOWER_IS_BETTER
from descent.runs import WITH_A_RESULT, Run, not_over_whole_sets, read_runs

log = logging.getLogger(__name__)


def shown(
    noise: bool = True, configured: list[str] | None = None, curvature: bool = False, own: list[str] | None = None
) -> list[tuple[str, str]]:
    """What each row shows besides the objective, as (epoch of metrics.json, key): the best epoch, its test
    figures, the last epoch's test, train and gap figures, training seconds and, with `noise`, the last epoch's
    gradient noise (results.NOISE) and, with `curvature`, the sharpness. Made from descent.results when called, so
    that a figure added to results.FIGURES is a column here too; the `configured` metrics' (single-number) figures
    follow descent's, and the last epoch's figures of a user's `own` measurements come last."""
    names = [*results.FIGURES, *(configured or [])]
    return [
        ("best", "epoch"),
        *(("best", f"test/{name}") for name in names),
        *(("final", f"{stage}/{name}") for stage in ("test", "train") for name in names),
        *(("final", f"gap/{name}") for name in (*LOWER_IS_BETTER, *(configured or []))),
        ("final", results.TRAIN_S),
        *(("final", key) for key in (results.NOISE if noise else ())),
        *(("final", key) for key in (results.CURVATURE if curvature else ())),
        *(("final", key) for key in own or ()),
    ]


def configured_metrics(runs: list[Run]) -> list[str]:
    """The configured metrics any finished run measured, in the order first met."""
    return list(dict.fromkeys(name for run in runs if run.final for name in results.user_metrics(run.final)))


def measured(runs: list[Run], key: str) -> bool:
    """Whether any run measured `key` (an opt-in measurement: noise.enabled, curvature.enabled): only then are its
    columns shown."""
    return any(run.final is not None and key in run.final for run in runs)


def figures(run: Run) -> dict[str, float]:
    """A finished (or pruned) run's objective and shown figures, keyed by column ("best test/error"); {} for any
    other run."""
    if run.status not in WITH_A_RESULT or run.final is None or run.best is None:
        return {}
    rows = {"final": run.final, "best": run.best}
    columns = shown(configured=results.user_metrics(run.final), curvature=True, own=results.own_measurements(run.final))
    return {"objective": run.objective} | {f"{row} {key}": rows[row].get(key, math.nan) for row, key in columns}


def configuration(run: Run, keys: list[str]) -> str:
    """The run's overrides of `keys` but the seed: runs that differ only in their seed share it."""
    return ",".join(f"{key}={run.overrides[key]}" for key in keys if key != "seed" and key in run.overrides)


def mean_and_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def varying_keys(runs: list[Run]) -> list[str]:
    """The override keys whose values differ between runs (what the sweep swept), in the order first given."""
    keys = dict.fromkeys(key for run in runs for key in run.overrides)
    return [key for key in keys if len({run.overrides.get(key) for run in runs}) > 1]


def configurations(
    runs: list[Run], keys: list[str], columns: list[str], higher_is_better: bool = False
) -> list[dict[str, Any]]:
    """Mean and standard deviation over the seeds of each configuration's finished runs, best objective first."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(configuration(run, keys), []).append(run)
    rows = []
    for name, members in groups.items():
        done = [figures(run) for run in members if run.status == "ok"]
        row: dict[str, Any] = {"configuration": name or "(all runs)", "runs": len(members)}
        row["finished"], row["failed"] = len(done), sum(run.status == "failed" for run in members)
        for column in columns:
            values = [shown_figures[column] for shown_figures in done]
            row[column], row[f"{column} std"] = mean_and_std(values) if values else (math.nan, math.nan)
        rows.append(row)
    sign = -1 if higher_is_better else 1
    return sorted(rows, key=lambda row: (math.isnan(row["objective"]), sign * row["objective"]))


def write_summary(sweep_dir: Path) -> None:
    runs = sorted(read_runs(sweep_dir), key=lambda run: (run.rank, run.name))
    if not runs:
        return
    monitor = next((run.monitor for run in runs if run.monitor), "monitor")
    higher = any(run.mode == "max" for run in runs if run.monitor)
    keys = varying_keys(runs)
    own = sorted({key for run in runs if run.final for key in results.own_measurements(run.final)})
    chosen = shown(
        measured(runs, results.NOISE[0]), configured_metrics(runs), measured(runs, results.CURVATURE[0]), own
    )
    columns = ["objective", *(f"{row} {key}" for row, key in chosen)]
    configs = configurations(runs, keys, columns, higher)
    objective = f"best {monitor}"
    rows = [{"row": "configuration", **row, "status": f"{row['finished']}/{row['runs']} finished"} for row in configs]
    rows += [
        {"row": "run", "configuration": configuration(run, keys), "run": run.name, "status": run.status, "runs": 1}
        | run.overrides
        | figures(run)
        | {"error": run.error, "partial": "; ".join(run.partial)}
        for run in runs
    ]
    header = ["row", "configuration", "run", "status", "runs", *sorted({k for run in runs for k in run.overrides})]
    header += [c for column in columns for c in (column, f"{column} std")] + ["error"]
    header += ["partial"] if any(run.partial for run in runs) else []  # figures not over whole sets, where some are
    table = io.StringIO()
    writer = csv.DictWriter(table, [c.replace("objective", objective) for c in header], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key.replace("objective", objective): value for key, value in row.items()})
    replace_text(sweep_dir / "summary.csv", table.getvalue())
    replace_text(sweep_dir / "summary.md", markdown(sweep_dir, runs, configs, columns, monitor, higher))


def cell(figure: str, value: float) -> str:
    """A figure as the markdown shows it: rates in percent, epochs whole, seconds to 0.1, gradient noise to 4
    significant digits (B_simple may be 10^4, tr(Sigma) 10^-4), the rest to 4 places."""
    if math.isnan(value):
        return "n/a"
    if "noise/" in figure or "curvature/" in figure:
        return f"{value:.4g}"
    if figure.endswith(("error", "acc")):
        return f"{100 * value:.2f}%"
    return f"{value:.0f}" if figure.endswith("epoch") else f"{value:.1f}" if "time/" in figure else f"{value:.4f}"


def markdown(
    sweep_dir: Path,
    runs: list[Run],
    configs: list[dict[str, Any]],
    columns: list[str],
    monitor: str,
    higher_is_better: bool = False,
) -> str:
    objective = f"best {monitor}"
    better, est = ("higher", "highest") if higher_is_better else ("lower", "lowest")
    titled = [(column, column.replace("objective", objective)) for column in columns]
    # The title decides the format: the objective's is that of its figure.
    failed = sum(run.status == "failed" for run in runs)
    interrupted = sum(run.status == "interrupted" for run in runs)
    stopped = f", {interrupted} interrupted (the sweep was stopped)" if interrupted else ""
    pruned = sum(run.status == "pruned" for run in runs)
    stopped += f", {pruned} pruned (stopped early by the search's pruner)" if pruned else ""
    lines = [
        f"# Sweep {sweep_dir.name}",
        "",
        f"{len(runs)} runs, {failed} failed{stopped}. Sorted by the objective, {objective} ({better} is better). "
        f"Errors are rates; `final` is the last epoch, `best` the epoch with the {est} {monitor} "
        "(that of each run's metrics.json and best.ckpt).",
        "",
        "## Configurations (mean ± standard deviation over seeds)",
        "",
        "| configuration | finished | " + " | ".join(title for _, title in titled) + " |",
        "| --- | --- |" + " --- |" * len(titled),
    ]
    for row in configs:
        cells = [f"{cell(t, row[c])} ± {cell(t, row[c + ' std'])}" for c, t in titled]
        lines.append(f"| `{row['configuration']}` | {row['finished']}/{row['runs']} | " + " | ".join(cells) + " |")
    lines += ["", "## Runs", "", "| run | status | " + " | ".join(t for _, t in titled) + " |"]
    lines.append("| --- | --- |" + " --- |" * len(titled))
    for run in runs:
        shown_figures = figures(run)
        cells = [cell(t, shown_figures[c]) if shown_figures else "" for c, t in titled]
        status = f"{run.status}: {run.error}" if run.status in ("failed", "interrupted") else run.error or run.status
        lines.append(f"| `{run.name}` | {status} | " + " | ".join(cells) + " |")
    partial = not_over_whole_sets(runs)
    return "\n".join(lines + ["", *partial] if partial else lines) + "\n"


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

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        log.info("sweep dir %s: a run dir per job, summary.md and summary.csv as each job ends", config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_summary(Path(config.hydra.sweep.dir))
        log.info("sweep dir %s: summary.md, summary.csv", config.hydra.sweep.dir)


def summarise_stopped_sweep() -> None:
    """A stop signal ends the sweep from inside a job, before Hydra's end-of-job callback: say what it finished
    (the stopped job marked interrupted, from its metrics.json) before the sweep exits."""
    from hydra.core.hydra_config import HydraConfig

    write_summary(Path(HydraConfig.get().sweep.dir))
