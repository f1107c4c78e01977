"""Multiruns that compare themselves: summary.csv and summary.md, failed jobs (the Optuna search: test_search)."""

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
from helpers import run, scalars, small

from descent import metrics
from descent.data import EVAL_SETS
from descent.results import FIGURES, PROGRESS, summary

pytestmark = pytest.mark.slow


def read_summary(sweep_dir: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    with open(sweep_dir / "summary.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    return [r for r in rows if r["row"] == "configuration"], [r for r in rows if r["row"] == "run"]


def test_a_2x2_sweep_summarises_each_run_and_each_configuration_over_seeds(idx_dir: Path, tmp_path: Path) -> None:
    done = run(
        "src/train.py", "-m", "optimizer=sgd,momentum", "seed=0,1", *small(idx_dir), f"hydra.sweep.dir={tmp_path}"
    )
    assert done.returncode == 0, done.stderr
    configurations, runs = read_summary(tmp_path)
    assert len(runs) == 4
    for row in runs:
        run_dir = tmp_path / row["run"]
        result = json.loads((run_dir / "metrics.json").read_text())
        assert row["status"] == "ok"
        assert row["configuration"] == f"optimizer={row['optimizer']}"
        assert float(row["best val/error"]) == result["best"]["val/error"]
        assert float(row["final test/error"]) == result["final"]["test/error"]
        assert float(row["best epoch"]) == result["best"]["epoch"]
        for name in FIGURES:  # every figure of descent's, at the best and the last epoch
            assert float(row[f"best test/{name}"]) == result["best"][f"test/{name}"]
            assert float(row[f"final train/{name}"]) == result["final"][f"train/{name}"]
        # The summary agrees with what TensorBoard shows of the run.
        assert float(row["final test/loss"]) == pytest.approx(scalars(run_dir)["test/loss"][-1], rel=1e-6)
    assert [row["configuration"] for row in configurations] != []
    for config in configurations:
        members = [row for row in runs if row["configuration"] == config["configuration"]]
        assert sorted(row["seed"] for row in members) == ["0", "1"]
        for figure in ("best val/error", "final test/error", "final train/loss"):
            values = [float(row[figure]) for row in members]
            assert float(config[figure]) == pytest.approx(statistics.fmean(values))
            assert float(config[f"{figure} std"]) == pytest.approx(statistics.stdev(values))
    objectives = [float(row["best val/error"]) for row in configurations]
    assert objectives == sorted(objectives)  # best configuration first
    markdown = (tmp_path / "summary.md").read_text()
    assert "4 runs, 0 failed" in markdown
    for row in runs:
        assert f"`{row['run']}`" in markdown


def test_a_failed_job_is_reported_and_does_not_stop_the_others(idx_dir: Path, tmp_path: Path) -> None:
    done = run("src/train.py", "-m", "batch_size=100000,50", *small(idx_dir), f"hydra.sweep.dir={tmp_path}")
    assert done.returncode == 1  # the sweep as a whole failed, after running every job
    assert "error: batch_size=100000 is larger than the training set (N=500)" in done.stderr
    assert "Traceback" not in done.stderr
    last = [line for line in done.stderr.splitlines() if line.startswith("error: ")][-1]
    assert last.startswith("error: 1 of 2 jobs failed (the first: batch_size=100000,")
    assert last.endswith(f"each one's error is in {tmp_path}/summary.md")
    _, runs = read_summary(tmp_path)
    status = {row["batch_size"]: row for row in runs}
    assert status["50"]["status"] == "ok"
    assert (tmp_path / status["50"]["run"] / "checkpoints" / "last.ckpt").is_file()
    assert status["100000"]["status"] == "failed"
    assert "batch_size=100000 is larger than the training set" in status["100000"]["error"]
    assert "1 failed" in (tmp_path / "summary.md").read_text()


def test_a_run_that_stopped_early_is_summarised_as_failed(tmp_path: Path) -> None:
    from descent.runs import read_runs

    job = tmp_path / "optimizer.lr=1000"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- optimizer.lr=1000\n")
    message = "training diverged at epoch 1, step 3 of the epoch (3 in all): the loss is nan; lower the learning rate"
    stopped = {"reason": "diverged", "epoch": 1, "step": 3, "message": message}
    (job / "metrics.json").write_text(json.dumps({"history": [], "stopped": stopped}))
    (run,) = read_runs(tmp_path)
    assert (run.status, run.error, run.history, run.best) == ("failed", message, [], None)


def write_run(run_dir: Path, overrides: list[str], sums: list[list[list[float]]], monitor: str = "val/error") -> None:
    """A sweep job's files as src/train.py writes them, from each epoch's SUMS per set (in EVAL_SETS order)."""
    history = [
        {"epoch": epoch, **metrics.figures(epoch_sums), **dict.fromkeys(PROGRESS, float(epoch))}
        for epoch, epoch_sums in enumerate(sums, start=1)
    ]
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
    (run_dir / "metrics.json").write_text(json.dumps(summary(history, monitor, str(run_dir), "")))


def test_a_figure_added_to_descent_metrics_is_a_column_of_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from descent.sweep import write_summary

    monkeypatch.setitem(FIGURES, "errors_per_1000", lambda sums: 1000 * sums["errors"] / sums["count"])
    assert len(EVAL_SETS) == 3 and list(metrics.SUMS) == ["loss", "errors", "count"]
    for seed, errors in (("0", 7.0), ("1", 9.0)):  # (loss sum, errors, count) of train, val and test, two epochs
        epochs = [[[50.0, 20.0, 100.0], [60.0, 30.0, 100.0], [55.0, 25.0, 100.0]]]
        epochs.append([[30.0, 5.0, 100.0], [40.0, 10.0, 100.0], [35.0, errors, 100.0]])
        write_run(tmp_path / seed, [f"seed={seed}"], epochs)
    write_summary(tmp_path)
    (config,), runs = read_summary(tmp_path)
    assert {row["seed"]: float(row["best test/errors_per_1000"]) for row in runs} == {"0": 70.0, "1": 90.0}
    assert all(float(row["final train/errors_per_1000"]) == 50.0 for row in runs)
    assert float(config["best test/errors_per_1000"]) == 80.0
    assert float(config["best test/errors_per_1000 std"]) == pytest.approx(statistics.stdev([70.0, 90.0]))
    assert "| best test/errors_per_1000 |" in (tmp_path / "summary.md").read_text()


def test_runs_are_read_from_metrics_json_error_txt_or_marked_running(tmp_path: Path) -> None:
    """Best is the epoch of the lowest monitor; an eval run's metrics.json (no history) is no run of train.py."""
    from descent.runs import read_runs

    test_lowest_late = [[[50.0, 20.0, 100.0], [60.0, 10.0, 100.0], [55.0, 25.0, 100.0]]]
    test_lowest_late.append([[30.0, 5.0, 100.0], [40.0, 15.0, 100.0], [35.0, 12.0, 100.0]])
    write_run(tmp_path / "ok", ["seed=0"], test_lowest_late)
    (tmp_path / "failed" / ".hydra").mkdir(parents=True)
    (tmp_path / "failed" / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    (tmp_path / "failed" / "error.txt").write_text("DescentError: batch_size=9 is wrong\n")
    (tmp_path / "running" / ".hydra").mkdir(parents=True)
    (tmp_path / "running" / ".hydra" / "overrides.yaml").write_text("- seed=2\n")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps({"ckpt_path": "x.ckpt", "test/error": 0.1}))
    failed, ok, running = read_runs(tmp_path)  # by name
    assert (ok.name, ok.status, ok.overrides, ok.monitor) == ("ok", "ok", {"seed": "0"}, "val/error")
    assert (ok.best["epoch"], ok.final["epoch"], ok.objective) == (1, 2, 0.1)  # type: ignore[index]
    assert ok.series("test/error") == [0.25, 0.12]
    assert (failed.name, failed.status, failed.error) == ("failed", "failed", "DescentError: batch_size=9 is wrong")
    assert (running.name, running.status, running.history, running.rank) == ("running", "running", [], math.inf)
    assert math.isnan(running.objective) and ok.rank == ok.objective  # lower is better: ranked by the figure itself
    (single,) = read_runs(tmp_path / "ok")  # a run dir is read as itself, named by its dir
    assert (single.name, single.best) == ("ok", ok.best)
