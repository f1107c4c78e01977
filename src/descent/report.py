"""Compare the runs of a sweep from their metrics.json: a figure of the curves and a table of figures.

Runs are read by `descent.runs`, as the sweep summary reads them, so "best" is the same epoch here as there and in
each run's metrics.json: the one with the best `monitor` (default val/error, lowest), not the lowest test error.
"""

import sys
from dataclasses import replace
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, StrMethodFormatter

from descent.critical import critical_batch_section
from descent.errors import require
from descent.runs import Run, read_runs

STEPS, TRAIN_S = "progress/steps", "time/train_s"
"""The PROGRESS figures the figure's x-axes and the table's time columns use."""
X_AXES = (("epoch", "epoch"), ("optimizer steps", STEPS), ("training seconds", TRAIN_S))
"""The figure's columns: the x label and the history key whose values are x."""

PLAIN = StrMethodFormatter("{x:g}")


def short_names(names: list[str]) -> list[str]:
    """Run names less the `key=value` overrides that every run shares, where what is left still tells runs apart."""
    items = [name.split("+") for name in names]  # job dirs: key:value items joined by + (descent.multirun)
    shared = set.intersection(*(set(parts) for parts in items)) if len(names) > 1 else set()
    short = [",".join(part for part in parts if part not in shared) for parts in items]
    return short if all(short) and len(set(short)) == len(short) else names


def finished_runs(sweep_dir: Path) -> list[Run]:
    """Every finished run in `sweep_dir` or below it, named by what tells them apart; the others are noted on stderr."""
    require(sweep_dir.is_dir(), f"{sweep_dir}: no such directory; give a sweep dir or a run dir of src/train.py")
    runs = []
    for run in read_runs(sweep_dir):
        if run.status == "ok" and run.history:
            runs.append(run)
        else:
            print(f"{run.path}: left out, {run.status}{': ' + run.error if run.error else ''}", file=sys.stderr)
    require(
        runs,
        f"{sweep_dir}: no finished runs in it or below it (no metrics.json); "
        "give the sweep dir or run dir that src/train.py wrote",
    )
    return [replace(run, name=name) for run, name in zip(runs, short_names([run.name for run in runs]), strict=True)]


def seconds_per_epoch(run: Run) -> float | None:
    """Mean increment of `time/train_s` per epoch, from 0 s before epoch 1 (a history from a later epoch: its first)."""
    points = [(row["epoch"], row[TRAIN_S]) for row in run.history]
    if points[0][0] == 1:
        points.insert(0, (0, 0.0))
    (first_epoch, first_s), (last_epoch, last_s) = points[0], points[-1]
    return (last_s - first_s) / (last_epoch - first_epoch) if last_epoch > first_epoch else None


def seconds_to_reach(run: Run, target_error: float) -> float | None:
    """Training seconds at the first epoch whose test error is at most `target_error`; None if none is."""
    return next((row[TRAIN_S] for row in run.history if row["test/error"] <= target_error), None)


def default_target_error(runs: list[Run]) -> float:
    """The largest of the runs' lowest test errors: the lowest target that every run reaches."""
    return max(min(run.series("test/error")) for run in runs)


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def format_figure(key: str, value: float) -> str:
    """An error rate in percent, a loss to 4 places."""
    return percent(value) if key.endswith("error") else f"{value:.4f}"


def seconds(value: float | None, missing: str) -> str:
    return missing if value is None else f"{value:.3f}"


def best_word(runs: list[Run]) -> str:
    """ "lowest", or "highest" where every run's monitor is better higher."""
    return "highest" if runs and all(run.mode == "max" for run in runs) else "lowest"


def monitor_of(runs: list[Run]) -> str:
    """The runs' `monitor`, or "monitor" if they differ (the cells then name each run's)."""
    monitors = {run.monitor or "monitor" for run in runs}
    return next(iter(monitors)) if len(monitors) == 1 else "monitor"


def format_table(runs: list[Run], target_error: float) -> str:
    """A markdown table, one row per run, best first: by `monitor` at the best epoch (then name)."""
    monitor = monitor_of(runs)
    header = [
        "run",
        f"best {monitor}",
        "best epoch",
        "test error at best",
        "final test error",
        "s / epoch",
        "optimizer steps",
        f"s to {percent(target_error)} test error",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for run in sorted(runs, key=lambda run: (str(run.monitor), run.rank, run.name)):
        assert run.best is not None and run.final is not None and run.monitor is not None  # finished_runs
        objective = format_figure(run.monitor, run.objective)
        cells = [
            f"`{run.name}`",
            objective if monitor == run.monitor else f"{run.monitor} {objective}",
            str(int(run.best["epoch"])),
            percent(run.best["test/error"]),
            percent(run.final["test/error"]),
            seconds(seconds_per_epoch(run), "n/a"),
            str(round(run.final[STEPS])),
            seconds(seconds_to_reach(run, target_error), "not reached"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[Run], title: str) -> Figure:
    """Loss (top) and error (bottom), train solid and test dashed, against epochs, optimizer steps and seconds."""
    figure = Figure(figsize=(16, 9.5), layout="constrained")
    figure.suptitle(title, fontsize=11)
    axes = figure.subplots(2, len(X_AXES), sharey="row")
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for column, (x_label, x_key) in enumerate(X_AXES):
        for row, kind in enumerate(("loss", "error")):
            ax = axes[row, column]
            for run, color in zip(runs, colors, strict=True):
                x = run.series(x_key)
                scale = 100 if kind == "error" else 1
                for stage, style in (("train", "-"), ("test", "--")):
                    y = [scale * value for value in run.series(f"{stage}/{kind}")]
                    ax.plot(x, y, style, color=color, marker=".", markersize=4, linewidth=1.4)
            if x_key == STEPS:
                ax.set_xscale("log")  # GD takes one step an epoch, SGD thousands: only a log axis shows both
                ax.xaxis.set_major_formatter(PLAIN)  # 1, 10, 100 rather than powers of ten
            if x_key == "epoch":
                ax.xaxis.get_major_locator().set_params(integer=True)
            if kind == "loss":
                ax.set_yscale("log")
                ax.yaxis.set_minor_locator(LogLocator(subs=(2, 5)))
                ax.yaxis.set_major_formatter(PLAIN)
                ax.yaxis.set_minor_formatter(PLAIN)
            ax.set_title(f"{kind} against {x_label}", fontsize=10)
            ax.set_xlabel(x_label)
            if column == 0:
                ax.set_ylabel("cross-entropy loss" if kind == "loss" else "error rate (%)")
            ax.grid(True, which="both", alpha=0.3)
    handles = [axes[0, 0].plot([], [], "-", color=color, linewidth=3)[0] for color in colors]
    handles += [axes[0, 0].plot([], [], style, color="black")[0] for style in ("-", "--")]
    labels = [run.name for run in runs] + ["train", "test"]
    figure.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=9)
    return figure


def write_report(sweep_dir: Path, target_error: float | None = None) -> str:
    """Read the runs under `sweep_dir`, write report.png and report.md there; return the markdown."""
    require(
        target_error is None or 0 <= target_error <= 1,
        f"--target-error={target_error} is not an error rate: give a fraction in [0, 1], e.g. 0.02 for 2%",
    )
    runs = finished_runs(sweep_dir)
    if target_error is None:
        target_error = default_target_error(runs)
    plot(runs, f"{sweep_dir}: {len(runs)} runs").savefig(sweep_dir / "report.png", dpi=100)
    markdown = "\n".join(
        [
            f"# {sweep_dir}",
            "",
            f"{len(runs)} runs, best first. The best epoch is the one with the {best_word(runs)} "
            f"{monitor_of(runs)} (that of metrics.json, summary.md and best.ckpt), and its test error is shown, not "
            "the lowest test error of the "
            f"run. Errors are rates. Target test error {percent(target_error)}.",
            "",
            format_table(runs, target_error),
            "",
            "![train and test curves](report.png)",
            "",
            critical_batch_section(runs, sweep_dir),
        ]
    )
    (sweep_dir / "report.md").write_text(markdown)
    return markdown
