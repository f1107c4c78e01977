"""Metrics from the config (conf/metrics/, torchmetrics by `_target_`): exact over whole sets and ranks, logged
everywhere, and `monitor` that picks the best epoch in the metric's own direction."""

import csv
import json
import logging
from pathlib import Path

import pytest
import torch
from helpers import compose_config, compose_train, options, scalars
from hydra.utils import instantiate
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_calibration_error,
    multiclass_f1_score,
)

from descent.data.idx import IdxData
from descent.nets import MLP
from descent.training import train

METRICS = "metrics=[macro_f1,per_class_acc,calibration_error,top2_acc]"


def logits_of_last_checkpoint(run_dir: Path, idx_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each whole set's logits and labels at the last epoch's weights, recomputed apart from the module."""
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    net = MLP((1, 28, 28), 10, [32])
    net.load_state_dict({key.removeprefix("net."): value for key, value in state.items() if key.startswith("net.")})
    net.eval()
    data = IdxData(dataset="MNIST", data_dir=str(idx_dir), download=False, val_size=100)
    data.setup()
    with torch.no_grad():
        return {name: (net(images.normalised()), y) for name, (images, y) in data.sets.items()}


def test_configured_metrics_are_those_of_the_whole_sets_in_any_chunks(make_cfg, tmp_path: Path, idx_dir) -> None:
    """Chunks of 7 (the last one smaller): torchmetrics' accumulated states give the whole set's figure, in
    metrics.json and in TensorBoard's event files."""
    cfg = make_cfg(METRICS, "chunk_size=7", "optimizer.lr=0.005", "logger=tensorboard")
    final = train(cfg)["final"]
    sets = logits_of_last_checkpoint(tmp_path / "run", idx_dir)
    for name, (logits, y) in sets.items():
        expected = {
            "macro_f1": multiclass_f1_score(logits, y, 10, average="macro"),
            "calibration_error": multiclass_calibration_error(logits.softmax(1), y, 10, n_bins=15),
            "top2_acc": multiclass_accuracy(logits, y, 10, top_k=2, average="micro"),
        }
        for metric, value in expected.items():
            assert final[f"{name}/{metric}"] == pytest.approx(float(value), abs=1e-6), (name, metric)
        per_class = multiclass_accuracy(logits, y, 10, average="none")
        assert [final[f"{name}/per_class_acc/{k}"] for k in range(10)] == pytest.approx(per_class.tolist(), abs=1e-6)
    assert 0 < final["test/macro_f1"] < 1 and final["test/top2_acc"] > final["test/acc"]
    assert final["gap/macro_f1"] == pytest.approx(final["test/macro_f1"] - final["train/macro_f1"])
    logged = scalars(tmp_path / "run")
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    for key in ("val/macro_f1", "test/per_class_acc/3", "train/calibration_error"):
        assert logged[key] == pytest.approx([row[key] for row in history], rel=1e-6)


def test_a_metric_better_higher_picks_the_epoch_where_it_is_highest(make_cfg, tmp_path: Path) -> None:
    result = train(make_cfg("metrics=[macro_f1]", "monitor=val/macro_f1", "max_epochs=4", "optimizer.lr=0.003"))
    history = result["history"]
    highest = max(history, key=lambda row: row["val/macro_f1"])
    assert result["mode"] == "max" and result["best"] == highest
    assert highest != min(history, key=lambda row: row["val/macro_f1"])  # the figures moved: the choice means something
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=False)
    assert best["epoch"] == highest["epoch"]  # counted from 1, as everywhere in descent


@pytest.mark.parametrize(
    ("monitor", "mode", "direction"),
    [("val/error", "min", "minimize"), ("val/acc", "max", "maximize"), ("val/macro_f1", "max", "maximize"),
     ("val/calibration_error", "min", "minimize")],
)  # fmt: skip
def test_early_stopping_and_the_search_follow_the_monitors_direction(monitor: str, mode: str, direction: str) -> None:
    cfg = compose_config("train", f"monitor={monitor}", "metrics=[macro_f1,calibration_error]",
                         "callbacks=early_stopping", "hparams_search=optuna", return_hydra_config=True)  # fmt: skip
    assert instantiate(cfg.callbacks.early_stopping).mode == mode
    assert cfg.hydra.sweeper.direction == direction


def test_a_sweep_summary_shows_the_metric_and_sorts_by_its_direction(
    make_cfg, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two jobs of `-m optimizer.lr=0.001,0.05 metrics=[macro_f1] monitor=val/macro_f1`, each in its job dir with
    the overrides Hydra saves there, then the summary the sweep writes (test_sweep.py runs real sweeps)."""
    from descent.sweep import write_summary

    for lr in ("0.001", "0.05"):
        overrides = [f"optimizer.lr={lr}", "metrics=[macro_f1]", "monitor=val/macro_f1"]
        job = tmp_path / f"optimizer.lr:{lr}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
        with caplog.at_level(logging.INFO, logger="descent"):
            train(make_cfg(*overrides, run_dir=job))
    write_summary(tmp_path)
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    configurations = [row for row in rows if row["row"] == "configuration"]
    objectives = [float(row["best val/macro_f1"]) for row in configurations]
    assert objectives == sorted(objectives, reverse=True) and objectives[0] > objectives[1]
    assert all(row["final test/macro_f1"] for row in configurations)
    assert "(higher is better)" in (tmp_path / "summary.md").read_text()
    assert "val macro_f1" in caplog.text  # the console's table


@pytest.mark.slow
def test_configured_metrics_over_two_ddp_processes_equal_one_process(make_cfg, ddp_runs: dict[str, Path]) -> None:
    """torchmetrics gathers the ranks' states: the same figures as one process in one chunk, chunks of 33 on each
    rank (ddp_runs.DDP_RUNS["metrics"])."""
    from ddp_runs import DDP_RUNS

    one = train(make_cfg(*DDP_RUNS["metrics"], "chunk_size=full"))["final"]
    two = json.loads((ddp_runs["metrics"] / "metrics.json").read_text())["final"]
    for key, value in one.items():
        if key.startswith(("train/", "val/", "test/", "gap/")):
            assert two[key] == pytest.approx(value, abs=1e-9), key


def test_every_shipped_metric_composes_and_builds(make_cfg) -> None:
    from descent.training import build

    for option in options("metrics"):
        cfg = make_cfg(f"metrics={option}")
        _, model = build(cfg)
        names = set((compose_train(f"metrics={option}").get("metrics") or {}).keys())
        assert set(model.set_metrics["val_set"].keys()) == names
