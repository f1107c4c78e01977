"""One Lightning batch is one optimizer step: what Lightning users reach for works on real runs.

Progress bar, the per-step loss on TensorBoard's step axis, gradient clipping, max_steps, limit_train_batches,
callbacks (their per-batch hooks once per optimizer step), and the debug group.
"""

import json
import logging
import os
import select
import subprocess
import sys
from pathlib import Path

import lightning
import pytest
import torch
from helpers import ROOT, compose_train, environment, events, points, small
from lightning.pytorch.plugins.precision import MixedPrecision

from descent.checkpoints import BackgroundCheckpointIO
from descent.training import build, build_trainer, train

N_TRAIN = 500  # the fixture's 600 training images less data.val_size=100


class StepCounter(lightning.Callback):
    """Counts Lightning's per-batch hooks and the optimizer steps taken by the time each batch ends."""

    def __init__(self) -> None:
        self.starts, self.ends, self.steps_at_end = 0, 0, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.starts += 1

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.ends += 1
        self.steps_at_end.append(trainer.global_step)


def fit(cfg, *callbacks: lightning.Callback):
    """`train`'s build and trainer, with extra callbacks; returns the module after fit."""
    data, model = build(cfg)
    trainer = build_trainer(cfg, Path(cfg.run_dir), callbacks=callbacks)
    trainer.fit(model, datamodule=data)
    return model, trainer


@pytest.mark.parametrize(
    ("overrides", "steps_per_epoch"), [(["batch_size=64"], 8), (["optimizer=gd", "chunk_size=64"], 1)]
)
def test_a_callback_sees_one_batch_per_optimizer_step(make_cfg, overrides: list[str], steps_per_epoch: int) -> None:
    counter = StepCounter()
    _, trainer = fit(make_cfg(*overrides, "logger=none"), counter)
    assert counter.starts == counter.ends == 2 * steps_per_epoch  # GD: one batch (its 8 chunks) an epoch
    assert counter.steps_at_end == list(range(1, 2 * steps_per_epoch + 1))
    assert trainer.global_step == 2 * steps_per_epoch


def test_the_step_loss_is_on_the_step_axis_every_log_every_n_steps(make_cfg, tmp_path: Path) -> None:
    result = train(make_cfg("batch_size=32", "trainer.log_every_n_steps=5", "max_epochs=2"))
    accumulator = events(tmp_path / "run", scalars=0)
    step_loss = accumulator.Scalars("train/step_loss")
    # 16 steps an epoch, two epochs; each point is at the steps taken before its minibatch's loss was measured
    # (Lightning's step counter): the 5th step's loss is at 4.
    assert [event.step for event in step_loss] == list(range(4, 32, 5))
    assert all(0 < event.value < 5 for event in step_loss)
    assert [event.step for event in accumulator.Scalars("train/loss")] == [1, 2]  # per-epoch: the epoch axis
    assert [row["progress/steps"] for row in result["history"]] == [16, 32]


MIXED = "{_target_: lightning.pytorch.plugins.precision.MixedPrecision, precision: bf16-mixed, device: cpu}"


@pytest.mark.parametrize("plugins", [f"[{MIXED}]", MIXED], ids=["a list", "one"])
def test_trainer_plugins_reach_lightning_beside_descents_checkpoint_io(make_cfg, tmp_path: Path, plugins) -> None:
    """`trainer.plugins` (a list or one plugin, as Lightning takes them; here a precision plugin in place of the
    `precision` flag) joins the plugin descent gives itself."""
    cfg = make_cfg(f"+trainer.plugins={plugins}", "trainer.precision=null", "logger=none")
    trainer = build_trainer(cfg, tmp_path / "run")
    assert isinstance(trainer.precision_plugin, MixedPrecision) and trainer.precision == "bf16-mixed"
    assert isinstance(trainer.strategy.checkpoint_io, BackgroundCheckpointIO)


def test_log_every_n_steps_0_logs_no_step_loss_as_in_lightning(make_cfg, tmp_path: Path) -> None:
    """Lightning's log_every_n_steps=0 turns the per-step logging off; the per-epoch figures are logged still."""
    train(make_cfg("trainer.log_every_n_steps=0", "max_epochs=1"))
    logged = points(tmp_path / "run")
    assert "train/step_loss" not in logged and [step for step, _ in logged["train/loss"]] == [1]


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_clips_each_step_as_lightning_would(make_cfg, algorithm: str) -> None:
    """One SGD step of lr 1 with the gradient clipped to 0.01: the weights move by the clipped gradient."""
    cfg = make_cfg(
        "optimizer.lr=1.0", "trainer.max_steps=1", "logger=none", "trainer.gradient_clip_val=0.01",
        f"trainer.gradient_clip_algorithm={algorithm}",
    )  # fmt: skip
    data, model = build(cfg)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    build_trainer(cfg, Path(cfg.run_dir)).fit(model, datamodule=data)
    moved = before - torch.cat([p.detach().flatten() for p in model.parameters()])
    if algorithm == "norm":
        assert float(moved.norm()) == pytest.approx(0.01, rel=1e-4)
    else:
        assert float(moved.abs().max()) == pytest.approx(0.01, rel=1e-4)


def test_max_steps_stops_mid_epoch_and_evaluates_the_weights_it_ends_with(make_cfg) -> None:
    result = train(make_cfg("batch_size=64", "trainer.max_steps=5", "max_epochs=10", "logger=none"))
    assert [(row["epoch"], row["progress/steps"], row["progress/samples"]) for row in result["history"]] == [
        (1, 5, 320)
    ]


@pytest.mark.parametrize(
    ("settings", "reason", "said"),
    [
        (
            ["+trainer.max_time={seconds: 1}"],
            "max_time",
            "ended at its time limit (1 s of fit: trainer.max_time, Lightning's Timer), in epoch ",
        ),
        (
            ["+callbacks.stop._target_=helpers.StopInEpoch", "+callbacks.stop.epoch=2"],
            "stopped",
            "ended in epoch 2 of max_epochs=1000: a callback set trainer.should_stop",
        ),
        (  # in the first epoch, whose index Lightning's stopped_epoch gives as 0
            ["callbacks=early_stopping", "+callbacks.early_stopping.stopping_threshold=0.99"],
            "early_stopping",
            "ended early after epoch 1: Stopping threshold reached",
        ),
    ],
    ids=["max_time", "a callback", "early stopping in epoch 1"],
)
def test_a_run_stopped_by_max_time_or_a_callback_says_why_not_max_epochs(
    make_cfg, settings: list[str], reason: str, said: str
) -> None:
    """Lightning's max_time (here in its dict form) and a callback that sets should_stop end a run mid-epoch, as
    max_steps does: the weights it ends with are evaluated, and metrics.json and the console say what ended it."""
    result = train(make_cfg(*settings, "max_epochs=1000", "batch_size=16", "logger=none"))
    ended, last = result["ended"], result["history"][-1]
    assert (ended["reason"], ended["message"][: len(said)]) == (reason, said)
    assert ended["epoch"] == last["epoch"] < 1000 and ended["step"] == last["progress/steps"]
    assert ended["message"].endswith(f"in epoch {last['epoch']}") or reason != "max_time"


def test_an_epoch_left_unevaluated_keeps_its_weights_in_last_ckpt_and_says_its_figures_are_older(
    make_cfg, tmp_path: Path
) -> None:
    """With trainer.check_val_every_n_epoch=2, epoch 3 is not evaluated, and Lightning's default would not write
    last.ckpt at its end either: where max_steps (or a callback) stops the run in it, or where it is the last,
    last.ckpt holds the weights the run ended with, and the run says its figures are epoch 2's."""
    stopped = train(make_cfg("trainer.check_val_every_n_epoch=2", "trainer.max_steps=20", "max_epochs=4",
                             "batch_size=64", "logger=none"))  # fmt: skip
    assert [(row["epoch"], row["progress/steps"]) for row in stopped["history"]] == [(2, 16)]
    assert stopped["ended"] == {
        "reason": "max_steps",
        "epoch": 3,
        "step": 20,
        "message": "ended at trainer.max_steps=20, in epoch 3, at step 20; its figures are epoch 2's, the last "
        "evaluated (trainer.check_val_every_n_epoch=2), and last.ckpt holds the weights it ended with, not evaluated",
    }
    kept = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert (kept["global_step"], kept["epoch"]) == (20, 3)
    ended = train(make_cfg("trainer.check_val_every_n_epoch=2", "max_epochs=3", "batch_size=64", "logger=none",
                           run_dir=tmp_path / "three"))  # fmt: skip
    assert ended["ended"]["message"].startswith("ended after max_epochs=3, at step 24; its figures are epoch 2's")
    kept = torch.load(tmp_path / "three" / "checkpoints" / "last.ckpt", weights_only=True)
    assert (kept["global_step"], kept["epoch"]) == (24, 3)


def test_limit_train_batches_takes_that_many_steps_an_epoch(make_cfg) -> None:
    result = train(make_cfg("batch_size=64", "trainer.limit_train_batches=3", "logger=none"))
    assert [row["progress/steps"] for row in result["history"]] == [3, 6]
    assert [row["progress/samples"] for row in result["history"]] == [192, 384]


def test_early_stopping_stops_when_monitor_stops_improving(make_cfg) -> None:
    result = train(make_cfg("callbacks=early_stopping", "callbacks.early_stopping.patience=1", "optimizer.lr=1e-12",
                            "max_epochs=10", "logger=none"))  # fmt: skip
    assert len(result["history"]) == 2  # epoch 1 sets val/error, epoch 2 does not improve on it: stop


def test_the_lr_monitor_logs_the_learning_rate(make_cfg, tmp_path: Path) -> None:
    train(make_cfg("callbacks=lr_monitor", "scheduler=exponential", "scheduler.gamma=0.5", "batch_size=100",
                   "trainer.log_every_n_steps=1"))  # fmt: skip
    accumulator = events(tmp_path / "run", scalars=0)
    (tag,) = [tag for tag in accumulator.Tags()["scalars"] if tag.startswith("lr-")]
    rates = {event.step: event.value for event in accumulator.Scalars(tag)}
    assert rates[1] == pytest.approx(0.05) and rates[max(rates)] == pytest.approx(0.025)  # halved after epoch 1


def read_terminal(args: list[str], timeout_s: float = 240) -> str:
    """src/train.py with its output on a pseudo-terminal, as a user at a terminal sees it."""
    primary, secondary = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "src/train.py", *args], cwd=ROOT, stdin=secondary, stdout=secondary, stderr=secondary,
        env=environment(COLUMNS="120"),
    )  # fmt: skip
    os.close(secondary)
    output = b""
    while True:
        ready, _, _ = select.select([primary], [], [], timeout_s)
        assert ready, "no output"
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=timeout_s) == 0, output.decode(errors="replace")
    return output.decode(errors="replace")


@pytest.mark.slow
def test_a_terminal_gets_lightnings_progress_bar(idx_dir: Path, tmp_path) -> None:
    """Where the output is not a terminal (a log file), no bar and one line an epoch: test_cli's README command."""
    shown = read_terminal([*small(idx_dir), "logger=none", f"hydra.run.dir={tmp_path / 'tty'}"])
    assert "Epoch 1/2" in shown and "Epoch 2/2" in shown  # Lightning's (Rich) bar, epochs from 1 as descent's
    assert "8/8" in shown  # steps of the epoch's total
    assert "0:00:00 • " in shown  # time spent and time left


@pytest.mark.parametrize("debug", ["fast", "overfit", "profile"])
def test_the_debug_options_run_as_lightning_users_know_them(
    idx_dir: Path, tmp_path: Path, debug: str, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture
) -> None:
    """`python src/train.py debug=...` composed as its command line composes it, on the CPU."""
    with caplog.at_level(logging.INFO):
        train(compose_train(*small(idx_dir), f"debug={debug}", "trainer=cpu", f"run_dir={tmp_path}"))
    captured = capfd.readouterr()
    output = captured.out + captured.err + caplog.text
    if debug == "fast":
        result = json.loads((tmp_path / "metrics.json").read_text())
        (row,) = result["history"]
        assert row["progress/steps"] == 1  # one step, then one chunk of each set
        assert not (tmp_path / "checkpoints").exists()  # fast_dev_run writes no checkpoints
        line = (  # said before training and under the final table, kept in metrics.json
            "trainer.fast_dev_run=True: 1 step(s), and each figure is of its set's first 1 chunk(s), not of the "
            "whole set unless it fits in them"
        )
        assert result["partial"] == [line] and f"not over whole sets: {line}" in caplog.text
    elif debug == "profile":
        assert "FIT Profiler Report" in output and "run_training_batch" in output
    else:
        history = json.loads((tmp_path / "metrics.json").read_text())["history"]
        assert len(history) == 2  # the command line's max_epochs wins over the debug file's 20
        losses = [
            value
            for _, value in sorted((e.step, e.value) for e in events(tmp_path, scalars=0).Scalars("train/step_loss"))
        ]
        assert losses[-1] < losses[0] / 10  # the same few steps, learned by heart
