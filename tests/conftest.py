"""Fixtures that write small, real data files and compose the real config around them."""

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import SMALL, compose_train, write_idx_set
from omegaconf import DictConfig


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MNIST's four files, gzipped, with 600 training and 200 test images."""
    return write_idx_set(tmp_path_factory.mktemp("idx"))


@pytest.fixture
def make_cfg(tmp_path: Path, idx_dir: Path) -> Callable[..., DictConfig]:
    """Compose conf/train.yaml on the small IDX files, on the CPU, writing under tmp_path."""

    def make(*overrides: str, run_dir: Path | None = None) -> DictConfig:
        cfg = compose_train(*SMALL, f"run_dir={run_dir or tmp_path / 'run'}", *overrides)
        if "hidden" in cfg.model.net and not any(o.startswith("model.net.hidden=") for o in overrides):
            cfg.model.net.hidden = [32]
        if "data_dir" in cfg.data:  # never the network, never the user's data/
            cfg.data.data_dir, cfg.data.download = str(idx_dir), False
        return cfg

    return make
