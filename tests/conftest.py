"""Fixtures that write small, real data files and compose the real config around them.

Nothing heavy at the top: under `pytest -n` the controller loads this file too, before it starts the workers, and
runs no test; torch, Lightning and descent load in the workers, with the test modules.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from omegaconf import DictConfig

if "PYTEST_XDIST_WORKER" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    # Under `pytest -n` (make test) each worker shares the cores with the others: one thread each, for its own
    # runs and the subprocesses it starts, as two threads that wait on each other at every operation of a tiny step
    # make it many times slower on a shared core.
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `slow` tests first, in their files' order: `make test` hands tests to its workers one at a time
    (`--dist load --maxschedchunk 1`), so the longest start first and the suite ends on short ones, not on one
    worker's long test while the other core idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MNIST's four files, gzipped, with 600 training and 200 test images."""
    from helpers import write_idx_set

    return write_idx_set(tmp_path_factory.mktemp("idx"))


@pytest.fixture
def make_cfg(tmp_path: Path, idx_dir: Path) -> Callable[..., DictConfig]:
    """Compose conf/train.yaml on the small IDX files, on the CPU, writing under tmp_path."""
    from helpers import compose_train_small

    def make(*overrides: str, run_dir: Path | None = None) -> DictConfig:
        return compose_train_small(*overrides, idx_dir=idx_dir, run_dir=run_dir or tmp_path / "run")

    return make


@pytest.fixture(scope="session")
def imagenet32_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Imagenet32-format .npz files: 600 training, 200 validation images of 10 classes."""
    from data_files import write_npz_set

    directory = tmp_path_factory.mktemp("imagenet32")
    write_npz_set(directory, 600, 200, 32, 10)
    return directory


@pytest.fixture(scope="session")
def ddp_runs(idx_dir: Path, imagenet32_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The run dir of each of ddp_runs.DDP_RUNS, all trained in one 2-rank process group (one torchrun), once per
    session: under `pytest -n` the first worker to need them trains them, the others wait for its runs and read them
    (the data they train on are the same, written from the same seed)."""
    from ddp_runs import DDP_RUNS
    from helpers import ROOT, environment, once_per_session

    def make(out: Path) -> None:
        import optuna

        runs = {name: ddp_overrides(name, out, imagenet32_dir) for name in DDP_RUNS}
        optuna.create_study(study_name="descent", storage=f"sqlite:///{out}/optuna.db").ask()  # pruned_trial's
        spec = out / "spec.json"
        spec.write_text(json.dumps({"runs": runs, "idx_dir": str(idx_dir), "out": str(out)}))
        torchrun = Path(sys.executable).parent / "torchrun"
        done = subprocess.run(
            [str(torchrun), "--standalone", "--nproc_per_node=2", "tests/ddp_runs.py", str(spec)],
            cwd=ROOT, capture_output=True, text=True, timeout=900, env=environment(PYTHONPATH=str(ROOT / "tests")),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-5000:]

    out = once_per_session(tmp_path_factory, "ddp", make)
    return {name: out / name for name in DDP_RUNS}


def ddp_overrides(name: str, out: Path, imagenet32_dir: Path) -> list[str]:
    """DDP_RUNS[name] with its dirs filled in."""
    from ddp_runs import DDP_RUNS

    return [item.format(out=out, imagenet32_dir=imagenet32_dir) for item in DDP_RUNS[name]]


@pytest.fixture(scope="module")
def reference(idx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict]:
    """helpers.reference_step, computed once per module for each set of overrides: several tests check their
    chunked, manual or DDP step against the same exact step."""
    from helpers import compose_train_small, reference_step

    run_dir = tmp_path_factory.mktemp("reference")

    @functools.cache
    def step(*overrides: str) -> dict:
        return reference_step(lambda *o: compose_train_small(*o, idx_dir=idx_dir, run_dir=run_dir), *overrides)

    return step
