"""The critical batch size from finished runs' steps to target (descent.critical's clock): the frontier of steps
against B, the fit S = S_min (1 + B_crit / B), and the report's section that draws and tables them.

Reads runs as descent.runs gives them and imports no torch, as the report that calls it.
"""

import math
import statistics
from pathlib import Path

from matplotlib.figure import Figure

from descent.results import B_SIMPLE, SAMPLES, TARGET_EPOCHS, TARGET_ERROR, TARGET_SECONDS, TARGET_STEPS
from descent.runs import Run


def fit_steps_to_target(batch_sizes: list[float], steps: list[float]) -> tuple[float, float]:
    """S_min and B_crit of S = S_min (1 + B_crit / B), by least squares on S = a + b / B weighted by 1 / S^2 (so that
    every batch size counts by its relative error, across decades): S_min = a, B_crit = b / a."""
    x = [1 / b for b in batch_sizes]
    w = [1 / s**2 for s in steps]
    total = math.fsum(w)
    # Centred on the weighted means, so that no sum is a difference of nearly equal ones (the raw normal equations')
    x_mean = math.fsum(wi * xi for wi, xi in zip(w, x, strict=True)) / total
    s_mean = math.fsum(wi * si for wi, si in zip(w, steps, strict=True)) / total
    spread = math.fsum(wi * (xi - x_mean) ** 2 for wi, xi in zip(w, x, strict=True))
    b = math.fsum(wi * (xi - x_mean) * (si - s_mean) for wi, xi, si in zip(w, x, steps, strict=True)) / spread
    a = s_mean - b * x_mean
    # S = b / B exactly (perfect scaling to every B measured): no plateau, so B_crit is beyond any B
    return a, b / a if a else math.copysign(math.inf, b)


def batch_size_of(run: Run) -> int:
    """B of a run: its batch_size override, or (optimizer=gd, batch_size=full) the samples of an epoch."""
    given = run.overrides.get("batch_size", "")
    first = run.history[0]
    return int(given) if given.isdigit() else round(first[SAMPLES] / first["epoch"])


def frontier(runs: list[Run]) -> dict[int, Run]:
    """For each batch size, the run (of its learning rates) that reached the target in the fewest steps."""
    best: dict[int, Run] = {}
    for run in runs:
        if run.final and TARGET_STEPS in run.final:
            b = batch_size_of(run)
            if b not in best or run.final[TARGET_STEPS] < best[b].final[TARGET_STEPS]:  # type: ignore[index]
                best[b] = run
    return dict(sorted(best.items()))


def measured_noise_scale(runs: list[Run], target_error: float) -> float | None:
    """B_simple from runs that measured it (noise.enabled=true): at the epoch that first reached the target's
    validation error, else at the last; the median over such runs (the lower of the middle two of an even count)."""
    values = []
    for run in runs:
        rows = [row for row in run.history if B_SIMPLE in row]
        if rows:
            reached = [row for row in rows if row["val/error"] <= target_error]
            values.append((reached or rows[-1:])[0][B_SIMPLE])
    return statistics.median_low(values) if values else None


def critical_batch_section(runs: list[Run], out_dir: Path) -> str:
    """critical_batch.png (steps and epochs to target against B, log-log, with the fit and B_simple) and the
    markdown that tables the frontier; "" when no run recorded a time to target."""
    best = frontier(runs)
    if len(best) < 2:
        return ""
    sizes, steps = list(best), [run.final[TARGET_STEPS] for run in best.values()]  # type: ignore[index]
    epochs = [run.final[TARGET_EPOCHS] for run in best.values()]  # type: ignore[index]
    target = next(iter(best.values())).final[TARGET_ERROR]  # type: ignore[index]
    s_min, b_crit = fit_steps_to_target(sizes, steps)
    noise_scale = measured_noise_scale(runs, target)
    figure = Figure(figsize=(13, 5.5), layout="constrained")
    left, right = figure.subplots(1, 2)
    for run in runs:
        if run.final and TARGET_STEPS in run.final:
            left.plot(batch_size_of(run), run.final[TARGET_STEPS], ".", color="0.7")
    left.plot(sizes, steps, "o-", color="C0", label="best learning rate of each B")
    low, high = math.log10(min(sizes)), math.log10(max(sizes))
    grid = [10 ** (low + (high - low) * i / 99) for i in range(100)]
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
        f"| {b} | {run.overrides.get('optimizer.lr', '')} | {run.final[TARGET_STEPS]:.0f} | "  # type: ignore[index]
        f"{run.final[TARGET_EPOCHS]:.2f} | {run.final[TARGET_SECONDS]:.1f} |"  # type: ignore[index]
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
