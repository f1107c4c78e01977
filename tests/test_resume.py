"""Stopped anywhere, resumed at the exact step: a run stopped mid-epoch by SIGTERM or SIGINT (in its first epoch or
a later one, in a step or in the evaluation), or killed between periodic checkpoints, then resumed with
`resume=<run dir>`, ends with the figures, weights and logs of a run that was never stopped."""

import csv
import json
import logging
import os
import re
import signal
import time
from pathlib import Path

import lightning
import pytest
import torch
from helpers import compose_train, events, finish, once_per_session, start, wait_for

from descent.checkpoints import load
from descent.resume import newest_checkpoint, resumed_config
from descent.stepping import Interrupted
from descent.training import train

# SGD with B=32 on 500 samples (16 steps an epoch), dropout on: the order, the masks and the optimizer's momentum
# must all go on as they were.
RUN = [
    "max_epochs=3",
    "batch_size=32",
    "optimizer=momentum",
    "model.net.dropout=0.2",
    "logger=csv",
    "seed=3",
    "trainer.log_every_n_steps=4",
]
FIGURES = ("train/loss", "train/error", "val/loss", "test/loss", "progress/steps", "progress/samples")


def resume(make_cfg, run_dir: Path) -> dict:
    cfg = resumed_config(make_cfg(*RUN, f"resume={run_dir}", run_dir=run_dir), [f"resume={run_dir}"])
    del cfg.callbacks["signal"]  # the stop was sent once; the resumed run goes on without it
    return train(cfg)


def assert_same_run(got: Path, expected: Path) -> None:
    """Figures of every epoch, final weights, CSV rows: as the uninterrupted run's."""
    got_metrics, expected_metrics = (json.loads((d / "metrics.json").read_text()) for d in (got, expected))
    assert "stopped" not in got_metrics
    assert [row["epoch"] for row in got_metrics["history"]] == [1, 2, 3]
    for row, reference in zip(got_metrics["history"], expected_metrics["history"], strict=True):
        for key in FIGURES:
            assert row[key] == pytest.approx(reference[key], rel=1e-6, abs=1e-9), (row["epoch"], key)
    got_weights, expected_weights = (load(d / "checkpoints" / "last.ckpt")["state_dict"] for d in (got, expected))
    for name, value in expected_weights.items():
        torch.testing.assert_close(got_weights[name], value, rtol=1e-5, atol=1e-7, msg=name)
    rows = [csv_rows(got), csv_rows(expected)]
    assert [r["step"] for r in rows[0]["epochs"]] == [r["step"] for r in rows[1]["epochs"]] == ["1", "2", "3"]
    assert [r["step"] for r in rows[0]["steps"]] == [r["step"] for r in rows[1]["steps"]]  # no gap, no duplicate
    assert rows[1]["steps"]


def csv_rows(run_dir: Path) -> dict[str, list[dict[str, str]]]:
    (path,) = run_dir.rglob("metrics.csv")
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    return {
        "epochs": [r for r in rows if r.get("progress/steps")],
        "steps": [r for r in rows if r.get("train/step_loss")],
    }


@pytest.mark.parametrize(
    ("name", "hook", "epoch", "batch"),
    [
        ("SIGTERM", "on_train_batch_start", 0, 5),  # in epoch 1, before any last.ckpt
        ("SIGINT", "on_train_batch_start", 0, 11),
        ("SIGINT", "on_train_batch_end", 1, 7),  # in epoch 2, after its 8th step
        ("SIGTERM", "on_validation_batch_start", 1, None),  # in epoch 2's evaluation
    ],
)
def test_a_run_stopped_mid_epoch_resumes_at_that_step(
    make_cfg, tmp_path: Path, name: str, hook: str, epoch: int, batch: int | None
) -> None:
    straight = tmp_path / "straight"
    train(make_cfg(*RUN, run_dir=straight))
    stopped = tmp_path / "stopped"
    send = ["+callbacks.signal._target_=helpers.SendSignal", f"+callbacks.signal.signal_name={name}",
              f"+callbacks.signal.hook={hook}", f"+callbacks.signal.epoch={epoch}",
              f"+callbacks.signal.batch={'null' if batch is None else batch}"]  # fmt: skip
    with pytest.raises(Interrupted):
        train(make_cfg(*RUN, *send, run_dir=stopped))
    assert newest_checkpoint(stopped) == stopped / "checkpoints" / "interrupted.ckpt"
    resume(make_cfg, stopped)
    assert_same_run(stopped, straight)


class SlowSteps(lightning.Callback):
    """Every optimizer step takes at least `seconds` more: a floor under the training time that a test can count."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: object) -> None:
        time.sleep(self.seconds)


def test_a_resumed_epochs_training_time_and_progress_rate_count_the_steps_as_they_were_taken(
    make_cfg, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped after 9 of epoch 1's 16 steps, each at least 20 ms: the resumed run's epoch 1 took at least the 16
    steps' 0.32 s (the steps before the stop included), epoch 2 as much again, and the progress line's rate is that
    of the steps taken since the resume (at most 32 samples / 20 ms; a step here takes well under a second)."""
    slow = ["+callbacks.slow._target_=test_resume.SlowSteps", "+callbacks.slow.seconds=0.02", "max_epochs=2",
            "trainer.enable_progress_bar=false", "progress_every_minutes=1e-6"]  # fmt: skip
    send = ["+callbacks.signal._target_=helpers.SendSignal", "+callbacks.signal.signal_name=SIGTERM",
            "+callbacks.signal.hook=on_train_batch_start", "+callbacks.signal.epoch=0",
            "+callbacks.signal.batch=9"]  # fmt: skip
    straight = train(make_cfg(*RUN, *slow, run_dir=tmp_path / "straight"))["history"]
    stopped = tmp_path / "stopped"
    with pytest.raises(Interrupted):
        train(make_cfg(*RUN, *slow, *send, run_dir=stopped))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="descent.progress"):
        cfg = resumed_config(make_cfg(*RUN, *slow, f"resume={stopped}", run_dir=stopped), [f"resume={stopped}"])
        del cfg.callbacks["signal"]
        resumed = train(cfg)["history"]
    floor = 16 * 0.02
    for history in (straight, resumed):
        first, second = (row["time/train_s"] for row in history)
        assert first >= floor and second - first >= floor, history
    assert resumed[0]["time/train_s"] <= 2 * straight[0]["time/train_s"] + 0.5  # not counted twice either
    rates = [float(m) for m in re.findall(r"step \d+ of 16 \(\d+%\), (\d+) samples/s", caplog.text)]
    assert rates and all(32 / 1.0 <= rate <= 32 / 0.02 for rate in rates), caplog.text


SLOW_EPOCHS = ["data=synthetic", "data.num_train=12000", "data.val_size=500", "batch_size=8", "model.net.hidden=[64]",
               "trainer=cpu", "logger.tensorboard.image_every_n_epochs=0", "max_epochs=2", "seed=4"]  # fmt: skip
"""1,438 steps an epoch, a few seconds: long enough to kill it between two periodic checkpoints."""


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run dir of SLOW_EPOCHS never stopped, trained in this process on one thread as the stopped runs'
    subprocesses are: what each of them must end as. One run for the session (helpers.once_per_session)."""
    return once_per_session(
        tmp_path_factory, "straight", lambda run_dir: train(compose_train(*SLOW_EPOCHS, f"run_dir={run_dir}"))
    )


def go_on_after_the_kill(killed: Path, tmp_path: Path) -> None:
    """resume=<the killed run's dir>, as src/train.py's main runs it, in this process: the kill needs a process of its
    own, going on does not (the command line's resume= is test_robustness's and test_cli's)."""
    typed = [f"resume={killed}"]
    train(resumed_config(compose_train(*typed, f"run_dir={tmp_path / 'resume-invocation'}"), typed))


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_ends_as_an_uninterrupted_run(straight: Path, tmp_path: Path) -> None:
    """Killed in epoch 2, after epoch 1's last.ckpt: resume= goes on from there."""
    killed = tmp_path / "killed"
    process = start(*SLOW_EPOCHS, f"hydra.run.dir={killed}")
    wait_for(killed / "checkpoints" / "last.ckpt", process)
    time.sleep(0.2)  # into epoch 2
    process.kill()
    process.communicate()
    assert load(killed / "checkpoints" / "last.ckpt")["epoch"] < 2  # killed before the end
    go_on_after_the_kill(killed, tmp_path)
    expected = json.loads((straight / "metrics.json").read_text())
    got = json.loads((killed / "metrics.json").read_text())
    assert [row["epoch"] for row in got["history"]] == [1, 2]
    for key in ("train/loss", "test/loss", "test/error", "val/error", "progress/steps", "progress/samples"):
        assert got["final"][key] == pytest.approx(expected["final"][key], rel=1e-6), key
    # The same TensorBoard run: the resumed epochs are in the killed run's dir.
    assert sorted({event.step for event in events(killed).Scalars("test/loss")}) == [1, 2]


@pytest.mark.slow
def test_kill_9_between_periodic_checkpoints_loses_only_the_steps_since_the_last(
    straight: Path, tmp_path: Path
) -> None:
    killed = tmp_path / "killed"
    process = start(*SLOW_EPOCHS, "checkpoint.every_n_steps=300", f"hydra.run.dir={killed}")
    periodic = killed / "checkpoints" / "periodic.ckpt"
    wait_for(periodic, process)
    first = periodic.stat().st_mtime_ns
    while periodic.stat().st_mtime_ns == first:  # a second periodic checkpoint, still in epoch 1
        assert process.poll() is None
        time.sleep(0.02)
    time.sleep(0.05)
    process.kill()
    process.communicate()
    assert not (killed / "checkpoints" / "last.ckpt").exists()  # killed in epoch 1: only periodic.ckpt to go on from
    steps = load(periodic)["global_step"]
    assert steps % 300 == 0 and 600 <= steps < 1438  # a second periodic, in epoch 1
    go_on_after_the_kill(killed, tmp_path)
    expected = json.loads((straight / "metrics.json").read_text())
    got = json.loads((killed / "metrics.json").read_text())
    assert [row["epoch"] for row in got["history"]] == [1, 2]
    for row, reference in zip(got["history"], expected["history"], strict=True):
        for key in ("train/loss", "test/loss", "val/error", "progress/steps", "progress/samples"):
            assert row[key] == pytest.approx(reference[key], rel=1e-6), key
    # One TensorBoard run, each point once: the epochs, and the step losses up to the kill and after it.
    got_events, expected_events = events(killed, scalars=0), events(straight, scalars=0)
    for tag in ("test/loss", "train/step_loss"):
        got_steps = [event.step for event in got_events.Scalars(tag)]
        assert got_steps == [event.step for event in expected_events.Scalars(tag)], tag


def test_periodic_checkpoint_settings_must_be_positive(make_cfg) -> None:
    from descent.config import check_config
    from descent.errors import DescentError

    for key, value in (("every_n_steps", 0), ("every_n_minutes", -1)):
        with pytest.raises(DescentError, match=f"checkpoint.{key}={value} is not allowed"):
            check_config(make_cfg(f"checkpoint.{key}={value}"))  # before any data is loaded


@pytest.mark.slow
def test_a_slurm_job_warned_of_its_time_limit_saves_is_requeued_and_resumes_by_itself(
    straight: Path, tmp_path: Path
) -> None:
    """SLURM simulated on this machine: SLURM_JOB_ID set, `scontrol` a stand-in that records its arguments, the run
    dir pinned as the README's sbatch line pins it. SIGUSR1 (sbatch --signal=USR1@90) mid-epoch 1: the run saves its
    place, asks `scontrol requeue <job>`, exits; the same command started again as the requeued job
    (SLURM_RESTART_COUNT=1) goes on from that step without being told, and ends as an uninterrupted run."""
    bin_dir, record = tmp_path / "bin", tmp_path / "scontrol.txt"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    (bin_dir / "scontrol").chmod(0o755)
    job = tmp_path / "job"
    command = [*SLOW_EPOCHS, "checkpoint.every_n_steps=300", f"hydra.run.dir={job}"]
    slurm = {"SLURM_JOB_ID": "4242", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    process = start(*command, env=slurm)
    wait_for(job / "checkpoints" / "periodic.ckpt", process)
    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGUSR1, stderr
    assert record.read_text().split() == ["requeue", "4242"]
    assert not (job / "checkpoints" / "last.ckpt").exists()  # stopped in epoch 1
    stopped_at = load(job / "checkpoints" / "interrupted.ckpt")["global_step"]
    finish(start(*command, env={**slurm, "SLURM_RESTART_COUNT": "1"}))
    got = json.loads((job / "metrics.json").read_text())
    expected = json.loads((straight / "metrics.json").read_text())
    assert [row["epoch"] for row in got["history"]] == [1, 2] and stopped_at > 0
    for row, reference in zip(got["history"], expected["history"], strict=True):
        for key in ("train/loss", "test/loss", "val/error", "progress/steps", "progress/samples"):
            assert row[key] == pytest.approx(reference[key], rel=1e-6), key


def test_periodic_checkpoints_by_the_clock_are_written_within_the_epoch(make_cfg, tmp_path: Path) -> None:
    """checkpoint.every_n_minutes: periodic.ckpt written by time within the epochs (0.0001 min: at the first step
    after each 6 ms), holding the place in the epoch that resume= goes on from."""
    train(make_cfg(*RUN, "checkpoint.every_n_minutes=0.0001", "max_epochs=1"))
    periodic = load(tmp_path / "run" / "checkpoints" / "periodic.ckpt")
    (loader,) = periodic["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert 1 <= periodic["global_step"] <= 16 and loader == {"epoch": 0, "steps_done": periodic["global_step"]}


def test_a_float64_run_goes_on_in_float64(make_cfg, tmp_path: Path) -> None:
    """The checkpoint's float64 weights reach the resumed module whole (not through float32): two epochs run as
    one and one more equal two straight ones to float64's last digits."""
    float64 = ["trainer.precision=64-true", "logger=none", "optimizer=momentum"]
    straight = train(make_cfg(*float64, "max_epochs=2", run_dir=tmp_path / "straight"))
    first = tmp_path / "first"
    train(make_cfg(*float64, "max_epochs=1", run_dir=first))
    resumed = train(
        resumed_config(make_cfg(*float64, "max_epochs=2", f"resume={first}"), [f"resume={first}", "max_epochs=2"])
    )
    assert resumed["final"]["test/loss"] == pytest.approx(straight["final"]["test/loss"], rel=1e-13)
    got, expected = (load(d / "checkpoints" / "last.ckpt")["state_dict"] for d in (first, tmp_path / "straight"))
    for name, value in expected.items():
        assert got[name].dtype == torch.float64
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-13, msg=name)
