"""Epochs of hours: the evaluation kept to what fits (a fixed subset of the training set, every n epochs, never a
silently partial set), and a line of progress every few minutes in a log file."""

import csv
import json
import logging
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import compose_eval

from descent.config import check_config
from descent.data.base import TRAIN_SUBSET_STREAM
from descent.errors import DescentError
from descent.evaluation import evaluate
from descent.report import write_report
from descent.sweep import write_summary
from descent.training import build, train

SUBSET_LINE = (
    "train/ figures: a fixed subset of 120 of the 500 training samples (eval.train_samples), not the whole set"
)


def test_the_training_figures_on_a_fixed_subset_are_those_of_its_samples(make_cfg, tmp_path: Path, caplog) -> None:
    """eval.train_samples=120 of N=500: train/loss and train/error are those of the weights over those 120 samples
    (the same ones every epoch), the run says so before training, and val/test stay whole."""
    cfg = make_cfg("max_epochs=2", "logger=none", "eval.train_samples=120", "trainer.precision=64-true")
    with caplog.at_level(logging.INFO):
        result = train(cfg)
    assert SUBSET_LINE in [record.getMessage() for record in caplog.records]
    whole = train(make_cfg("max_epochs=2", "logger=none", "trainer.precision=64-true", run_dir=tmp_path / "whole"))
    assert result["final"]["val/loss"] == pytest.approx(whole["final"]["val/loss"], rel=1e-12)
    data, model = build(cfg)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    images, labels = data.sets["train"]
    rows = torch.randperm(500, generator=torch.Generator().manual_seed(cfg.data.split_seed + TRAIN_SUBSET_STREAM))
    rows = rows[:120].sort().values
    net = model.net.double().eval()
    with torch.no_grad():
        logits = net(images.normalised(rows).double())
    expected = F.cross_entropy(logits, labels[rows]).item()  # inputs normalised in float32, as the run reads them
    assert result["final"]["train/loss"] == pytest.approx(expected, rel=1e-6)
    assert result["final"]["train/error"] == pytest.approx((logits.argmax(1) != labels[rows]).double().mean().item())
    assert result["final"]["train/loss"] != pytest.approx(whole["final"]["train/loss"], rel=1e-6)


def test_figures_not_over_whole_sets_are_said_where_the_figures_are_read(make_cfg, tmp_path: Path, caplog) -> None:
    """A run's train/ figures on a fixed subset: the line the run says before training is kept in its metrics.json,
    said again by src/eval.py (whose train figures are of the same subset) and in its metrics.json, and under the
    sweep summary's and the report's tables, in summary.csv's `partial` column and under the console's final
    table, for that run alone; a run over whole sets has none of it."""
    sweep, tables = tmp_path / "sweep", {}
    for name, settings in (("subset", ["eval.train_samples=120"]), ("whole", [])):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            train(make_cfg("max_epochs=1", "logger=none", *settings, run_dir=sweep / name))
        (tables[name],) = [r.getMessage() for r in caplog.records if "final (epoch 1)" in r.getMessage()]
    subset, whole = (json.loads((sweep / name / "metrics.json").read_text()) for name in ("subset", "whole"))
    assert subset["partial"] == [SUBSET_LINE] and "partial" not in whole
    # The console's final table too, at the end of the run, far below the line said before training.
    assert tables["subset"].endswith(f"\nnot over whole sets: {SUBSET_LINE}")
    assert "not over whole sets" not in tables["whole"] and tables["whole"].split("\n")[-1].startswith("best (")
    ckpt = sweep / "subset" / "checkpoints" / "last.ckpt"
    with caplog.at_level(logging.INFO):
        evaluate(compose_eval(f"ckpt_path={ckpt}", f"run_dir={tmp_path / 'e'}"))
    assert SUBSET_LINE in [record.getMessage() for record in caplog.records]
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["partial"] == [SUBSET_LINE]
    section = f"## Figures not over whole sets\n\n- `subset`: {SUBSET_LINE}\n"
    write_summary(sweep)
    assert (sweep / "summary.md").read_text().endswith(f"\n\n{section}")
    with open(sweep / "summary.csv", newline="") as file:
        rows = {row["run"]: row["partial"] for row in csv.DictReader(file) if row["row"] == "run"}
    assert rows == {"subset": SUBSET_LINE, "whole": ""}
    report = write_report(sweep)
    assert section + "\n![train and test curves]" in report and "whole`:" not in report


@pytest.mark.parametrize("value", [0.5, 3, 1])  # 1, a whole number, is one chunk to Lightning, not the whole set
def test_a_partial_evaluation_is_refused_and_the_ways_to_spend_less_are_named(make_cfg, value: float) -> None:
    with pytest.raises(DescentError, match=rf"trainer.limit_val_batches={value} is not allowed: .*eval.train_samples"):
        check_config(make_cfg(f"trainer.limit_val_batches={value}"))
    check_config(make_cfg("trainer.limit_val_batches=1.0"))  # the whole set, as in conf/trainer/


def test_evaluating_every_n_epochs_keeps_best_checkpoint_and_noise(make_cfg, tmp_path: Path) -> None:
    """check_val_every_n_epoch=2 with the gradient-noise measurement and early stopping: epochs 2 and 4 evaluated,
    best.ckpt one of them, the noise figures beside them."""
    cfg = make_cfg("max_epochs=4", "trainer.check_val_every_n_epoch=2", "noise.enabled=true", "noise.batch_size=32",
                   "noise.samples=4", "callbacks=early_stopping", "logger=none")  # fmt: skip
    result = train(cfg)
    assert [row["epoch"] for row in result["history"]] == [2, 4]
    assert all(row["noise/B_simple"] > 0 for row in result["history"])
    assert load_epoch(tmp_path / "run" / "checkpoints" / "best.ckpt") in (2, 4)


def load_epoch(path: Path) -> int:
    return torch.load(path, weights_only=True)["epoch"]


def test_a_log_file_gets_a_progress_line_every_few_minutes(
    make_cfg, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No terminal (stderr a pipe, as under SLURM): with progress_every_minutes tiny, lines within each epoch name
    the steps done of its total, the samples a second and the time left (Hydra's handlers write these records to the
    console and train.log; test_cli.py runs the command)."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # as under `pytest -s` at a terminal, too
    cfg = make_cfg("batch_size=4", "max_epochs=1", "logger=none", "progress_every_minutes=0.0001")
    with caplog.at_level(logging.INFO, logger="descent"):
        history = train(cfg)["history"]
    line = re.compile(r"epoch 1: step (\d+) of 125 \((\d+)%\), (\d+) samples/s, about (.+) left in the epoch$")
    found = [line.search(record.getMessage()) for record in caplog.records]
    steps = [int(match[1]) for match in found if match]
    assert len(steps) >= 3 and steps == sorted(steps) and steps[-1] <= 125, caplog.text
    assert history
