"""The critical-batch experiment: steps to a target error, the fit S = S_min (1 + B_crit / B), the report."""

import json
from pathlib import Path

import pytest
from helpers import run, small

from descent.critical_batch import fit_steps_to_target
from descent.training import train


@pytest.mark.parametrize(("s_min", "b_crit"), [(500.0, 1000.0), (37.0, 12.5), (2000.0, 60000.0)])
def test_the_fit_recovers_s_min_and_b_crit_from_points_of_the_formula(s_min: float, b_crit: float) -> None:
    sizes = [16.0 * 4**k for k in range(7)]
    steps = [s_min * (1 + b_crit / b) for b in sizes]
    assert fit_steps_to_target(sizes, steps) == pytest.approx((s_min, b_crit), rel=1e-9)


def test_the_fit_is_not_fooled_by_perfect_scaling_alone() -> None:
    """Points on S = c / B (slope -1, no plateau): S_min comes out near zero, B_crit beyond every B measured."""
    sizes = [16.0, 64.0, 256.0, 1024.0]
    s_min, b_crit = fit_steps_to_target(sizes, [64000.0 / b for b in sizes])
    assert abs(s_min) < 1e-6 * 4000 and abs(b_crit) > 1e6


def test_a_run_stops_at_the_target_and_records_when(make_cfg, tmp_path: Path) -> None:
    result = train(make_cfg("callbacks=steps_to_target", "callbacks.steps_to_target.target_error=0.2",
                            "batch_size=16", "max_epochs=5", "logger=none"))  # fmt: skip
    final = result["final"]
    assert final["target/error"] == 0.2 and final["epoch"] == 1  # the bands are learned within the first epoch
    assert 1 <= final["target/steps"] < 32  # 32 steps an epoch; checked at steps about 5% apart
    assert final["target/epochs"] == pytest.approx(final["target/steps"] / 32)
    assert final["progress/steps"] == final["target/steps"]  # stopped there
    assert final["val/error"] <= 0.2


@pytest.mark.slow
def test_the_report_draws_steps_to_target_against_the_batch_size(idx_dir: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = run(
        "src/train.py", "-m", *small(idx_dir)[:-1], "max_epochs=30", "callbacks=steps_to_target",
        "callbacks.steps_to_target.target_error=0.1", "batch_size=4,16,64,full", "optimizer.lr=0.05,0.2",
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    steps = {}
    for path in sweep.glob("*/metrics.json"):
        final = json.loads(path.read_text())["final"]
        batch = path.parent.name.split("batch_size:")[1].split("+")[0]
        steps.setdefault(batch, []).append(final.get("target/steps"))
    reported = run("src/report.py", str(sweep))
    assert reported.returncode == 0, reported.stderr
    markdown = (sweep / "report.md").read_text()
    assert "## Steps to 10.0% validation error against the batch size" in markdown
    assert (sweep / "critical_batch.png").read_bytes().startswith(b"\x89PNG")
    for batch, recorded in steps.items():
        fewest = min(s for s in recorded if s is not None)
        size = "500" if batch == "full" else batch
        assert f"| {size} | " in markdown and f" | {fewest:.0f} | " in markdown
