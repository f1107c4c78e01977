"""Fixtures that write small, real data files and compose the real config around them."""

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from descent.data import write_idx

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def learnable_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """28x28 uint8 images whose class is a bright horizontal band, under noise: an MLP learns it in an epoch."""
    labels = torch.randint(10, (n,), generator=generator)
    images = torch.randint(0, 96, (n, 28, 28), generator=generator)
    for row in range(2):
        images[torch.arange(n), 4 + 2 * labels + row, :] += 150
    return images.clamp(max=255).to(torch.uint8), labels.to(torch.uint8)


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MNIST's four files, gzipped, with 600 training and 200 test images."""
    directory = tmp_path_factory.mktemp("idx")
    generator = torch.Generator().manual_seed(1)
    for prefix, n in (("train", 600), ("t10k", 200)):
        images, labels = learnable_images(n, generator)
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


SMALL = ["trainer=cpu", "data.val_size=100", "model.hidden=[32]", "max_epochs=2"]
"""Overrides that make a run take a second: the structure is the real one, only smaller."""


@pytest.fixture
def make_cfg(tmp_path: Path, idx_dir: Path) -> Callable[..., DictConfig]:
    """Compose conf/train.yaml as the command line would, on the small IDX files, writing under tmp_path."""

    def make(*overrides: str, run_dir: Path | None = None) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=[*SMALL, f"run_dir={run_dir or tmp_path / 'run'}", *overrides])
        if "data_dir" in cfg.data:  # never the network, never the user's data/
            cfg.data.data_dir, cfg.data.download = str(idx_dir), False
        return cfg

    return make


def python() -> str:
    return sys.executable
