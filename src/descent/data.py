"""Datasets small enough to live whole on the training device, served as optimizer steps by index.

The images are decoded once, normalised once and moved to the device once. An epoch is a seeded permutation cut
into steps of B samples (B = N for batch gradient descent); a step larger than `chunk_size` is computed in chunks
whose gradients add up to the exact gradient of the step. No per-sample Python, no PIL, no DataLoader, and
Lightning sees one "batch" per pass (`OnePass`): one an epoch in training, one per set in the evaluation; the model
steps through the chunks itself.
"""

import gzip
import logging
import math
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor

from descent.errors import DescentError, is_whole, require

log = logging.getLogger(__name__)

EVAL_SETS = ("train", "val", "test")
"""The sets evaluated after every epoch, in the order of `val_dataloader`."""

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_UBYTE = 0x08
IDX_CLASSES = 10
"""MNIST, Fashion-MNIST and KMNIST all have ten classes."""


class Chunk(NamedTuple):
    """Part of one optimizer step: its samples on this rank, and how its summed loss is scaled.

    `loss_divisor` is the step's sample count over all ranks divided by the number of ranks, so that summed
    chunk losses divided by it, then averaged over ranks by DDP, give the exact mean loss of the step.
    """

    x: Tensor
    y: Tensor
    loss_divisor: float
    ends_step: bool


class Batches:
    """One epoch of optimizer steps of `batch_size` samples, each cut into chunks of at most `chunk_size`.

    With `seed` the order is a fresh permutation per epoch (seeded by `seed` and the epoch, so a resumed run
    draws the same ones); without it, or when one step takes the whole set (GD), the order is the stored one and
    chunks are views, not copies. Each step is split into one contiguous share per rank, so every sample is seen
    exactly once per epoch and the steps do not depend on the number of ranks.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        chunk_size: int,
        seed: int | None = None,
        epoch: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.x, self.y = x, y
        self.batch_size, self.chunk_size = batch_size, chunk_size
        self.seed, self.epoch = seed, epoch
        self.rank, self.world_size = rank, world_size

    @property
    def steps(self) -> int:
        """Optimizer steps in the epoch: ceil(N / B)."""
        return math.ceil(len(self.y) / self.batch_size)

    def _chunks_per_step(self, step_size: int) -> int:
        return max(1, math.ceil(math.ceil(step_size / self.world_size) / self.chunk_size))

    def __len__(self) -> int:
        full_steps, rest = divmod(len(self.y), self.batch_size)
        return full_steps * self._chunks_per_step(self.batch_size) + (self._chunks_per_step(rest) if rest else 0)

    def _order(self) -> Tensor | None:
        if self.seed is None or self.batch_size >= len(self.y):
            return None  # a step over the whole set sums over every sample, whatever their order
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch())
        return torch.randperm(len(self.y), generator=generator).to(self.y.device)

    def __iter__(self) -> Iterator[Chunk]:
        n, order = len(self.y), self._order()
        for start in range(0, n, self.batch_size):
            step_size = min(self.batch_size, n - start)
            mine = start + self.rank * step_size // self.world_size
            mine_size = start + (self.rank + 1) * step_size // self.world_size - mine
            n_chunks = self._chunks_per_step(step_size)
            loss_divisor = step_size / self.world_size
            for i in range(n_chunks):
                lo, hi = mine + i * mine_size // n_chunks, mine + (i + 1) * mine_size // n_chunks
                if order is None:
                    yield Chunk(self.x[lo:hi], self.y[lo:hi], loss_divisor, i == n_chunks - 1)
                else:
                    index = order[lo:hi]
                    yield Chunk(self.x[index], self.y[index], loss_divisor, i == n_chunks - 1)


class OnePass:
    """A Lightning loader of one item, a whole pass of chunks (an epoch of steps, or a set to evaluate) that the
    model steps through in `training_step` or `validation_step`.

    Lightning's per-batch machinery (hooks, batch transfer, progress tracking) costs about 1 ms a batch on 2 CPU
    cores, a fifth of a B=64 step of the default MLP; this way it runs once a pass.
    """

    def __init__(self, chunks: Iterable[Chunk]) -> None:
        self.chunks = chunks

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[Iterable[Chunk]]:
        yield self.chunks


def is_sample_count(value: object) -> bool:
    """A positive int, or `full`: what `batch_size` and `chunk_size` accept."""
    return value == "full" or (is_whole(value) and value >= 1)


def parse_size(value: int | str, n: int, key: str) -> int:
    """A sample count from the config: a positive int up to `n`, or `full` for all `n`."""
    require(is_sample_count(value), f"{key}={value!r} is not allowed: give a positive number of samples, or {key}=full")
    if value == "full":
        return n
    require(
        value <= n,
        f"{key}={value} is larger than the training set (N={n}): use at most {n}, or {key}=full",
    )
    return value


class ImageData(LightningDataModule):
    """A labelled image set held whole on the device; subclasses say where the images come from (`load`)."""

    def __init__(
        self,
        batch_size: int | str = 64,
        chunk_size: int | str = 4096,
        val_size: int = 5000,
        seed: int = 0,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size, self.chunk_size = batch_size, chunk_size
        self.val_size, self.seed, self.split_seed = val_size, seed, split_seed
        self.sets: dict[str, tuple[Tensor, Tensor]] = {}

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Training images, training labels, test images, test labels: images [N, ...], labels int64 [N]."""
        raise NotImplementedError

    @property
    def num_train(self) -> int:
        return len(self.sets["train"][1])

    @property
    def input_size(self) -> int:
        return self.sets["train"][0].shape[1]

    @property
    def num_classes(self) -> int:
        return int(max(labels.max() for _, labels in self.sets.values())) + 1

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        x_train, y_train, x_test, y_test = self.load()
        require(
            is_whole(self.val_size) and 1 <= self.val_size < len(y_train),
            f"data.val_size={self.val_size!r} must be at least 1 and smaller than the {len(y_train)} "
            "training samples it is carved from",
        )
        order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(self.split_seed))
        val, train = order[: self.val_size], order[self.val_size :]
        self.image_shape = tuple(x_train.shape[1:])
        x_train = x_train.flatten(1).float()
        mean, std = x_train[train].mean(), x_train[train].std()

        def normalise(x: Tensor) -> Tensor:
            return ((x.flatten(1).float() - mean) / std).contiguous()

        self.sets = {
            "train": (normalise(x_train[train]), y_train[train]),
            "val": (normalise(x_train[val]), y_train[val]),
            "test": (normalise(x_test), y_test),
        }
        self._resolve_sizes()

    def _resolve_sizes(self) -> None:
        """B and the chunk size in samples, resolved at setup so that a bad size fails before a Trainer exists."""
        self.samples_per_step = parse_size(self.batch_size, self.num_train, "batch_size")
        chunk_size = self.chunk_size  # a cap: anything above N means N
        if is_whole(chunk_size):
            chunk_size = min(chunk_size, self.num_train)
        self.samples_per_chunk = parse_size(chunk_size, self.num_train, "chunk_size")

    @property
    def class_names(self) -> list[str]:
        return [str(label) for label in range(self.num_classes)]

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes + y.nbytes for x, y in self.sets.values())

    def _on_device(self) -> dict[str, tuple[Tensor, Tensor]]:
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        self.sets = {name: (x.to(device), y.to(device)) for name, (x, y) in self.sets.items()}
        return self.sets

    def _rank(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def train_dataloader(self) -> OnePass:
        x, y = self._on_device()["train"]
        rank, world_size = self._rank()
        return OnePass(
            Batches(
                x,
                y,
                self.samples_per_step,
                self.samples_per_chunk,
                seed=self.seed,
                epoch=lambda: self.trainer.current_epoch if self.trainer else 0,
                rank=rank,
                world_size=world_size,
            )
        )

    def val_dataloader(self) -> list[OnePass]:
        """The whole training, validation and test sets, in a fixed order, each one pass of chunks."""
        sets = self._on_device()
        rank, world_size = self._rank()
        return [
            OnePass(Batches(x, y, len(y), self.samples_per_chunk, rank=rank, world_size=world_size))
            for x, y in (sets[name] for name in EVAL_SETS)
        ]


def read_idx(path: Path) -> Tensor:
    """Decode one IDX file of unsigned bytes (plain or .gz) into a uint8 tensor of the shape its header declares."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DescentError(f"{path}: cannot be read ({error}); download the file again") from None
    require(
        len(raw) >= 4 and raw[:2] == b"\0\0" and raw[2] == IDX_UBYTE and raw[3] >= 1,
        f"{path}: not an IDX file of unsigned bytes (magic number {raw[:4].hex() or 'missing'}, "
        "expected 0000080N); check the file name and download it again",
    )
    header_size = 4 + 4 * raw[3]
    require(len(raw) >= header_size, f"{path}: the IDX header is cut short; download the file again")
    shape = struct.unpack(f">{raw[3]}I", raw[4:header_size])
    expected = header_size + math.prod(shape)
    require(
        len(raw) == expected,
        f"{path}: the header declares shape {list(shape)} ({expected} bytes) but the file holds {len(raw)} "
        "bytes; the file is truncated or corrupt, download it again",
    )
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header_size).reshape(shape)


def write_idx(path: Path, array: Tensor) -> None:
    """`read_idx` backwards: a uint8 tensor as an IDX file (gzipped when the name ends in .gz), as MNIST ships."""
    header = bytes([0, 0, IDX_UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.to(torch.uint8).contiguous().numpy().tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def find_file(directories: list[Path], name: str) -> Path | None:
    for directory in directories:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


class IdxData(ImageData):
    """MNIST and its drop-in relatives (Fashion-MNIST, KMNIST): the four IDX files of the original release.

    Looks in `data_dir`, then where torchvision's download puts them (`data_dir/<dataset>/raw`), then in
    `system_dir`; if the files are in none of those and `download` is set, torchvision downloads them.
    """

    def __init__(
        self,
        dataset: str,
        data_dir: str,
        system_dir: str | None = None,
        download: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset, self.data_dir = dataset, Path(data_dir)
        self.system_dir, self.download = system_dir, download

    def _directories(self) -> list[Path]:
        directories = [self.data_dir, self.data_dir / self.dataset / "raw"]
        return directories + ([Path(self.system_dir)] if self.system_dir else [])

    def _find_all(self) -> dict[str, Path] | None:
        names = [name for pair in IDX_FILES.values() for name in pair]
        found = {name: find_file(self._directories(), name) for name in names}
        return None if None in found.values() else found  # type: ignore[return-value]

    def prepare_data(self) -> None:
        if self._find_all() is not None:
            return
        looked = ", ".join(str(d) for d in self._directories())
        how = (
            f"put the four IDX files ({', '.join(IDX_FILES['train'] + IDX_FILES['test'])}, optionally .gz) in "
            f"data.data_dir, or run once with network access"
        )
        if self.dataset == "FashionMNIST":
            how += ", or install Debian's dataset-fashion-mnist package"
        require(self.download, f"{self.dataset} files not found in {looked} and data.download=false: {how}")
        import torchvision.datasets

        log.info("%s not found in %s: downloading with torchvision", self.dataset, looked)
        try:
            for train in (True, False):
                getattr(torchvision.datasets, self.dataset)(self.data_dir, train=train, download=True)
        except Exception as error:  # offline: URLError, socket errors, HTTP errors, all reported alike
            raise DescentError(
                f"{self.dataset} files not found in {looked} and the download failed "
                f"({' '.join(str(error).split())}): {how}"
            ) from None

    @property
    def class_names(self) -> list[str]:
        import torchvision.datasets

        names = getattr(getattr(torchvision.datasets, self.dataset, None), "classes", [])
        return names if len(names) == self.num_classes else super().class_names

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self.prepare_data()
        found = self._find_all()
        assert found is not None
        arrays = []
        for images_name, labels_name in IDX_FILES.values():
            images, labels = read_idx(found[images_name]), read_idx(found[labels_name])
            require(
                images.ndim == 3 and labels.ndim == 1 and len(images) == len(labels),
                f"{found[images_name]} and {found[labels_name]}: expected images [N, H, W] and labels [N], "
                f"got shapes {list(images.shape)} and {list(labels.shape)}",
            )
            outside = (labels >= IDX_CLASSES).nonzero()
            if len(outside):
                index = int(outside[0])
                raise DescentError(
                    f"{found[labels_name]}: label {int(labels[index])} at index {index} is outside the "
                    f"{IDX_CLASSES} classes 0-{IDX_CLASSES - 1}; the file is corrupt or not a label file, "
                    "download it again"
                )
            arrays += [images, labels.long()]
        log.info(
            "%s: %d training and %d test images from %s",
            self.dataset,
            len(arrays[1]),
            len(arrays[3]),
            found[IDX_FILES["train"][0]].parent,
        )
        return tuple(arrays)  # type: ignore[return-value]


class SyntheticData(ImageData):
    """MNIST-shaped random data for smoke runs: one random prototype image per class plus Gaussian noise."""

    def __init__(
        self,
        num_train: int = 6000,
        num_test: int = 1000,
        num_classes: int = 10,
        image_shape: tuple[int, ...] = (28, 28),
        noise: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.num_samples = (num_train, num_test)
        self.classes, self.image_shape, self.noise = num_classes, tuple(image_shape), noise

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        generator = torch.Generator().manual_seed(self.split_seed)
        prototypes = torch.randn(self.classes, *self.image_shape, generator=generator)
        arrays = []
        for n in self.num_samples:
            labels = torch.randint(self.classes, (n,), generator=generator)
            images = prototypes[labels] + self.noise * torch.randn(n, *self.image_shape, generator=generator)
            arrays += [images, labels]
        return tuple(arrays)  # type: ignore[return-value]
