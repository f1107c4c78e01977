"""The IDX reader and the batching by index: what an epoch of steps contains."""

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from descent.data import Chunk, Plan, Tensors
from descent.data.base import Steps
from descent.data.idx import IdxData, read_idx, write_idx
from descent.errors import DescentError


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_round_trips_plain_and_gzipped(tmp_path: Path, name: str) -> None:
    array = torch.randint(0, 256, (7, 5, 3), dtype=torch.uint8)
    write_idx(tmp_path / name, array)
    assert torch.equal(read_idx(tmp_path / name), array)


def test_read_idx_names_the_file_when_it_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, torch.zeros(4, 28, 28, dtype=torch.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DescentError, match=f"{path}: the header declares shape \\[4, 28, 28\\]"):
        read_idx(path)


def test_idx_data_finds_the_files_where_torchvision_puts_them(tmp_path: Path, idx_dir: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for file in idx_dir.iterdir():
        (raw / file.name).write_bytes(file.read_bytes())
    data = IdxData(dataset="MNIST", data_dir=str(tmp_path), download=False, val_size=100)
    data.setup()
    assert {name: len(y) for name, (_, y) in data.sets.items()} == {"train": 500, "val": 100, "test": 200}


def test_missing_files_offline_say_where_they_were_looked_for(tmp_path: Path) -> None:
    data = IdxData(dataset="FashionMNIST", data_dir=str(tmp_path), download=False)
    with pytest.raises(DescentError, match=f"FashionMNIST files not found in {tmp_path}.*dataset-fashion-mnist"):
        data.setup()


def epoch(x: torch.Tensor, y: torch.Tensor, batch_size: int, chunk_size: int, **plan: Any) -> list[list[Chunk]]:
    """One epoch as Lightning's training loader serves it: a list of chunks per optimizer step."""
    return list(Steps(Plan(len(y), batch_size, chunk_size, **plan), Tensors(x), y))


@pytest.mark.parametrize(("n", "batch_size", "chunk_size"), [(100, 32, 100), (100, 100, 30), (101, 101, 101)])
def test_an_epoch_sees_every_sample_once_in_ceil_n_over_b_steps(n: int, batch_size: int, chunk_size: int) -> None:
    x, y = torch.arange(n).float()[:, None], torch.arange(n)
    steps = epoch(x, y, batch_size, chunk_size, seed=0)
    chunks = [chunk for step in steps for chunk in step]
    assert len(steps) == math.ceil(n / batch_size) == len(Steps(Plan(n, batch_size, chunk_size), Tensors(x), y))
    assert len(chunks) == Plan(n, batch_size, chunk_size).chunks
    assert sorted(torch.cat([chunk.y for chunk in chunks]).tolist()) == list(range(n))
    assert all(len(chunk.y) <= chunk_size for chunk in chunks)
    assert all(torch.equal(chunk.x[:, 0].long(), chunk.y) for chunk in chunks)  # images stay with their labels
    assert all(sum(len(chunk.y) for chunk in step) == step[0].loss_divisor for step in steps)


def labels_of(steps: list[list[Chunk]]) -> torch.Tensor:
    return torch.cat([chunk.y for step in steps for chunk in step])


def test_each_epoch_draws_a_fresh_permutation_that_depends_on_seed_and_epoch_only() -> None:
    y = torch.arange(50)
    current = {"epoch": 0}
    plan = Plan(50, 10, 50, seed=3, epoch=lambda: current["epoch"])
    first = labels_of(list(Steps(plan, Tensors(y[:, None].float()), y)))
    current["epoch"] = 1
    second = labels_of(list(Steps(plan, Tensors(y[:, None].float()), y)))
    again = labels_of(epoch(y[:, None].float(), y, 10, 50, seed=3, epoch=lambda: 1))
    assert not torch.equal(first, second) and not torch.equal(first, y)
    assert torch.equal(second, again)


def test_a_step_over_the_whole_set_is_served_as_views_not_copies() -> None:
    x, y = torch.randn(100, 3), torch.arange(100)
    (step,) = epoch(x, y, 100, 30, seed=0)
    assert all(chunk.x.data_ptr() == x[int(chunk.y[0])].data_ptr() for chunk in step)
    assert torch.equal(torch.cat([chunk.y for chunk in step]), y)


@pytest.mark.parametrize(("n", "batch_size", "chunk_size"), [(103, 10, 10), (103, 103, 8), (7, 3, 1)])
def test_ranks_share_each_step_disjointly_with_equal_chunk_counts(n: int, batch_size: int, chunk_size: int) -> None:
    """Under DDP every rank must make the same number of backward calls, and together see each sample once."""
    y = torch.arange(n)
    per_rank = [epoch(y[:, None].float(), y, batch_size, chunk_size, seed=1, rank=r, world_size=3) for r in range(3)]
    assert len({tuple(len(step) for step in steps) for steps in per_rank}) == 1
    seen = torch.cat([labels_of(steps) for steps in per_rank])
    assert sorted(seen.tolist()) == list(range(n))
    single = epoch(y[:, None].float(), y, batch_size, chunk_size, seed=1)
    for step_index, step in enumerate(single):
        # every rank scales by the same divisor: the step's size over all ranks, divided by their number
        divisors = {steps[step_index][0].loss_divisor for steps in per_rank}
        assert divisors == {step[0].loss_divisor / 3}


def test_in_memory_images_keep_their_shape_and_are_normalised_by_the_training_part(idx_dir) -> None:
    data = IdxData(dataset="MNIST", data_dir=str(idx_dir), download=False, val_size=100)
    data.setup()
    train, _ = data.sets["train"]
    assert data.input_shape == (1, 28, 28)
    assert train.x.shape == (500, 1, 28, 28) and train.x.dtype == torch.float32
    assert abs(float(train.x.mean())) < 1e-5 and float(train.x.std()) == pytest.approx(1, rel=1e-4)
