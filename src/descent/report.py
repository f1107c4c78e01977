"""Compare the runs of a sweep from their metrics.json: a figure of the curves and a table of figures.

Runs are read by `descent.runs`, as the sweep summary reads them, so "best" is the same epoch here as there and in
each run's metrics.json: the one with the best `monitor` (default val/error, lowest), not the lowest test error.
"""

import sys
from dataclasses import replace
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, StrMethodFormatter

from descent.critical_batch import critical_batch_section
from descent.errors import require
from descent.results import SHARPNESS, STEPS, TRAIN_S, TWO_OVER_LR, flow, flow_depths
from descent.runs import Run, not_over_whole_sets, read_runs
from descent.study import search_section

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


def curvature_figure(runs: list[Run], title: str) -> Figure:
    """Cohen et al.'s Figure 1: the training loss (top) and the sharpness (bottom) against the GD step, each run in
    its colour, its 2 / lr as a dashed line of that colour."""
    figure = Figure(figsize=(7, 6), layout="constrained")
    loss_ax, sharp_ax = figure.subplots(2, 1, sharex=True)
    for index, run in enumerate(sorted(runs, key=lambda run: run.history[0][TWO_OVER_LR])):
        color = f"C{index}"
        steps = run.series(STEPS)
        lr = 2 / run.history[0][TWO_OVER_LR]
        loss_ax.plot(steps, run.series("train/loss"), color=color, label=f"lr {lr:g}")
        sharp_ax.plot(steps, run.series(SHARPNESS), color=color, marker=".", label=f"lr {lr:g}")
        sharp_ax.axhline(run.history[0][TWO_OVER_LR], color=color, linestyle="--", linewidth=1)
    loss_ax.set(ylabel="training loss", title=title)
    sharp_ax.set(xlabel="gradient descent step", ylabel="sharpness (top Hessian eigenvalue)")
    for ax in (loss_ax, sharp_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=9)
    return figure


def curvature_section(runs: list[Run], sweep_dir: Path) -> str:
    """The sharpness figure and a table: where each run's sharpness went against its 2 / lr."""
    measured = [run for run in runs if SHARPNESS in run.history[-1]]
    if not measured:
        return ""
    figure = curvature_figure(measured, f"{sweep_dir.name}: sharpness against 2 / lr")
    figure.savefig(sweep_dir / "curvature.png", dpi=100)
    lines = [
        "## Sharpness against 2 / lr",
        "",
        "| run | lr | 2 / lr | sharpness at first | highest | last | first step at 2 / lr or more | "
        "mean / (2 / lr) after it | training loss at first and last |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in sorted(measured, key=lambda run: run.history[0][TWO_OVER_LR]):
        bound, sharpness, loss = run.history[0][TWO_OVER_LR], run.series(SHARPNESS), run.series("train/loss")
        reached = next((i for i, value in enumerate(sharpness) if value >= bound), None)
        first = "not reached" if reached is None else str(int(run.history[reached][STEPS]))
        after = "n/a" if reached is None else f"{sum(sharpness[reached:]) / len(sharpness[reached:]) / bound:.3f}"
        lines.append(
            f"| `{run.name}` | {2 / bound:g} | {bound:.1f} | {sharpness[0]:.2f} | {max(sharpness):.2f} | "
            f"{sharpness[-1]:.2f} | {first} | {after} | {loss[0]:.4f}, {loss[-1]:.4f} |"
        )
    return "\n".join([*lines, "", "![sharpness against 2 / lr](curvature.png)", ""])


def flow_section(runs: list[Run], sweep_dir: Path) -> str:
    """Each run's gradient norm against depth at its first and last evaluated epoch, and a table of them."""
    measured = [run for run in runs if flow("grad_norm", 1) in run.history[-1]]
    if not measured:
        return ""
    depths = flow_depths(measured[0].history[-1])
    figure = Figure(figsize=(7, 4), layout="constrained")
    ax = figure.subplots()
    for index, run in enumerate(measured):
        for row, style in ((run.history[0], "--"), (run.history[-1], "-")):
            norms = [row.get(flow("grad_norm", depth), float("nan")) for depth in depths]
            label = f"{run.name}, epoch {int(row['epoch'])}"
            ax.plot(depths, norms, style, color=f"C{index}", marker="o", label=label)
    ax.set(xlabel="layer (1 = input)", ylabel="gradient norm |dL/dW|", yscale="log", xticks=depths,
           title=f"{sweep_dir.name}: the gradient through the chain of Jacobians")  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    figure.savefig(sweep_dir / "gradient_flow.png", dpi=100)
    header = "| run | epoch | " + " | ".join(f"layer {d}" for d in depths) + " | input / output layer |"
    lines = ["## Gradient norm by layer", "", header, "| --- | --- |" + " --- |" * (len(depths) + 1)]
    for run in measured:
        for row in (run.history[0], run.history[-1]):
            norms = [row.get(flow("grad_norm", depth), float("nan")) for depth in depths]
            cells = " | ".join(f"{norm:.3g}" for norm in norms)
            lines.append(f"| `{run.name}` | {int(row['epoch'])} | {cells} | {norms[0] / norms[-1]:.3g} |")
    return "\n".join([*lines, "", "![gradient norm against depth](gradient_flow.png)", ""])


def write_report(sweep_dir: Path, target_error: float | None = None) -> str:
    """Read the runs under `sweep_dir`, write report.png and report.md there; return the markdown."""
    require(
        target_error is None or 0 <= target_error <= 1,
        f"--target-error={target_error} is not an error rate: give a fraction in [0, 1], e.g. 0.02 for 2%",
    )
    runs = finished_runs(sweep_dir)
    if target_error is None:
        target_error = default_target_error(runs)
    plot(runs, f"{sweep_dir.name}: {len(runs)} runs").savefig(sweep_dir / "report.png", dpi=100)
    partial = not_over_whole_sets(runs)
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
            *(partial + [""] if partial else []),
            "![train and test curves](report.png)",
            "",
            search_section(sweep_dir),
            critical_batch_section(runs, sweep_dir),
            curvature_section(runs, sweep_dir),
            flow_section(runs, sweep_dir),
        ]
    )
    (sweep_dir / "report.md").write_text(markdown)
    return markdown
