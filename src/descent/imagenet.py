"""ImageNet-scale data: downsampled ImageNet from a uint8 memory-mapped cache, and ImageNet-style image folders.

Both serve the model the same `Chunk`s as `descent.data` (so the model, GD's exact chunked step and DDP's per-rank
shares are unchanged), but neither holds the set in memory:

- `DownsampledImageNet` (Imagenet32/64, Chrabaszcz et al. 2017): the release's `.npz` batch files are converted once
  into a raw uint8 array file next to the data; an epoch gathers each chunk's rows by index from its memory map on a
  background thread, and the chunk is normalised on the device. Resident memory is the chunks in flight, whatever N.
- `ImageFolderData` (`train/<class>/*.JPEG`, `val/<class>/*.JPEG`): torchvision's `ImageFolder`, DataLoader workers,
  pinned memory and a `DistributedSampler` per rank; the loader's batches are wrapped into `Chunk`s.
"""

import contextlib
import fcntl
import json
import logging
import mmap
import os
import queue
import re
import threading
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from descent.data import EVAL_SETS, Batches, Chunk, ImageData, OnePass
from descent.errors import DescentError, is_whole, require

log = logging.getLogger(__name__)

NPZ_KEYS = ("data", "labels")
CACHE_VERSION = 1
STATS_SAMPLES = 20_000
"""Training images the per-channel mean and standard deviation are estimated from (once, at conversion)."""

CONVERT_HINT = (
    "descent never unpickles data files; convert it once on a machine you trust: python -c "
    '\'import pickle, numpy; F = "{path}"; d = pickle.load(open(F, "rb")); '
    'numpy.savez(F + ".npz", data=d["data"], labels=d["labels"])\''
)
T = TypeVar("T")


def pickle_refused(path: Path) -> DescentError:
    return DescentError(f"{path}: is in Python's pickle format; {CONVERT_HINT.format(path=path)}")


def read_npz(path: Path, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """`data` [N, 3*S*S] uint8 (channel-planar) and 1-based `labels` [N] of one release file, checked."""
    with open(path, "rb") as file:
        if file.read(1) == b"\x80":  # a pickle's protocol byte: the original release, never loaded
            raise pickle_refused(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            found = sorted(npz.files)
            require(
                set(NPZ_KEYS) <= set(found),
                f"{path}: holds the arrays {found}, expected {list(NPZ_KEYS)} (a downsampled-ImageNet .npz file)",
            )
            data, labels = npz["data"], np.asarray(npz["labels"]).reshape(-1)
    except ValueError as error:
        if "pickle" in str(error) or "Object arrays" in str(error):
            raise pickle_refused(path) from None
        raise DescentError(f"{path}: cannot be read as .npz ({error}); copy or convert the file again") from None
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise DescentError(f"{path}: cannot be read as .npz ({error}); copy or convert the file again") from None
    features = 3 * image_size**2
    require(
        data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == features,
        f"{path}: `data` is {data.dtype} of shape {list(data.shape)}, expected uint8 [N, {features}] for "
        f"{image_size}x{image_size} RGB images (data.image_size={image_size})",
    )
    require(
        np.issubdtype(labels.dtype, np.integer) and len(labels) == len(data),
        f"{path}: `labels` is {labels.dtype} of length {len(labels)}, expected {len(data)} integers",
    )
    require(
        len(labels) == 0 or labels.min() >= 1,
        f"{path}: labels start at {labels.min() if len(labels) else '-'}, expected 1-based class numbers",
    )
    return data, labels


def release_files(data_dir: Path) -> tuple[list[Path], Path]:
    """`train_data_batch_<k>.npz` in numeric order and `val_data.npz`, in data_dir or one folder below it."""
    require(data_dir.is_dir(), f"data.data_dir={data_dir}: no such directory")

    def find(pattern: str) -> list[Path]:
        return sorted({*data_dir.glob(pattern), *data_dir.glob(f"*/{pattern}")})

    def number(path: Path) -> int:
        return int(re.findall(r"\d+", path.name)[-1])

    train = sorted(find("train_data_batch_*.npz"), key=number)
    val = find("val_data.npz")
    pickled = [path for path in find("train_data_batch_*") + find("val_data") if path.suffix != ".npz"]
    for found, name in ((train, "train_data_batch_<k>"), (val, "val_data")):
        if not found:
            old = [path for path in pickled if path.name.startswith(name.split("<")[0])]
            if old:
                raise pickle_refused(old[0])
            raise DescentError(
                f"data.data_dir={data_dir}: no {name}.npz found (looked there and one folder below); put the "
                "downsampled-ImageNet .npz files there (train_data_batch_1..10.npz and val_data.npz)"
            )
    return train, val[0]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (DDP ranks started by SLURM all reach setup at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def convert(train_files: list[Path], val_file: Path, cache_dir: Path, image_size: int, sources: dict) -> None:
    """Write the cache: x as raw uint8 [N, 3*S*S], y as int16 (0-based), under temporary names, header last."""
    features = 3 * image_size**2
    (cache_dir / "header.json").unlink(missing_ok=True)  # incomplete from here until the new header lands
    counts, classes = {}, 0
    for split, files in (("train", train_files), ("test", [val_file])):
        labels = []
        with open(cache_dir / f"{split}_x.u8.tmp", "wb") as out:
            for path in files:
                log.info("converting %s into %s", path, cache_dir)
                data, file_labels = read_npz(path, image_size)
                data.tofile(out)
                labels.append(file_labels.astype(np.int64) - 1)
                del data
        y = np.concatenate(labels)
        classes = max(classes, int(y.max()) + 1 if len(y) else 0)
        require(classes <= np.iinfo(np.int16).max, f"{files[0]}: more classes ({classes}) than the cache holds")
        y.astype(np.int16).tofile(cache_dir / f"{split}_y.i16.tmp")
        counts[split] = len(y)
    x = np.memmap(cache_dir / "train_x.u8.tmp", np.uint8, "r", shape=(counts["train"], features))
    sample = np.sort(np.random.default_rng(0).permutation(counts["train"])[:STATS_SAMPLES])
    pixels = x[sample].reshape(len(sample), 3, -1).astype(np.float64)
    mean, std = pixels.mean(axis=(0, 2)), pixels.std(axis=(0, 2))
    del x, pixels
    for split in ("train", "test"):
        for name in (f"{split}_x.u8", f"{split}_y.i16"):
            os.replace(cache_dir / f"{name}.tmp", cache_dir / name)
    header = {
        "version": CACHE_VERSION,
        "image_size": image_size,
        "num_train": counts["train"],
        "num_test": counts["test"],
        "num_classes": classes,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "sources": sources,
    }
    (cache_dir / "header.json.tmp").write_text(json.dumps(header, indent=2) + "\n")
    os.replace(cache_dir / "header.json.tmp", cache_dir / "header.json")


class Cache:
    """The converted set: memory-mapped uint8 images and in-memory labels, reopened (not pickled) in each process."""

    def __init__(self, directory: Path, header: dict[str, Any]) -> None:
        self.directory, self.header = directory, header
        self._maps: dict[str, tuple[mmap.mmap, np.ndarray]] = {}

    @classmethod
    def prepare(cls, data_dir: Path, image_size: int) -> "Cache":
        """The cache in `data_dir/cache/imagenet<S>`, converted from the .npz files unless it is already there."""
        train_files, val_file = release_files(data_dir)
        sources = {str(path.relative_to(data_dir)): path.stat().st_size for path in [*train_files, val_file]}
        directory = data_dir / "cache" / f"imagenet{image_size}"

        def current() -> dict[str, Any] | None:
            try:
                header = json.loads((directory / "header.json").read_text())
            except (OSError, ValueError):
                return None
            same = header.get("version") == CACHE_VERSION and header.get("sources") == sources
            return header if same and header.get("image_size") == image_size else None

        header = current()
        if header is None:
            try:
                with locked(directory / ".lock"):
                    header = current()  # another rank may have converted it while this one waited
                    if header is None:
                        convert(train_files, val_file, directory, image_size, sources)
                        header = current()
            except PermissionError as error:
                raise DescentError(f"data.data_dir={data_dir}: cannot write the cache there ({error})") from None
            log.info("cached %s in %s", data_dir, directory)
        assert header is not None
        return cls(directory, header)

    def images(self, split: str) -> np.ndarray:
        """[N, 3*S*S] uint8, backed by the file: reading rows faults in only their pages."""
        if split not in self._maps:
            n = self.header["num_train" if split == "train" else "num_test"]
            features = 3 * self.header["image_size"] ** 2
            with open(self.directory / f"{split}_x.u8", "rb") as file:
                mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if n else None
            if mapped is not None:
                mapped.madvise(mmap.MADV_RANDOM)  # no readahead: steps read scattered rows
            array = np.frombuffer(mapped, np.uint8) if mapped is not None else np.zeros(0, np.uint8)
            self._maps[split] = (mapped, array.reshape(n, features))  # type: ignore[assignment]
        return self._maps[split][1]

    def release(self, split: str) -> None:
        """Drop the pages read so far from this process's resident set (they stay in the OS page cache)."""
        mapped = self._maps.get(split, (None,))[0]
        if mapped is not None:
            mapped.madvise(mmap.MADV_DONTNEED)

    def labels(self, split: str) -> Tensor:
        return torch.from_numpy(np.fromfile(self.directory / f"{split}_y.i16", np.int16).astype(np.int64))

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "header": self.header, "_maps": {}}


class Rows:
    """Images of one split gathered by index from the cache: what `Batches` indexes as its `x`.

    `rows` maps the split's sample numbers to rows of the file (sorted, so a step's reads go forward through it).
    """

    def __init__(self, cache: Cache, split: str, rows: np.ndarray | None = None) -> None:
        self.cache, self.split, self.rows = cache, split, rows

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.cache.images(self.split))

    def __getitem__(self, index: slice | Tensor) -> Tensor:
        images = self.cache.images(self.split)
        if isinstance(index, slice) and self.rows is None:
            out = np.array(images[index])  # one contiguous read
        else:
            wanted = index if isinstance(index, slice) else index.cpu().numpy()
            rows = self.rows[wanted] if self.rows is not None else wanted
            forward = np.argsort(rows, kind="stable")
            out = np.empty((len(rows), images.shape[1]), np.uint8)
            out[forward] = images[rows[forward]]
        self.cache.release(self.split)
        return torch.from_numpy(out)


class Normalised:
    """Per-channel normalisation on the device, as float32 [n, 3*S*S]."""

    def __init__(self, mean: list[float], std: list[float], image_size: int) -> None:
        pixels = image_size**2
        self.mean = torch.tensor(mean, dtype=torch.float32).repeat_interleave(pixels)
        self.std = torch.tensor(std, dtype=torch.float32).repeat_interleave(pixels)

    def __call__(self, x: Tensor, device: torch.device) -> Tensor:
        if self.mean.device != device:
            self.mean, self.std = self.mean.to(device), self.std.to(device)
        x = x.to(device, non_blocking=True).float()
        return x.sub_(self.mean).div_(self.std)


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    """`items` produced on a background thread, up to `depth` ahead of the consumer.

    numpy's gather and torch's kernels release the GIL, so the next chunk is read while the model computes. The
    thread stops when the consumer stops (closing this generator), and its errors are raised in the consumer.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as error:  # handed to the consumer, which raises it where it makes sense
            put(_Failed(error))

    thread = threading.Thread(target=produce, name="descent-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()


class PlannedChunks:
    """An epoch's chunks served by the plan in `batches`: as many chunks and optimizer steps as it has."""

    batches: Batches

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def steps(self) -> int:
        return self.batches.steps


class DeviceChunks(PlannedChunks):
    """The `Chunk`s of `batches` (uint8 on the host), gathered ahead on a thread, then moved and normalised."""

    def __init__(self, batches: Batches, normalised: Normalised, device: torch.device, depth: int) -> None:
        self.batches, self.normalised, self.device, self.depth = batches, normalised, device, depth

    def __iter__(self) -> Iterator[Chunk]:
        pin = self.device.type == "cuda"
        host = (chunk._replace(x=chunk.x.pin_memory()) if pin else chunk for chunk in self.batches)
        for chunk in prefetched(host, self.depth):
            x = self.normalised(chunk.x, self.device)
            yield Chunk(x, chunk.y.to(self.device, non_blocking=True), chunk.loss_divisor, chunk.ends_step)


class NormalisedImages:
    """A split's images, read and normalised on demand: what the TensorBoard callback slices as `sets['test']`."""

    def __init__(self, rows: Rows, normalised: Normalised) -> None:
        self.rows, self.normalised = rows, normalised
        self.device = torch.device("cpu")  # the training device, once the trainer has one

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: slice | Tensor) -> Tensor:
        return self.normalised(self.rows[index], self.device)


class StreamedData(ImageData):
    """What the big sets share: sizes resolved at setup, device and rank from the trainer, no set held whole."""

    @property
    def num_train(self) -> int:
        return len(self.splits["train"][1])

    @property
    def input_size(self) -> int:
        return 3 * self.size**2

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer else torch.device("cpu")

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer else 0

    def _chunks(self, split: str, batch_size: int, seed: int | None = None) -> Iterable[Chunk]:
        """One pass over `split` in steps of `batch_size` (shuffled by `seed`), as this rank's chunks."""
        raise NotImplementedError

    def _place_test_set(self) -> None:
        images, y = self.sets["test"]
        images.device = self._device()  # type: ignore[union-attr]
        self.sets["test"] = (images, y.to(images.device))  # type: ignore[union-attr]

    def train_dataloader(self) -> OnePass:
        self._place_test_set()
        return OnePass(self._chunks("train", self.samples_per_step, self.seed))

    def val_dataloader(self) -> list[OnePass]:  # type: ignore[override]
        """The whole training, validation and test sets, in file order, each one pass of chunks."""
        self._place_test_set()
        return [OnePass(self._chunks(name, len(self.splits[name][1]))) for name in EVAL_SETS]

    def _split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Validation and training sample numbers (each sorted), carved as `ImageData` does."""
        require(
            is_whole(self.val_size) and 1 <= self.val_size < n,
            f"data.val_size={self.val_size!r} must be at least 1 and smaller than the {n} training samples it is "
            "carved from",
        )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed)).numpy()
        return np.sort(order[: self.val_size]), np.sort(order[self.val_size :])


class DownsampledImageNet(StreamedData):
    """Imagenet32 or Imagenet64: 1.28M training images (val_size of them held out), the official 50k as the test set.

    `data_dir` holds `train_data_batch_1..10.npz` and `val_data.npz` (or has them one folder below); the cache is
    written to `data_dir/cache/imagenet<S>/` at the first run and reused after.
    """

    def __init__(self, data_dir: str, image_size: int = 32, prefetch_depth: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_dir, self.size, self.prefetch_depth = Path(data_dir), image_size, prefetch_depth
        self.dataset = f"Imagenet{image_size}"
        self.cache: Cache | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.cache is not None:
            return
        require(self.size in (32, 64), f"data.image_size={self.size}: downsampled ImageNet comes in 32 or 64")
        require(
            is_whole(self.prefetch_depth) and self.prefetch_depth >= 1,
            f"data.prefetch_depth={self.prefetch_depth!r} must be a positive number of chunks",
        )
        cache = Cache.prepare(self.data_dir, self.size)
        self.image_shape = (3, self.size, self.size)
        self.normalised = Normalised(cache.header["mean"], cache.header["std"], self.size)
        y_train, y_test = cache.labels("train"), cache.labels("test")
        val, train = self._split(len(y_train))
        self.splits = {
            "train": (Rows(cache, "train", train), y_train[train]),
            "val": (Rows(cache, "train", val), y_train[val]),
            "test": (Rows(cache, "test"), y_test),
        }
        self.cache = cache
        self.sets = {"test": (NormalisedImages(self.splits["test"][0], self.normalised), y_test)}
        self._resolve_sizes()
        log.info(
            "%s: %d training (%d held out for validation) and %d test images from %s",
            self.dataset,
            len(y_train),
            len(val),
            len(y_test),
            cache.directory,
        )

    @property
    def num_classes(self) -> int:
        assert self.cache is not None
        return self.cache.header["num_classes"]

    @property
    def nbytes(self) -> int:
        """What lives on the device: the chunks in flight (uint8 in, float32 out) and the labels, not the file."""
        in_flight = (self.prefetch_depth + 2) * self.samples_per_chunk * self.input_size * (1 + 4)
        return in_flight + sum(8 * len(y) for _, y in self.splits.values())

    def _chunks(self, split: str, batch_size: int, seed: int | None = None) -> DeviceChunks:
        x, y = self.splits[split]
        rank, world_size = self._rank()
        batches = Batches(x, y, batch_size, self.samples_per_chunk, seed, self._epoch, rank, world_size)  # type: ignore[arg-type]
        return DeviceChunks(batches, self.normalised, self._device(), self.prefetch_depth)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
"""torchvision's ImageNet channel statistics, for images in [0, 1]."""


class FolderChunks(PlannedChunks):
    """The `Chunk`s of `batches` read from an image folder by a DataLoader: its workers decode, its memory is pinned.

    `batches` runs over sample positions (x = y = 0..n-1), so each chunk's `y` is the list of samples to load: the
    per-epoch permutation, the per-rank contiguous shares and GD's accumulation over every chunk are those of
    `Batches`. torch's `DistributedSampler` is not used: it pads the ranks with repeated samples to equal lengths,
    which would count some samples twice in an epoch and in GD's exact step.
    """

    def __init__(self, dataset: Any, batches: Batches, device: torch.device, num_workers: int) -> None:
        self.dataset, self.batches, self.device, self.num_workers = dataset, batches, device, num_workers

    def __iter__(self) -> Iterator[Chunk]:
        from torch.utils.data import DataLoader

        plan = list(self.batches)
        loader = DataLoader(
            self.dataset,
            batch_sampler=[chunk.y.tolist() for chunk in plan],
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for (x, y), chunk in zip(loader, plan, strict=True):
            x = x.flatten(1).to(self.device, non_blocking=True)
            yield Chunk(x, y.to(self.device, non_blocking=True), chunk.loss_divisor, chunk.ends_step)


class FolderImages:
    """A folder split's images, loaded on demand: what the TensorBoard callback slices as `sets['test']`."""

    def __init__(self, dataset: Any) -> None:
        self.dataset, self.device = dataset, torch.device("cpu")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: slice | Tensor) -> Tensor:
        positions = range(len(self))[index] if isinstance(index, slice) else index.tolist()
        images = [self.dataset[i][0].flatten() for i in positions]
        return torch.stack(images).to(self.device) if images else torch.zeros(0, 0, device=self.device)


class ImageFolderData(StreamedData):
    """ImageNet's own layout: `data_dir/train/<class>/*.JPEG` (val_size of them held out) and `data_dir/val/<class>/`
    as the test set, resized to `image_size` and centre-cropped by torchvision, decoded by DataLoader workers."""

    def __init__(self, data_dir: str, image_size: int = 32, num_workers: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_dir, self.size, self.num_workers = Path(data_dir), image_size, num_workers
        self.dataset = "ImageFolder"
        self.splits: dict[str, tuple[Any, Tensor]] = {}

    def _folder(self, name: str) -> Any:
        from torchvision import datasets, transforms

        directory = self.data_dir / name
        require(
            directory.is_dir(),
            f"data.data_dir={self.data_dir}: no {name}/ folder; expected {name}/<class>/<image> as ImageNet has it",
        )
        transform = transforms.Compose(
            [
                transforms.Resize(self.size),
                transforms.CenterCrop(self.size),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
        try:
            folder = datasets.ImageFolder(directory, transform=transform)
        except FileNotFoundError as error:  # no class folders, or class folders without images
            raise DescentError(f"{directory}: no images found ({error})") from None
        require(len(folder) > 0, f"{directory}: no images found")
        return folder

    def setup(self, stage: str | None = None) -> None:
        from torch.utils.data import Subset

        if self.splits:
            return
        require(
            is_whole(self.size) and self.size >= 1,
            f"data.image_size={self.size!r} must be a positive number of pixels",
        )
        train, test = self._folder("train"), self._folder("val")
        require(
            test.classes == train.classes,
            f"{self.data_dir}: val/ has the classes {test.classes[:5]}... but train/ has {train.classes[:5]}...; "
            "both need the same class folders",
        )
        self.image_shape = (3, self.size, self.size)
        self.names = list(train.classes)
        y_train = torch.tensor(train.targets)
        val, rest = self._split(len(train))
        self.splits = {
            "train": (Subset(train, rest.tolist()), y_train[rest]),
            "val": (Subset(train, val.tolist()), y_train[val]),
            "test": (test, torch.tensor(test.targets)),
        }
        self.sets = {"test": (FolderImages(test), self.splits["test"][1])}
        self._resolve_sizes()
        log.info(
            "image folder %s: %d training (%d held out) and %d test images",
            self.data_dir,
            len(train),
            len(val),
            len(test),
        )

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def class_names(self) -> list[str]:
        return self.names

    @property
    def nbytes(self) -> int:
        """What lives on the device: the chunks in flight as float32, not the folder."""
        return (2 * self.num_workers + 2) * self.samples_per_chunk * self.input_size * 4

    def _chunks(self, split: str, batch_size: int, seed: int | None = None) -> FolderChunks:
        dataset, _ = self.splits[split]
        positions = torch.arange(len(dataset))
        rank, world_size = self._rank()
        batches = Batches(positions, positions, batch_size, self.samples_per_chunk, seed, self._epoch, rank, world_size)
        return FolderChunks(dataset, batches, self._device(), self.num_workers)
