"""The data protocol: a source loads a training and a test set; `ImageData` splits, normalises and serves them as
optimizer steps and chunks (`descent.data.steps`).

A source is an `ImageData` that implements `load`. Sets that fit in memory are returned as tensors and live whole on
the training device as stored (uint8 for image files), sliced by index and converted to float chunk by chunk; sets
that do not are returned as an `Images` reader (a memory-mapped file, an image folder) that produces the chunks'
images on the device as they are needed.
"""

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor

from descent import monitor
from descent.config import check_sizes
from descent.data.steps import Chunks, Images, Index, Plan, Steps, rows, set_chunks
from descent.errors import is_whole, require

if TYPE_CHECKING:
    from descent.data.augment import Augment

log = logging.getLogger(__name__)

EVAL_SETS = monitor.EVAL_SETS
"""The sets evaluated after every epoch, in the order of `val_dataloader`."""

TRAIN_SUBSET_STREAM = 0x7375627365
"""Added to split_seed for eval.train_samples' subset ("subse" in ASCII): apart from the split's own draw."""


class Tensors:
    """A set that lives whole on the device as it is stored (uint8 for image files, a quarter of float32), read as
    float32 chunks normalised by `mean` and `std` (the training part's): `Images` by slicing or gathering."""

    def __init__(self, x: Tensor, mean: Tensor | float = 0.0, std: Tensor | float = 1.0) -> None:
        self.x, self.shape = x, tuple(x.shape[1:])
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=x.device)

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, rows: Tensor) -> "Tensors":
        return Tensors(self.x[rows], self.mean, self.std)

    def to(self, device: torch.device) -> "Tensors":
        self.x, self.mean, self.std = self.x.to(device), self.mean.to(device), self.std.to(device)
        return self

    def normalised(self, index: Index = slice(None)) -> Tensor:
        """Float32 images at `index` (the whole set by default), normalised: what a chunk of this set holds, and the
        one way to get a set's float images."""
        # Always a copy, even of float32 samples (a gather copies already): the stored set is never changed.
        part = rows(self.x, index)
        part = part.to(torch.float32, copy=isinstance(index, slice))
        return part.sub_(self.mean).div_(self.std)

    def read(self, indices: Iterable[Index]) -> Iterator[Tensor]:
        return (self.normalised(index) for index in indices)

    @property
    def nbytes(self) -> int:
        return self.x.nbytes


STATS_VALUES = 2**22
"""Values converted to float64 at a time while the training part's mean and std are computed (32 MiB)."""


def mean_and_std(x: Tensor) -> tuple[Tensor, Tensor]:
    """The mean and (unbiased) standard deviation of every value of `x`, in float64 a block of samples at a time
    (no float copy of the set), rounded to float32."""
    rows = max(1, STATS_VALUES // max(1, math.prod(x.shape[1:])))
    blocks = range(0, len(x), rows)
    mean = sum(x[i : i + rows].double().sum() for i in blocks) / x.numel()
    squares = sum((x[i : i + rows].double() - mean).square().sum() for i in blocks)
    return mean.float(), (squares / (x.numel() - 1)).sqrt().float()  # type: ignore[operator]


def normalised_in_memory(x_train: Tensor, x_test: Tensor, train: Tensor, val: Tensor) -> tuple[Tensors, ...]:
    """Training, validation and test images as stored, each read as float32 normalised by the training part's mean
    and std. Gathering the training and validation parts is the one transient copy (of the stored dtype)."""
    x_train, x_test = (x.unsqueeze(1) if x.ndim == 3 else x for x in (x_train, x_test))
    x_fit = x_train[train]
    mean, std = mean_and_std(x_fit)
    return tuple(Tensors(x.contiguous(), mean, std) for x in (x_fit, x_train[val], x_test))


def augmentation(augment: Mapping[str, Any] | bool | None) -> "Augment | None":
    """`data.augment` as given: its keys are `Augment`'s arguments (true: their defaults); null or false: none."""
    from descent.data.augment import Augment

    if augment is None or augment is False:
        return None
    if augment is True:
        return Augment()
    require(
        isinstance(augment, Mapping),
        f"data.augment={augment!r} is not allowed: give e.g. {{crop_padding: 2, flip: true}}, true, or null (off)",
    )
    unknown = sorted(set(augment) - {"crop_padding", "flip"})
    require(not unknown, f"data.augment.{unknown[0] if unknown else ''} is not a setting: use crop_padding, flip")
    return Augment(**augment)


def parse_size(value: int | str, n: int, key: str) -> int:
    """A sample count checked by `descent.config.check_sizes`: an int up to `n`, or `full` for all `n`."""
    if value == "full":
        return n
    require(
        value <= n,
        f"{key}={value} is larger than the training set (N={n}): use at most {n}, or {key}=full",
    )
    return value


class ImageData(LightningDataModule):
    """A labelled image set served as exact optimizer steps; a source implements `load` (and may name its classes).

    After `setup`, `sets` maps train, val (carved from the training set by `split_seed`) and test to
    (images, labels): `Images` and int64 labels [n], both on the training device once a trainer runs.
    `augment` (`descent.data.augment.Augment`'s arguments, e.g. {crop_padding: 2, flip: true}; null or false: off)
    crops and flips the images of the training steps, and of nothing else. `train_size` trains on a fixed subset of
    that many of the training samples left after `val_size` (drawn by `split_seed`); null: all of them.
    """

    def __init__(
        self,
        batch_size: int | str = 64,
        chunk_size: int | str = 4096,
        val_size: int = 5000,
        seed: int = 0,
        split_seed: int = 0,
        augment: Mapping[str, Any] | bool | None = None,
        train_size: int | None = None,
    ) -> None:
        super().__init__()
        check_sizes(batch_size, chunk_size, val_size, train_size)
        self.batch_size, self.chunk_size = batch_size, chunk_size
        self.val_size, self.seed, self.split_seed = val_size, seed, split_seed
        self.train_size = train_size
        self.augment = augmentation(augment)
        self.sets: dict[str, tuple[Images, Tensor]] = {}
        self.samples_per_group = 1  # a network with BatchNorm keeps its groups within a chunk (descent.batchnorm)
        self.eval_train_samples: int | None = None  # eval.train_samples: the training figures on a fixed subset

    def load(self) -> tuple[Tensor | Images, Tensor, Tensor | Images, Tensor]:
        """Training images, training labels, test images, test labels. Images are a tensor [N, C, H, W] (or [N, H, W]
        for one channel) of any dtype, normalised here, or an `Images` reader; labels are int64 [N]."""
        raise NotImplementedError

    @property
    def class_names(self) -> list[str]:
        return [str(label) for label in range(self.num_classes)]

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        x_train, y_train, x_test, y_test = self.load()
        require(
            self.val_size < len(y_train),
            f"data.val_size={self.val_size} must be smaller than the {len(y_train)} training samples it is carved from",
        )
        order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(self.split_seed))
        val, train = order[: self.val_size], order[self.val_size :]
        if self.train_size is not None:  # a fixed subset of the rest, by split_seed (e.g. 5,000 for a GD study)
            require(
                self.train_size <= len(train),
                f"data.train_size={self.train_size} must be at most the {len(train)} training samples left after "
                "data.val_size; or null for all of them",
            )
            train = train[: self.train_size]
        if isinstance(x_train, Tensor):
            images = normalised_in_memory(x_train, x_test, train, val)  # type: ignore[arg-type]
        else:
            images = (x_train.subset(train), x_train.subset(val), x_test)
        labels = (y_train[train], y_train[val], y_test)
        self.sets = dict(zip(EVAL_SETS, zip(images, labels, strict=True), strict=True))
        self.num_classes = int(max(y.max() for y in labels)) + 1
        self.input_shape = images[0].shape
        if self.augment is not None:
            self.augment.check(self.input_shape)
        self.num_train = len(train)
        subset = f" of the {len(order) - self.val_size}" if self.train_size is not None else ""
        log.info(
            "training on %d%s samples%s, validating on %d, testing on %d",
            self.num_train,
            subset,
            " (data.train_size)" if subset else "",
            self.val_size,
            len(y_test),
        )
        # B and the chunk size, resolved here so that a bad size fails before a Trainer exists.
        self.samples_per_step = parse_size(self.batch_size, self.num_train, "batch_size")
        # A chunk is also what the evaluation reads at once: `full` (and any larger size) is the largest set, so
        # that one chunk is one pass over each set, the test set included when it is larger than a subset.
        largest = max(len(y) for y in labels)
        chunk_size = min(self.chunk_size, largest) if is_whole(self.chunk_size) else self.chunk_size
        self.samples_per_chunk = parse_size(chunk_size, largest, "chunk_size")

    chunks_in_flight = 4
    """Chunks of a streamed set held at once (being read ahead, moved, computed on): its memory plan's share."""

    @property
    def nbytes(self) -> int:
        """What the data holds on each device: in-memory sets whole as stored, a streamed set's chunks in flight (as
        float32; once, since one set is read at a time), and the labels. The float32 chunk being computed on is
        the network's input, which the memory plan counts with the activations."""
        labels = sum(y.nbytes for _, y in self.sets.values())
        whole = sum(x.nbytes for x, _ in self.sets.values() if isinstance(x, Tensors))
        streamed = any(not isinstance(x, Tensors) for x, _ in self.sets.values())
        chunk_bytes = self.samples_per_chunk * math.prod(self.input_shape) * 4
        return labels + whole + (self.chunks_in_flight * chunk_bytes if streamed else 0)

    def _on_device(self) -> tuple[torch.device, int, int]:
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer else torch.device("cpu")
        self.sets = {name: (x.to(device), y.to(device)) for name, (x, y) in self.sets.items()}
        return device, *((trainer.global_rank, trainer.world_size) if trainer else (0, 1))

    def train_dataloader(self) -> Steps:
        device, rank, world_size = self._on_device()
        x, y = self.sets["train"]
        epoch = lambda: self.trainer.current_epoch if self.trainer else 0  # noqa: E731
        # overfit_batches: the same first steps every epoch, as Lightning turns off a DataLoader's shuffling then.
        seed = None if self.trainer and self.trainer.overfit_batches else self.seed
        steps, chunk, group = self.samples_per_step, self.samples_per_chunk, self.samples_per_group
        plan = Plan(len(y), steps, chunk, seed, epoch, rank, world_size, device, group)
        convert = self.trainer.precision_plugin.convert_input if self.trainer else lambda chunk: chunk
        # Steps whose optimizer step was taken: Lightning counts a step processed once training_step returns.
        done = lambda: self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if self.trainer else 0  # noqa: E731
        return Steps(plan, x, y, self.augment, self.seed or 0, convert, done)

    def val_dataloader(self) -> list[Chunks]:
        """The whole training (or `eval_train_samples` of it), validation and test sets, in a fixed order, chunk by
        chunk."""
        device, rank, world_size = self._on_device()
        sets = [self.sets[name] for name in EVAL_SETS]
        if self.eval_train_samples is not None and self.eval_train_samples < self.num_train:
            # The same samples every epoch and in every run of this split_seed: the figures of epochs compare.
            generator = torch.Generator().manual_seed(self.split_seed + TRAIN_SUBSET_STREAM)
            rows = torch.randperm(self.num_train, generator=generator)[: self.eval_train_samples].sort().values
            x, y = sets[0]
            sets[0] = (x.subset(rows.to(y.device)), y[rows.to(y.device)])
        return [set_chunks(x, y, self.samples_per_chunk, rank, world_size) for x, y in sets]

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # made on the device already; Lightning's walk through the chunks would cost a step's 1%
