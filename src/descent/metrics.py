"""Metric names, defined once, and what is made of them: per-epoch figures from sums, final and best, tables.

Every figure of epoch k is that of the parameters theta^k at the end of the epoch, over a whole set, in eval mode,
computed exactly from sums over the set's chunks (and ranks). To add a metric, add what a chunk contributes to SUMS
and how the set's figure follows from the sums to FIGURES: the module logs it as `{set}/{name}` for every set, and
metrics.json, TensorBoard's scalars and the sweep summary's columns take it from there. Add its name to
LOWER_IS_BETTER too if lower is better: then `monitor` may name it, `gap/{name}` is logged and the console table
shows it.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from descent.data import EVAL_SETS

SUMS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor | int]] = {
    "loss": lambda loss_sum, logits, y: loss_sum,  # the module's loss, summed over the chunk
    "errors": lambda loss_sum, logits, y: (logits.argmax(1) != y).sum(),
    "count": lambda loss_sum, logits, y: len(y),
}
"""What one chunk adds to its set's sums, from its summed loss, its logits and its labels."""

FIGURES: dict[str, Callable[[dict[str, float]], float]] = {
    "loss": lambda sums: sums["loss"] / sums["count"],
    "error": lambda sums: sums["errors"] / sums["count"],
    "acc": lambda sums: 1 - sums["errors"] / sums["count"],
}
"""A set's figures from its sums: logged as `{set}/{name}` after every epoch."""

LOWER_IS_BETTER = ("loss", "error")
"""The figures `monitor` may name (the best epoch is where it is lowest), and whose test-minus-train `gap/` is
logged: the sign of overfitting."""

MONITORS = tuple(f"{stage}/{name}" for stage in EVAL_SETS for name in LOWER_IS_BETTER)
"""What `monitor` may be."""

STEP_LOSS = "train/step_loss"
"""The training loss of one optimizer step's samples (on the step axis, every `trainer.log_every_n_steps`)."""

PROGRESS = ("progress/steps", "progress/samples", "progress/passes", "progress/lr", "time/train_s")
"""Per-epoch bookkeeping, so far: optimizer steps, samples stepped through, gradient evaluations in training sets'
worth (an epoch of SGD or GD is 1; L-BFGS's line search evaluates more), the epoch's learning rate, training
seconds."""

NOISE = ("noise/grad_norm", "noise/trace_cov", "noise/B_simple")
"""The gradient noise at theta^k (descent.noise; only with noise.enabled=true): |G|, the norm of the exact full
gradient (not its square); tr(Sigma), the trace of the per-sample gradients' covariance over the training set; and
B_simple = tr(Sigma) / |G|^2, the batch size at which a minibatch gradient's noise matches its signal."""

TABLE = tuple(f"{stage}/{name}" for stage in (*EVAL_SETS, "gap") for name in LOWER_IS_BETTER)
"""The columns of the console table."""


def chunk_sums(loss_sum: Tensor, logits: Tensor, y: Tensor) -> Tensor:
    """One chunk's SUMS, in their order, as float64 on the device (no host sync until the epoch is complete)."""
    values = [torch.as_tensor(add(loss_sum, logits, y), device=y.device) for add in SUMS.values()]
    return torch.stack([value.to(torch.float64) for value in values])


def figures(sums: list[list[float]]) -> dict[str, float]:
    """Every FIGURES entry per evaluated set (`sums` in EVAL_SETS order), and test minus train as `gap/`."""
    metrics: dict[str, float] = {}
    for stage, values in zip(EVAL_SETS, sums, strict=True):
        named = dict(zip(SUMS, values, strict=True))
        metrics |= {f"{stage}/{name}": figure(named) for name, figure in FIGURES.items()}
    metrics |= {f"gap/{name}": metrics[f"test/{name}"] - metrics[f"train/{name}"] for name in LOWER_IS_BETTER}
    return metrics


def final_and_best(history: list[dict[str, float]], monitor: str) -> tuple[dict[str, float], dict[str, float]]:
    """The last epoch's figures, and those of the first epoch with the lowest `monitor`: "best" everywhere."""
    return history[-1], min(history, key=lambda row: row[monitor])


def summary(history: list[dict[str, float]], monitor: str, run_dir: str, best_checkpoint: str) -> dict[str, Any]:
    """What metrics.json holds: final and best-epoch figures with the whole history."""
    final, best = final_and_best(history, monitor)
    return {
        "run_dir": run_dir,
        "monitor": monitor,
        "final": final,
        "best": best,
        "best_checkpoint": best_checkpoint,
        "history": history,
    }


def epoch_line(row: dict[str, float]) -> str:
    """One epoch's log line: what a run without a progress bar prints after each epoch."""
    return (
        f"epoch {int(row['epoch'])}  train loss {row['train/loss']:.4f} err {100 * row['train/error']:.2f}%  "
        f"val err {100 * row['val/error']:.2f}%  test loss {row['test/loss']:.4f} err {100 * row['test/error']:.2f}%  "
        f"({int(row['progress/steps'])} steps, {row['time/train_s']:.1f} s)"
    )


def format_table(result: dict[str, Any]) -> str:
    """The final and best epoch's TABLE figures, a row each, for the console."""
    widths = [max(12, len(key) + 2) for key in TABLE]
    header = f"{'':16}" + "".join(f"{key.replace('/', ' '):>{width}}" for key, width in zip(TABLE, widths, strict=True))
    lines = [header]
    for label in ("final", "best"):
        row = result[label]
        cells = "".join(
            f"{row[key]:>{width}.4f}" if key.endswith("loss") else f"{100 * row[key]:>{width - 1}.2f}%"
            for key, width in zip(TABLE, widths, strict=True)
        )
        lines.append(f"{label + ' (epoch ' + str(int(row['epoch'])) + ')':16}{cells}")
    return "\n".join(lines)
