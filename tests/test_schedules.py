"""The learning rate per epoch: linear warm-up, step decay and reduce-on-plateau as asked, straight and across
`resume=` (a run stopped after 3 of 6 epochs and resumed equals the 6-epoch run)."""

from pathlib import Path

import pytest

from descent.resume import resumed_config
from descent.training import train

LR = 0.1


def straight_and_resumed(make_cfg, tmp_path: Path, *overrides: str) -> tuple[list[dict], list[dict]]:
    straight = train(make_cfg("max_epochs=6", f"optimizer.lr={LR}", "logger=none", *overrides))["history"]
    train(make_cfg("max_epochs=3", f"optimizer.lr={LR}", "logger=none", *overrides, run_dir=tmp_path / "first"))
    cfg = make_cfg("max_epochs=6", *overrides, f"resume={tmp_path / 'first'}", run_dir=tmp_path / "x")
    resumed = train(resumed_config(cfg, [f"resume={tmp_path / 'first'}", "max_epochs=6"]))["history"]
    assert [row["epoch"] for row in resumed] == [1, 2, 3, 4, 5, 6]
    for before, after in zip(straight, resumed, strict=True):  # the same run, not only the same rates
        assert after["val/loss"] == pytest.approx(before["val/loss"], rel=1e-6)
    return straight, resumed


def rates(history: list[dict]) -> list[float]:
    return [row["progress/lr"] for row in history]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["warmup_epochs=2"], [LR / 3, 2 * LR / 3, LR, LR, LR, LR]),
        (["warmup_epochs=2", "scheduler=exponential", "scheduler.gamma=0.5"],
         [LR / 3, 2 * LR / 3, LR, LR / 2, LR / 4, LR / 8]),
        (["scheduler=step", "scheduler.step_size=2"], [LR, LR, LR / 10, LR / 10, LR / 100, LR / 100]),
        (["warmup_epochs=1", "scheduler=step", "scheduler.step_size=2"], [LR / 2, LR, LR, LR / 10, LR / 10, LR / 100]),
    ],
    ids=["warmup", "warmup-exponential", "step", "warmup-step"],
)  # fmt: skip
def test_each_epoch_trains_at_the_rate_asked_for_straight_and_resumed(make_cfg, tmp_path, overrides, expected) -> None:
    straight, resumed = straight_and_resumed(make_cfg, tmp_path, *overrides)
    assert rates(straight) == pytest.approx(expected, rel=1e-9)
    assert rates(resumed) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("monitor", ["val/loss", "val/acc"])
def test_reduce_on_plateau_cuts_the_rate_after_an_evaluation_without_improvement(make_cfg, tmp_path, monitor) -> None:
    """patience 0, threshold 0: epoch k + 1 trains at half epoch k's rate when `monitor` at epoch k is no better than
    the best before it, in the monitor's direction (val/acc: higher). Checked against the run's own figures."""
    overrides = ["scheduler=plateau", "scheduler.patience=0", "scheduler.factor=0.5", "scheduler.threshold=0",
                 f"monitor={monitor}", "optimizer.lr=0.5", "model.net.dropout=0.5"]  # fmt: skip
    straight, resumed = straight_and_resumed(make_cfg, tmp_path, *overrides)
    sign = -1 if monitor == "val/acc" else 1
    expected, best = [0.5, 0.5], sign * straight[0][monitor]  # epoch 1's figure has nothing before it to beat
    for row in straight[1:5]:  # epochs 2 to 5 decide the rates of epochs 3 to 6
        figure = sign * row[monitor]
        expected.append(expected[-1] if figure < best else expected[-1] / 2)
        best = min(best, figure)
    assert rates(straight) == pytest.approx(expected) and rates(resumed) == pytest.approx(expected)
    assert min(expected) < 0.5  # a plateau was met: the rule was exercised, not only the constant rate
