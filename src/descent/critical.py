"""Steps to a target validation error, measured at any batch size: the critical-batch experiment's clock.

Shallue et al. 2018 count the optimizer steps a run needs to first reach a target error; McCandlish et al. 2018
predict them as S = S_min (1 + B_crit / B). An evaluation after every epoch is too coarse for that at small B (an
epoch of B = 16 is thousands of steps), so the validation error is checked on a geometric grid of steps (each check
about `growth` times the step of the last), which resolves steps-to-target to that ratio at any scale for the
cost of a few hundred forward passes over the validation set.
"""

import math
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from matplotlib.figure import Figure

from descent.data import set_chunks
from descent.runs import Run


class StepsToTarget(Callback):
    """Stops the run when the validation error first reaches `target_error`; records when, as `target/steps`,
    `target/epochs` (steps over steps an epoch) and `target/seconds` (training seconds), in the run's last epoch."""

    def __init__(self, target_error: float, growth: float = 1.05) -> None:
        self.target_error, self.growth = target_error, growth
        self.next_check, self.reached = 1, False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        step = trainer.global_step
        if self.reached or step < self.next_check:
            return
        self.next_check = max(step + 1, int(step * self.growth))
        if validation_error(trainer, module) <= self.target_error:
            self.reached = True
            # descent's training clock: the finished epochs' training, and this one's so far
            seconds = module.train_seconds + (time.perf_counter() - module.clock if module.clock else 0.0)
            module.extra_figures |= {
                "target/error": self.target_error,
                "target/steps": float(step),
                "target/epochs": step / trainer.num_training_batches,
                "target/seconds": seconds,
            }
            trainer.should_stop = True  # Lightning evaluates the epoch it stops in, then ends the run


@torch.no_grad()
def validation_error(trainer, module) -> float:  # type: ignore[no-untyped-def]
    """The current weights' error rate on the whole validation set (this rank's share, summed over ranks), with
    BatchNorm statistics recomputed at these weights as every evaluation has them (a pass over the training set)."""
    module.recompute_norm_statistics()
    data = trainer.datamodule
    images, labels = data.sets["val"]
    was_training = module.net.training
    module.net.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=module.device)
    for chunk in set_chunks(images, labels, data.samples_per_chunk, trainer.global_rank, trainer.world_size):
        counts += torch.stack(
            [
                (module(chunk.x.to(module.dtype)).argmax(1) != chunk.y).sum().double(),
                torch.tensor(len(chunk.y), dtype=torch.float64, device=chunk.y.device),
            ]
        )
    module.net.train(was_training)
    errors, count = trainer.strategy.reduce(counts, reduce_op="sum").tolist()
    return errors / count


def fit_steps_to_target(batch_sizes: list[float], steps: list[float]) -> tuple[float, float]:
    """S_min and B_crit of S = S_min (1 + B_crit / B), by least squares on S = a + b / B weighted by 1 / S^2 (so that
    every batch size counts by its relative error, across decades): S_min = a, B_crit = b / a."""
    x = torch.tensor([1 / b for b in batch_sizes], dtype=torch.float64)
    s = torch.tensor(steps, dtype=torch.float64)
    w = 1 / s**2
    design = torch.stack([torch.ones_like(x), x], dim=1)
    a, b = torch.linalg.solve(design.T @ (w[:, None] * design), design.T @ (w * s)).tolist()
    return a, b / a


def batch_size_of(run: Run) -> int:
    """B of a run: its batch_size override, or (optimizer=gd, batch_size=full) the samples of an epoch."""
    given = run.overrides.get("batch_size", "")
    first = run.history[0]
    return int(given) if given.isdigit() else round(first["progress/samples"] / first["epoch"])


def frontier(runs: list[Run]) -> dict[int, Run]:
    """For each batch size, the run (of its learning rates) that reached the target in the fewest steps."""
    best: dict[int, Run] = {}
    for run in runs:
        if run.final and "target/steps" in run.final:
            b = batch_size_of(run)
            if b not in best or run.final["target/steps"] < best[b].final["target/steps"]:  # type: ignore[index]
                best[b] = run
    return dict(sorted(best.items()))


def measured_noise_scale(runs: list[Run], target_error: float) -> float | None:
    """B_simple from runs that measured it (noise.enabled=true): at the epoch that first reached the target's
    validation error, else at the last; the median over such runs."""
    values = []
    for run in runs:
        rows = [row for row in run.history if "noise/B_simple" in row]
        if rows:
            reached = [row for row in rows if row["val/error"] <= target_error]
            values.append((reached or rows[-1:])[0]["noise/B_simple"])
    return float(torch.tensor(values).median()) if values else None


def critical_batch_section(runs: list[Run], out_dir: Path) -> str:
    """critical_batch.png (steps and epochs to target against B, log-log, with the fit and B_simple) and the
    markdown that tables the frontier; "" when no run recorded a time to target."""
    best = frontier(runs)
    if len(best) < 2:
        return ""
    sizes, steps = list(best), [run.final["target/steps"] for run in best.values()]  # type: ignore[index]
    epochs = [run.final["target/epochs"] for run in best.values()]  # type: ignore[index]
    target = next(iter(best.values())).final["target/error"]  # type: ignore[index]
    s_min, b_crit = fit_steps_to_target(sizes, steps)
    noise_scale = measured_noise_scale(runs, target)
    figure = Figure(figsize=(13, 5.5), layout="constrained")
    left, right = figure.subplots(1, 2)
    for run in runs:
        if run.final and "target/steps" in run.final:
            left.plot(batch_size_of(run), run.final["target/steps"], ".", color="0.7")
    left.plot(sizes, steps, "o-", color="C0", label="best learning rate of each B")
    grid = torch.logspace(math.log10(min(sizes)), math.log10(max(sizes)), 100).tolist()
    left.plot(grid, [s_min * (1 + b_crit / b) for b in grid], "--", color="C1",
              label=f"S_min (1 + B_crit / B): S_min = {s_min:.0f}, B_crit = {b_crit:.0f}")  # fmt: skip
    left.plot(grid, [steps[0] * sizes[0] / b for b in grid], ":", color="0.4", label="slope -1 (perfect scaling)")
    right.plot(sizes, epochs, "o-", color="C0")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size B")
        ax.grid(True, which="both", alpha=0.3)
        for value, label, color in ((b_crit, "B_crit (fit)", "C1"), (noise_scale, "B_simple (measured)", "C2")):
            if value is not None and value > 0:
                ax.axvline(value, color=color, alpha=0.6, label=label if ax is left else None)
    left.set_ylim(bottom=min(steps) / 3)
    left.set_ylabel(f"optimizer steps to {100 * target:.1f}% validation error")
    right.set_ylabel(f"epochs to {100 * target:.1f}% validation error")
    left.legend(fontsize=8)
    figure.savefig(out_dir / "critical_batch.png", dpi=100)
    rows = [
        f"| {b} | {run.overrides.get('optimizer.lr', '')} | {run.final['target/steps']:.0f} | "  # type: ignore[index]
        f"{run.final['target/epochs']:.2f} | {run.final['target/seconds']:.1f} |"  # type: ignore[index]
        for b, run in best.items()
    ]
    measured = f"{noise_scale:.0f}" if noise_scale is not None else "not measured (no run with noise.enabled=true)"
    return "\n".join(
        [
            f"## Steps to {100 * target:.1f}% validation error against the batch size",
            "",
            f"Fit of S = S_min (1 + B_crit / B) to the frontier: S_min = {s_min:.0f} steps, B_crit = {b_crit:.0f}. "
            f"Measured B_simple: {measured}.",
            "",
            "| B | learning rate | steps | epochs | training seconds |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            "![steps to target against B](critical_batch.png)",
            "",
        ]
    )
