"""Stopping and going on: a warm start from a checkpoint's weights, and a resumed run extended past its schedule."""

import csv
import json
import math
from pathlib import Path

import pytest
from helpers import compose_eval, run, small

from descent.evaluation import evaluate
from descent.resume import resumed_config
from descent.training import train


def test_a_warm_start_trains_from_epoch_1_with_the_new_settings(make_cfg, tmp_path: Path) -> None:
    train(make_cfg("max_epochs=2", "optimizer.lr=0.05", run_dir=tmp_path / "first"))
    weights = tmp_path / "first" / "checkpoints" / "last.ckpt"
    first = json.loads((tmp_path / "first" / "metrics.json").read_text())
    result = train(make_cfg("max_epochs=2", "optimizer.lr=0.001", f"ckpt_path={weights}", run_dir=tmp_path / "warm"))
    assert [row["epoch"] for row in result["history"]] == [1, 2]  # a new run: its own epochs
    assert [row["progress/lr"] for row in result["history"]] == [0.001, 0.001]  # the new rate is the rate used
    assert result["history"][-1]["progress/steps"] == 16  # its own steps, not the first run's 16 more
    # It starts where the weights were: its first epoch is no worse than the first run's last.
    assert result["history"][0]["train/loss"] <= first["final"]["train/loss"] * 1.05
    assert (tmp_path / "warm" / "checkpoints" / "best.ckpt").is_file()


def test_a_warm_start_may_change_the_optimizer(make_cfg, tmp_path: Path) -> None:
    train(make_cfg("max_epochs=1", "optimizer=sgd", run_dir=tmp_path / "sgd"))
    weights = tmp_path / "sgd" / "checkpoints" / "last.ckpt"
    result = train(make_cfg("max_epochs=2", "optimizer=adam", f"ckpt_path={weights}", run_dir=tmp_path / "adam"))
    assert len(result["history"]) == 2 and math.isfinite(result["final"]["train/loss"])


def test_the_best_epoch_of_a_warm_start_is_what_eval_reproduces(make_cfg, tmp_path: Path) -> None:
    """src/train.py twice and src/eval.py, each composed as its command line composes it."""
    train(make_cfg("max_epochs=1", run_dir=tmp_path / "first"))
    weights = tmp_path / "first" / "checkpoints" / "last.ckpt"
    train(make_cfg("max_epochs=3", "optimizer.lr=0.02", f"ckpt_path={weights}", run_dir=tmp_path / "warm"))
    metrics = json.loads((tmp_path / "warm" / "metrics.json").read_text())
    assert Path(metrics["best_checkpoint"]) == tmp_path / "warm" / "checkpoints" / "best.ckpt"
    evaluate(compose_eval(f"ckpt_path={metrics['best_checkpoint']}", f"run_dir={tmp_path / 'eval'}"))
    figures = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("val/error", "test/loss", "train/loss"):
        assert figures[key] == pytest.approx(metrics["best"][key], rel=1e-6)


def cosine(base: float, epoch: int, max_epochs: int) -> float:
    """The learning rate of epoch `epoch` (1-based) of a cosine over `max_epochs`, to zero."""
    return base * (1 + math.cos(math.pi * (epoch - 1) / max_epochs)) / 2


@pytest.mark.parametrize("scheduler", ["cosine", "exponential"])
def test_extending_a_scheduled_run_goes_on_as_a_run_of_that_length_would(make_cfg, tmp_path, scheduler) -> None:
    train(make_cfg("max_epochs=2", f"scheduler={scheduler}", "logger=none"))
    cfg = make_cfg("max_epochs=4", f"scheduler={scheduler}", f"resume={tmp_path / 'run'}", run_dir=tmp_path / "x")
    history = train(resumed_config(cfg, [f"resume={tmp_path / 'run'}", "max_epochs=4"]))["history"]
    rates = [row["progress/lr"] for row in history]
    if scheduler == "cosine":  # the first two epochs as the 2-epoch run had them, then the 4-epoch cosine's
        expected = [cosine(0.05, 1, 2), cosine(0.05, 2, 2), cosine(0.05, 3, 4), cosine(0.05, 4, 4)]
    else:  # gamma^k whatever the length
        expected = [0.05 * 0.9**k for k in range(4)]
    assert rates == pytest.approx(expected)
    straight = train(make_cfg("max_epochs=4", f"scheduler={scheduler}", "logger=none", run_dir=tmp_path / "straight"))
    assert rates[2:] == pytest.approx([row["progress/lr"] for row in straight["history"]][2:])


@pytest.mark.slow
def test_a_stopped_sweep_summarises_what_it_finished_and_goes_on_where_it_stopped(
    idx_dir: Path, tmp_path: Path
) -> None:
    """Three jobs alike but for the epoch their callback would signal in; the second sends itself SIGTERM in its
    second epoch (epoch=1), the third never starts. The summary holds the finished job and the interrupted one.
    `resume=<sweep dir>` reads the first back and resumes the second at its exact step, which then sends itself
    SIGINT at once: stopped again, summarised again. A second `resume=<sweep dir>` resumes it once more and runs
    the third: the three end with the same figures to the last digit, as three runs of one config never stopped do."""
    from helpers import ROOT, environment

    sweep_dir, env = tmp_path / "sweep", environment(PYTHONPATH=str(ROOT / "tests"))
    done = run(
        "src/train.py", "-m", *small(idx_dir), "+callbacks.signal._target_=helpers.SendSignal",
        "+callbacks.signal.signal_name=[SIGTERM,SIGINT]", "+callbacks.signal.hook=on_train_batch_start",
        f"+callbacks.signal.once_marker={tmp_path / 'sent'}", "+callbacks.signal.epoch=7,1,8",
        f"hydra.sweep.dir={sweep_dir}", env=env,
    )  # fmt: skip
    first = None
    for name, exit_code in (("SIGTERM", 143), ("SIGINT", 130)):
        assert done.returncode == exit_code, done.stderr
        assert "Traceback" not in done.stderr
        summary = (sweep_dir / "summary.md").read_text()
        assert "2 runs, 0 failed, 1 interrupted (the sweep was stopped)" in summary
        rows = summary_rows(sweep_dir)
        assert rows["7"]["status"] == "ok" and rows["1"]["status"] == "interrupted"
        assert rows["1"]["error"].startswith(f"{name} before step")
        assert "8" not in rows
        if first is None:
            first = (sweep_dir / rows["7"]["run"] / "metrics.json").read_text()
        assert (sweep_dir / rows["7"]["run"] / "metrics.json").read_text() == first  # read back, not run again
        done = run("src/train.py", f"resume={sweep_dir}", env=env)
        assert "1 of these 3 jobs finished before (read back, not run again), 1 go on from a checkpoint" in done.stdout

    assert done.returncode == 0, done.stderr
    assert (sweep_dir / rows["7"]["run"] / "metrics.json").read_text() == first
    assert "3 runs, 0 failed." in (sweep_dir / "summary.md").read_text()
    rows = summary_rows(sweep_dir)
    assert [rows[epoch]["status"] for epoch in ("7", "1", "8")] == ["ok", "ok", "ok"]
    histories = [json.loads((sweep_dir / rows[e]["run"] / "metrics.json").read_text())["history"] for e in "718"]
    untimed = [[{k: v for k, v in row.items() if not k.startswith("time/")} for row in h] for h in histories]
    assert untimed[1] == untimed[0] and untimed[2] == untimed[0]  # to the last digit


def summary_rows(sweep_dir: Path) -> dict[str, dict[str, str]]:
    """The summary's run rows, by the epoch their callback signals in."""
    with open(sweep_dir / "summary.csv", newline="") as file:
        return {row["+callbacks.signal.epoch"]: row for row in csv.DictReader(file) if row["row"] == "run"}
