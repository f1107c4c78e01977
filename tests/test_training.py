"""End-to-end `train(cfg)` in-process on small IDX files: steps, per-epoch figures, checkpoints, resuming."""

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from descent.data.idx import IdxData
from descent.nets import MLP
from descent.training import train

N_TRAIN = 500  # the fixture's 600 training images less data.val_size=100


@pytest.mark.parametrize(
    ("optimizer", "batch_size", "steps_per_epoch"),
    [
        ("gd", None, 1),
        ("sgd", 64, math.ceil(N_TRAIN / 64)),
        ("sgd", "full", 1),
    ],
)
def test_gd_steps_once_per_epoch_and_sgd_ceil_n_over_b_times(
    make_cfg, optimizer: str, batch_size: int | str | None, steps_per_epoch: int
) -> None:
    overrides = [f"optimizer={optimizer}"] + ([f"batch_size={batch_size}"] if batch_size else [])
    result = train(make_cfg(*overrides, "max_epochs=3"))
    history = result["history"]
    assert [row["progress/steps"] for row in history] == [steps_per_epoch * k for k in (1, 2, 3)]
    assert [row["progress/samples"] for row in history] == [N_TRAIN * k for k in (1, 2, 3)]
    assert history[-1]["train/error"] < history[0]["train/error"] or history[-1]["train/error"] == 0


def test_gd_ignores_a_batch_size_given_beside_it_and_says_so(make_cfg, caplog) -> None:
    result = train(make_cfg("optimizer=gd", "batch_size=64"))
    assert [row["progress/steps"] for row in result["history"]] == [1, 2]
    assert "full-batch SGD takes each step over all N training samples: ignoring batch_size=64" in caplog.text


def test_sgd_learns_and_writes_metrics_checkpoints_and_config(make_cfg, tmp_path: Path) -> None:
    result = train(make_cfg("optimizer=sgd", "batch_size=32", "max_epochs=3"))
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "metrics.json").read_text()) == result
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    final, best = result["final"], result["best"]
    assert final["epoch"] == 3 and final["test/acc"] > 0.9  # the bands are easy to learn
    assert best["val/error"] == min(row["val/error"] for row in result["history"])
    for name in ("train", "val", "test"):
        assert final[f"{name}/acc"] == pytest.approx(1 - final[f"{name}/error"])
    assert final["gap/loss"] == pytest.approx(final["test/loss"] - final["train/loss"])
    assert final["gap/error"] == pytest.approx(final["test/error"] - final["train/error"])


def test_training_figures_are_a_full_forward_pass_with_the_end_of_epoch_weights(make_cfg, tmp_path, idx_dir) -> None:
    """Not the running mean of minibatch losses: recompute them from last.ckpt, independently of the module."""
    cfg = make_cfg("optimizer=sgd", "batch_size=16", "max_epochs=2", "model.net.dropout=0.5")
    final = train(cfg)["final"]
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    net = MLP((1, 28, 28), 10, [32], "relu", 0.5)
    net.load_state_dict({key.removeprefix("net."): value for key, value in state.items()})
    net.eval()
    data = IdxData(dataset="MNIST", data_dir=str(idx_dir), download=False, val_size=100)
    data.setup()
    for name in ("train", "val", "test"):
        images, y = data.sets[name]
        with torch.no_grad():
            logits = net(images.normalised())
        assert final[f"{name}/loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
        assert final[f"{name}/error"] == pytest.approx((logits.argmax(1) != y).float().mean().item(), abs=1e-9)


def test_resuming_a_run_continues_to_the_same_result(make_cfg, tmp_path: Path) -> None:
    from descent.resume import resumed_config

    straight = train(make_cfg("max_epochs=3", run_dir=tmp_path / "straight"))
    train(make_cfg("max_epochs=1", run_dir=tmp_path / "first"))
    cfg = make_cfg("max_epochs=3", f"resume={tmp_path / 'first'}", run_dir=tmp_path / "elsewhere")
    resumed = train(resumed_config(cfg, [f"resume={tmp_path / 'first'}", "max_epochs=3"]))
    assert [row["epoch"] for row in resumed["history"]] == [1, 2, 3]
    for key in ("train/loss", "test/loss", "progress/steps"):
        assert resumed["final"][key] == pytest.approx(straight["final"][key], rel=1e-6)


def test_a_sanity_check_before_training_is_not_counted_as_an_epoch(make_cfg) -> None:
    result = train(make_cfg("trainer.num_sanity_val_steps=2"))
    assert [row["epoch"] for row in result["history"]] == [1, 2]


def test_training_seconds_count_every_epoch_when_only_some_are_evaluated(make_cfg, monkeypatch) -> None:
    import itertools
    import types

    import descent.clock

    # A clock that advances one second each time the module's clock reads it: each epoch's training lasts 1 s.
    ticks = itertools.count()
    monkeypatch.setattr(descent.clock, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    history = train(make_cfg("max_epochs=4", "trainer.check_val_every_n_epoch=2"))["history"]
    assert [(row["epoch"], row["time/train_s"]) for row in history] == [(2, 2.0), (4, 4.0)]


def test_debug_overfit_says_its_figures_are_of_its_chunks_not_the_whole_sets(make_cfg, caplog) -> None:
    """Lightning's overfit_batches limits the evaluation to as many chunks as it trains steps: the figures are
    then of those chunks, and the run says so before training (descent refuses trainer.limit_val_batches itself)."""
    cfg = make_cfg("debug=overfit", "max_epochs=2", "trainer.overfit_batches=2", "batch_size=40", "chunk_size=40")
    with caplog.at_level(logging.INFO):
        result = train(cfg)
    said = [record.getMessage() for record in caplog.records]
    line = (
        "trainer.overfit_batches=2: the same first steps every epoch, and each figure is of as many chunks of its "
        "set, not of the whole set"
    )
    assert line in said
    assert [row["progress/steps"] for row in result["history"]] == [2, 4]
    assert result["partial"] == [line]  # and metrics.json, which the sweep summary and the report read
