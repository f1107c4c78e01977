"""Real data: Fashion-MNIST from Debian's dataset-fashion-mnist package, through the real loading code."""

from pathlib import Path

import pytest
from helpers import FASHION_MNIST, compose_train

from descent.training import train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
        reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
    ),
]


def test_two_epochs_of_sgd_reach_84_percent_test_accuracy(tmp_path: Path) -> None:
    cfg = compose_train(
        "data=fashion_mnist",
        f"data.data_dir={tmp_path / 'no-data-here'}",
        "data.download=false",
        "optimizer=sgd",
        "batch_size=64",
        "max_epochs=2",
        "trainer=cpu",
        "logger=none",
        f"run_dir={tmp_path}",
    )
    result = train(cfg)
    assert [row["progress/steps"] for row in result["history"]] == [860, 1720]  # ceil(55,000 / 64) a step
    assert result["final"]["test/acc"] >= 0.84


def test_the_cnn_trains_on_fashion_mnist_with_sgd_and_gd(tmp_path: Path) -> None:
    """model=cnn end to end on the real files: one epoch of SGD with momentum, two exact GD steps in chunks (on a
    subset of 5,000 of the files' training images, the rest as they are)."""
    common = ["data=fashion_mnist", f"data.data_dir={tmp_path / 'no-data-here'}", "data.download=false",
              "model=cnn", "trainer=cpu", "logger=none"]  # fmt: skip
    sgd = compose_train(*common, "optimizer=momentum", "batch_size=64", "max_epochs=1", f"run_dir={tmp_path / 'sgd'}")
    gd = compose_train(*common, "optimizer=gd", "data.train_size=5000", "max_epochs=2", f"run_dir={tmp_path / 'gd'}")
    result = train(sgd)
    assert result["final"]["progress/steps"] == 860
    assert result["final"]["test/acc"] >= 0.80  # 83.3% measured (seed 0)
    history = train(gd)["history"]
    assert [row["progress/steps"] for row in history] == [1, 2]
    assert history[1]["train/loss"] < history[0]["train/loss"]
