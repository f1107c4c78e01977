"""The IDX reader and the batching by index: what an epoch of steps contains."""

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from data_files import write_idx

from descent.data import Chunk, Plan, Tensors
from descent.data.augment import Augment
from descent.data.idx import IdxData, read_idx
from descent.data.steps import Chunks, Steps
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


class CountedReads(Tensors):
    """Real `Tensors` that also note each index it is asked to read: to see when, and how, chunks are made."""

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__(x)
        self.reads: list[Any] = []

    def normalised(self, index: Any = slice(None)) -> torch.Tensor:
        self.reads.append(index)
        return super().normalised(index)


def test_a_step_over_the_whole_set_makes_its_chunks_one_at_a_time_as_slices() -> None:
    """GD over an in-memory set: each chunk is read (converted to float) as it is needed, never the set at once."""
    x, y = torch.randn(100, 3), torch.arange(100)
    images = CountedReads(x)
    (step,) = list(Steps(Plan(100, 100, 30, seed=0), images, y))
    assert images.reads == []
    for i, chunk in enumerate(step):
        assert len(images.reads) == i + 1 and isinstance(images.reads[i], slice)
        assert torch.equal(chunk.x, x[images.reads[i]]) and chunk.x.data_ptr() != x.data_ptr()
    assert len(step) == 4 and step[0].loss_divisor == 100
    again = list(step)  # a line search evaluates the step again: read afresh, the same chunks
    assert torch.equal(torch.cat([chunk.y for chunk in again]), y)
    assert torch.equal(torch.cat([chunk.x for chunk in again]), x)


def test_the_evaluation_makes_one_chunk_at_a_time() -> None:
    x, y = torch.randn(100, 3), torch.arange(100)
    images = CountedReads(x)
    chunks = iter(Chunks(Plan(100, 100, 30), images, y))
    first = next(chunks)
    assert len(images.reads) == 1 and torch.equal(first.x, x[:25])
    assert torch.equal(torch.cat([first.x, *(chunk.x for chunk in chunks)]), x)


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


def test_in_memory_images_stay_uint8_and_are_read_normalised_by_the_training_part(idx_dir) -> None:
    data = IdxData(dataset="MNIST", data_dir=str(idx_dir), download=False, val_size=100)
    data.setup()
    train, _ = data.sets["train"]
    assert data.input_shape == (1, 28, 28)
    assert train.x.shape == (500, 1, 28, 28) and train.x.dtype == torch.uint8  # a quarter of float32
    assert data.nbytes == sum(x.x.nbytes + y.nbytes for x, y in data.sets.values())
    x = train.normalised()
    assert x.dtype == torch.float32
    assert abs(float(x.mean())) < 1e-5 and float(x.std()) == pytest.approx(1, rel=1e-4)
    # The figures normalising the whole training part as float32 at load gave, to float32 rounding.
    as_float = train.x.float()
    mean, std = as_float.mean(), as_float.std()
    for images, _ in data.sets.values():
        torch.testing.assert_close(images.normalised(), (images.x.float() - mean) / std, rtol=0, atol=2e-6)
        chunks = [chunk.x for chunk in Chunks(Plan(len(images), len(images), 64), images, torch.zeros(len(images)))]
        assert torch.equal(torch.cat(chunks), images.normalised())


def augmented_epoch(x: torch.Tensor, epoch_number: int, **plan: Any) -> list[torch.Tensor]:
    """Each step's augmented images on this rank, concatenated, as the training loader serves them."""
    y = torch.arange(len(x))
    augment = Augment(crop_padding=2, flip=True)
    steps = Steps(Plan(len(x), 16, 5, seed=0, epoch=lambda: epoch_number, **plan), Tensors(x), y, augment, seed=7)
    return [torch.cat([chunk.x for chunk in step]) for step in steps]


def test_augmented_images_are_reflect_padded_crops_and_flips_drawn_per_sample() -> None:
    x = torch.randn(400, 2, 6, 9)
    augment = Augment(crop_padding=2, flip=True)
    draws = augment.draws(seed=3, epoch=1, n=len(x))
    out = augment(x, draws)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for image, source, (dy, dx, flip) in zip(out, padded, draws.tolist(), strict=True):
        crop = source[:, 2 + dy : 2 + dy + 6, 2 + dx : 2 + dx + 9]
        assert torch.equal(image, crop.flip(-1) if flip else crop)
    assert {tuple(d) for d in draws[:, :2].tolist()} == {(a, b) for a in range(-2, 3) for b in range(-2, 3)}
    assert set(draws[:, 2].tolist()) == {0, 1}
    assert torch.equal(Augment(crop_padding=0, flip=False)(x, Augment(0, False).draws(3, 1, len(x))), x)


def test_an_epochs_augmented_images_are_the_same_on_any_number_of_ranks_and_when_redrawn() -> None:
    x = torch.randn(70, 1, 8, 8)
    single = augmented_epoch(x, 2)
    ranks = [augmented_epoch(x, 2, rank=rank, world_size=2) for rank in range(2)]
    assert all(torch.equal(one, torch.cat(shares)) for one, *shares in zip(single, *ranks, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(single, augmented_epoch(x, 2), strict=True))  # a resumed run
    assert not torch.equal(torch.cat(single), torch.cat(augmented_epoch(x, 3)))  # a fresh draw each epoch


def test_only_the_training_steps_are_augmented(idx_dir) -> None:
    def loaded(**augment: Any) -> IdxData:
        data = IdxData(dataset="MNIST", data_dir=str(idx_dir), download=False, val_size=100, **augment)
        data.setup()
        return data

    data, plain = loaded(augment={"crop_padding": 3}), loaded()
    pairs = [
        pair
        for steps in zip(data.train_dataloader(), plain.train_dataloader(), strict=True)
        for pair in zip(*steps, strict=True)
    ]
    assert all(torch.equal(chunk.y, same.y) for chunk, same in pairs)
    changed = torch.cat([(chunk.x != same.x).flatten(1).any(1) for chunk, same in pairs])
    assert changed.float().mean() > 0.9  # a crop at (0, 0) without a flip leaves 1 in 98 as it was
    for (images, _), chunks in zip(data.sets.values(), data.val_dataloader(), strict=True):
        assert torch.equal(torch.cat([chunk.x for chunk in chunks]), images.normalised())


@pytest.mark.parametrize(
    ("augment", "message"),
    [
        ({"crop_padding": -1}, "data.augment.crop_padding=-1 is not allowed"),
        ({"crop_padding": 28}, "data.augment.crop_padding=28 must be smaller than the images' height and width"),
        ({"flip": "yes"}, "data.augment.flip='yes' is not allowed"),
        ({"translate": 2}, "data.augment.translate is not a setting"),
        ("crops", "data.augment='crops' is not allowed"),
    ],
)
def test_a_bad_augmentation_names_its_key(idx_dir, augment: Any, message: str) -> None:
    with pytest.raises(DescentError, match=message):
        IdxData(dataset="MNIST", data_dir=str(idx_dir), download=False, val_size=100, augment=augment).setup()
