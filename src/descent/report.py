"""Compare the runs of a sweep from their TensorBoard event files: a figure of the curves and a table of figures.

Every number comes from TensorBoard's own reader, so the report shows what TensorBoard shows. Each tag holds one
point per epoch k (its step), as `descent.model.Classifier` logs them.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, StrMethodFormatter
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

from descent.errors import require

EVENT_FILES = "events.out.tfevents.*"
TAGS = ("train/loss", "test/loss", "train/error", "test/error", "val/error", "progress/steps", "time/train_s")
"""The tags the report uses: a run dir whose events lack one (no epoch finished yet) is left out."""
X_AXES = (("epoch", None), ("optimizer steps", "progress/steps"), ("training seconds", "time/train_s"))
"""The figure's columns: the x label and the tag whose values are x (None: the epoch itself)."""

PLAIN = StrMethodFormatter("{x:g}")

Scalars = dict[str, dict[int, float]]
"""tag -> {epoch: value}."""


@dataclass
class Run:
    """One run: a label for the figure and the table, its dir, and its scalars."""

    name: str
    path: Path
    scalars: Scalars

    def values(self, tag: str) -> list[float]:
        """The tag's values in epoch order."""
        return [value for _, value in sorted(self.scalars[tag].items())]


def read_scalars(run_dir: Path) -> Scalars:
    """Every scalar tag of the event files in `run_dir` (not below it), keyed by epoch; all points are kept."""
    events = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0})
    events.Reload()
    return {tag: {event.step: event.value for event in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def short_names(names: list[str]) -> list[str]:
    """Run names less the `key=value` overrides that every run shares, where what is left still tells runs apart."""
    items = [name.split(",") for name in names]
    shared = set.intersection(*(set(parts) for parts in items)) if len(names) > 1 else set()
    short = [",".join(part for part in parts if part not in shared) for parts in items]
    return short if all(short) and len(set(short)) == len(short) else names


def read_runs(sweep_dir: Path) -> list[Run]:
    """Every run dir under `sweep_dir` (the dir itself included) whose event files hold per-epoch test figures."""
    require(sweep_dir.is_dir(), f"{sweep_dir}: no such directory; give a sweep dir or a run dir of src/train.py")
    run_dirs = sorted({path.parent for path in sweep_dir.rglob(EVENT_FILES)})
    found = []
    for path in run_dirs:
        scalars = read_scalars(path)
        missing = [tag for tag in TAGS if not scalars.get(tag)]
        if missing:
            print(f"{path}: left out, its events hold no {', '.join(missing)}", file=sys.stderr)
        else:
            found.append((path, scalars))
    require(
        found,
        f"{sweep_dir}: no runs with per-epoch TensorBoard events in it or below it; "
        "give the sweep dir or run dir that src/train.py wrote with logger=tensorboard",
    )
    names = [path.relative_to(sweep_dir).as_posix() if path != sweep_dir else path.name for path, _ in found]
    return [Run(name, path, scalars) for name, (path, scalars) in zip(short_names(names), found, strict=True)]


def first_epoch_of_min(series: dict[int, float]) -> int:
    """The first epoch at which the series is lowest (the best epoch, as training.summarise chooses it)."""
    return min(sorted(series), key=series.__getitem__)


def seconds_per_epoch(train_s: dict[int, float]) -> float | None:
    """Mean increment of `time/train_s` per epoch, from 0 s before epoch 1 (a resumed run: from its first point)."""
    points = sorted(train_s.items())
    if points[0][0] == 1:
        points.insert(0, (0, 0.0))
    (first_epoch, first_s), (last_epoch, last_s) = points[0], points[-1]
    return (last_s - first_s) / (last_epoch - first_epoch) if last_epoch > first_epoch else None


def seconds_to_reach(run: Run, target_error: float) -> float | None:
    """Training seconds at the first epoch whose test error is at most `target_error`; None if none is."""
    reached = [epoch for epoch, error in sorted(run.scalars["test/error"].items()) if error <= target_error]
    return run.scalars["time/train_s"][reached[0]] if reached else None


def best_test_error(run: Run) -> float:
    return min(run.scalars["test/error"].values())


def default_target_error(runs: list[Run]) -> float:
    """The largest of the runs' best test errors: the lowest target that every run reaches."""
    return max(best_test_error(run) for run in runs)


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def seconds(value: float | None, missing: str) -> str:
    return missing if value is None else f"{value:.3f}"


def format_table(runs: list[Run], target_error: float) -> str:
    """A markdown table, one row per run, sorted by best test error (then name)."""
    header = [
        "run",
        "final test error",
        "best test error",
        "best val error at epoch",
        "s / epoch",
        "optimizer steps",
        f"s to {percent(target_error)} test error",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for run in sorted(runs, key=lambda run: (best_test_error(run), run.name)):
        cells = [
            f"`{run.name}`",
            percent(run.values("test/error")[-1]),
            percent(best_test_error(run)),
            str(first_epoch_of_min(run.scalars["val/error"])),
            seconds(seconds_per_epoch(run.scalars["time/train_s"]), "n/a"),
            str(round(run.values("progress/steps")[-1])),
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
    for column, (x_label, x_tag) in enumerate(X_AXES):
        for row, kind in enumerate(("loss", "error")):
            ax = axes[row, column]
            for run, color in zip(runs, colors, strict=True):
                x = sorted(run.scalars["test/error"]) if x_tag is None else run.values(x_tag)
                scale = 100 if kind == "error" else 1
                for stage, style in (("train", "-"), ("test", "--")):
                    y = [scale * value for value in run.values(f"{stage}/{kind}")]
                    ax.plot(x, y, style, color=color, marker=".", markersize=4, linewidth=1.4)
            if x_tag == "progress/steps":
                ax.set_xscale("log")  # GD takes one step an epoch, SGD thousands: only a log axis shows both
                ax.xaxis.set_major_formatter(PLAIN)  # 1, 10, 100 rather than powers of ten
            if x_tag is None:
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
    runs = read_runs(sweep_dir)
    if target_error is None:
        target_error = default_target_error(runs)
    plot(runs, f"{sweep_dir}: {len(runs)} runs").savefig(sweep_dir / "report.png", dpi=100)
    markdown = "\n".join(
        [
            f"# {sweep_dir}",
            "",
            f"{len(runs)} runs. Errors are on the test set; the best epoch is the one with the lowest val error. "
            f"Target test error {percent(target_error)}.",
            "",
            format_table(runs, target_error),
            "",
            "![train and test curves](report.png)",
            "",
        ]
    )
    (sweep_dir / "report.md").write_text(markdown)
    return markdown
