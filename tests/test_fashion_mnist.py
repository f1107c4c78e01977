"""Real data: Fashion-MNIST from Debian's dataset-fashion-mnist package, through the real loading code."""

from pathlib import Path

import pytest
from helpers import CONF, FASHION_MNIST
from hydra import compose, initialize_config_dir

from descent.training import train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
        reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
    ),
]


def test_two_epochs_of_sgd_reach_84_percent_test_accuracy(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "data=fashion_mnist",
                f"data.data_dir={tmp_path / 'no-data-here'}",
                "data.download=false",
                "optimizer=sgd",
                "batch_size=64",
                "max_epochs=2",
                "trainer=cpu",
                "logger=none",
                f"run_dir={tmp_path}",
            ],
        )
    result = train(cfg)
    assert [row["progress/steps"] for row in result["history"]] == [860, 1720]  # ceil(55,000 / 64) a step
    assert result["final"]["test/acc"] >= 0.84
