"""Every figure's name, defined once, and what is made of a run's figures without torch: the best epoch, what
metrics.json holds, the console's epoch line and table.

Imports neither torch nor Lightning: the code that reads finished runs (descent.runs, the sweep summary, the report)
imports this module, not the training stack, and so starts in a fraction of a second. descent.metrics computes the
figures named here from a set's chunks; the measurements (descent.noise, descent.curvature, descent.critical) log
theirs under the names given here.
"""

from collections.abc import Callable, Mapping
from typing import Any

from descent.monitor import EVAL_SETS, LOWER_IS_BETTER

FIGURES: dict[str, Callable[[dict[str, float]], float]] = {
    "loss": lambda sums: sums["loss"] / sums["count"],
    "error": lambda sums: sums["errors"] / sums["count"],
    "acc": lambda sums: 1 - sums["errors"] / sums["count"],
}
"""A set's figures from its sums (named by descent.metrics.SUMS): logged as `{set}/{name}` after every epoch."""

STEP_LOSS = "train/step_loss"
"""The training loss of one optimizer step's samples (on the step axis, every `trainer.log_every_n_steps`)."""

STEPS, SAMPLES, PASSES, LR, TRAIN_S = (
    "progress/steps",
    "progress/samples",
    "progress/passes",
    "progress/lr",
    "time/train_s",
)
PROGRESS = (STEPS, SAMPLES, PASSES, LR, TRAIN_S)
"""Per-epoch bookkeeping, so far: optimizer steps, samples stepped through, gradient evaluations in training sets'
worth (an epoch of SGD or GD is 1; L-BFGS's line search evaluates more), the epoch's learning rate, training
seconds."""

GRAD_NORM, TRACE_COV, B_SIMPLE = "noise/grad_norm", "noise/trace_cov", "noise/B_simple"
NOISE = (GRAD_NORM, TRACE_COV, B_SIMPLE)
"""The gradient noise at theta^k (descent.noise; only with noise.enabled=true): |G|, the norm of the exact full
gradient (not its square); tr(Sigma), the trace of the per-sample gradients' covariance over the training set; and
B_simple = tr(Sigma) / |G|^2, the batch size at which a minibatch gradient's noise matches its signal."""

SHARPNESS, TWO_OVER_LR = "curvature/sharpness", "curvature/2_over_lr"
CURVATURE = (SHARPNESS, TWO_OVER_LR)
"""The top Hessian eigenvalue at theta^k and the stability bound 2 / lr it is compared with (descent.curvature;
only with curvature.enabled=true)."""

FLOW = ("grad_norm", "weight_norm", "ratio")
"""Each layer's figures (descent.curvature.GradientFlow; only with gradient_flow.enabled=true): `flow(name, depth)`."""

TARGET_ERROR, TARGET_STEPS, TARGET_EPOCHS, TARGET_SECONDS = (
    "target/error",
    "target/steps",
    "target/epochs",
    "target/seconds",
)
TARGET = (TARGET_ERROR, TARGET_STEPS, TARGET_EPOCHS, TARGET_SECONDS)
"""When a run first reached its target validation error (descent.critical.StepsToTarget): the target, optimizer
steps, epochs (steps over an epoch's steps) and training seconds; in the run's last epoch only."""

TABLE = tuple(f"{stage}/{name}" for stage in (*EVAL_SETS, "gap") for name in LOWER_IS_BETTER)
"""The columns of the console table."""


def flow(name: str, depth: int | str) -> str:
    """The name of layer `depth`'s (1 at the input) figure `name` of FLOW; a `depth` of "" gives the prefix that
    every layer's shares, and ".*" a pattern that matches them all."""
    return f"flow/{name}/{depth}"


def flow_depths(row: Mapping[str, float]) -> list[int]:
    """The depths of the layers whose gradient norm `row` holds, in order; [] for a run without GradientFlow."""
    prefix = flow("grad_norm", "")
    return sorted(int(key.removeprefix(prefix)) for key in row if key.startswith(prefix))


def user_metrics(row: Mapping[str, float]) -> list[str]:
    """The names of a row's single-number figures that are not descent's own: the configured metrics."""
    return [
        key.split("/", 1)[1]
        for key in row
        if key.startswith("val/") and key.count("/") == 1 and key.split("/", 1)[1] not in FIGURES
    ]


DESCENTS_GROUPS = ("train", "val", "test", "gap", "progress", "time", "noise", "curvature", "flow", "target")
"""The groups of the figures descent makes itself (`{group}/{name}`); the sweep summary shows its own choice."""


def own_measurements(row: Mapping[str, float]) -> list[str]:
    """A row's figures of a user's own measurement (descent.measurement.EpochMeasurement): any `{group}/{name}`
    figure outside descent's groups, such as `relu/dead_fraction`."""
    return [key for key in row if "/" in key and key.split("/", 1)[0] not in DESCENTS_GROUPS]


def final_and_best(
    history: list[dict[str, float]], monitor: str, mode: str = "min"
) -> tuple[dict[str, float], dict[str, float]]:
    """The last epoch's figures, and those of the first epoch with the lowest `monitor` (the highest with mode
    "max"): "best" everywhere."""
    sign = -1 if mode == "max" else 1
    return history[-1], min(history, key=lambda row: sign * row[monitor])


def summary(
    history: list[dict[str, float]],
    monitor: str,
    run_dir: str,
    best_checkpoint: str,
    mode: str = "min",
    partial: list[str] | None = None,
) -> dict[str, Any]:
    """What metrics.json holds: final and best-epoch figures with the whole history, and `partial`, the lines that
    say which figures are not over whole sets (only where some are not)."""
    final, best = final_and_best(history, monitor, mode)
    return {
        "run_dir": run_dir,
        "monitor": monitor,
        "mode": mode,
        "final": final,
        "best": best,
        "best_checkpoint": best_checkpoint,
        "history": history,
    } | ({"partial": partial} if partial else {})


def epoch_line(row: dict[str, float]) -> str:
    """One epoch's log line: what a run without a progress bar prints after each epoch (the configured metrics'
    validation figures among them); its steps and training seconds are the run's so far, not the epoch's."""
    configured = "".join(f"{name} {row[f'val/{name}']:.4f} " for name in user_metrics(row))
    return (
        f"epoch {int(row['epoch'])}  train loss {row['train/loss']:.4f} err {100 * row['train/error']:.2f}%  "
        f"val err {100 * row['val/error']:.2f}% {configured} test loss {row['test/loss']:.4f} "
        f"err {100 * row['test/error']:.2f}%  ({int(row[STEPS])} steps, {row[TRAIN_S]:.1f} s so far, "
        f"lr {row[LR]:.4g})"
    )


def unevaluated_line(epoch: int, max_epochs: int, every: int, steps: int, seconds: float, lr: float) -> str:
    """The line of an epoch without an evaluation (trainer.check_val_every_n_epoch > 1): how far the run is."""
    return (
        f"epoch {epoch} of {max_epochs} trained, not evaluated (trainer.check_val_every_n_epoch={every}): "
        f"{steps} steps, {seconds:.1f} s so far, lr {lr:.4g}"
    )


def measured_line(epoch: int, figures: Mapping[str, float]) -> str:
    """A measurement's figures that asked for the console (descent.measurement.EpochMeasurement.console)."""
    return f"epoch {epoch} measured: " + "  ".join(f"{name} {value:.4g}" for name, value in figures.items())


def format_table(result: dict[str, Any]) -> str:
    """The final and best epoch's TABLE figures and the configured metrics' val and test ones, a row each; under
    them, what figures are not over whole sets (the run said it before training, many lines above)."""
    columns = [*TABLE, *(f"{stage}/{name}" for name in user_metrics(result["final"]) for stage in ("val", "test"))]
    widths = [max(12, len(key) + 2) for key in columns]
    titles = "".join(f"{key.replace('/', ' '):>{width}}" for key, width in zip(columns, widths, strict=True))
    header = f"{'':16}{titles}"
    lines = [header]
    for label in ("final", "best"):
        row = result[label]
        cells = "".join(
            f"{100 * row[key]:>{width - 1}.2f}%" if key.endswith("error") else f"{row[key]:>{width}.4f}"
            for key, width in zip(columns, widths, strict=True)
        )
        lines.append(f"{label + ' (epoch ' + str(int(row['epoch'])) + ')':16}{cells}")
    return "\n".join(lines + [f"not over whole sets: {line}" for line in result.get("partial", [])])
