"""Downsampled ImageNet (Imagenet32/64) read from its memory-mapped cache: no set is held in memory.

Each chunk's rows are gathered by index from the cache's memory map on a background thread (`prefetch_depth` chunks
ahead), moved to the device as uint8 and normalised there. Resident memory is the chunks in flight, whatever N.
"""

import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from descent.data.base import ImageData
from descent.data.npz_cache import Cache
from descent.data.steps import Index
from descent.errors import is_whole, require

log = logging.getLogger(__name__)
T = TypeVar("T")


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


class MemoryMapped:
    """`Images` of one split of the cache: rows gathered by index, normalised per channel on the device.

    `rows` maps the split's sample numbers to rows of the file (None: all rows, in file order).
    """

    def __init__(self, cache: Cache, split: str, depth: int, rows: np.ndarray | None = None) -> None:
        self.cache, self.split, self.depth, self.rows = cache, split, depth, rows
        size = cache.header["image_size"]
        self.shape = (3, size, size)
        self.device = torch.device("cpu")
        self.mean = torch.tensor(cache.header["mean"], dtype=torch.float32).reshape(3, 1, 1)
        self.std = torch.tensor(cache.header["std"], dtype=torch.float32).reshape(3, 1, 1)

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.cache.images(self.split))

    def subset(self, rows: Tensor) -> "MemoryMapped":
        mine = rows.numpy() if self.rows is None else self.rows[rows.numpy()]
        return MemoryMapped(self.cache, self.split, self.depth, mine)

    def to(self, device: torch.device) -> "MemoryMapped":
        self.device, self.mean, self.std = device, self.mean.to(device), self.std.to(device)
        return self

    def gather(self, index: Index) -> Tensor:
        """uint8 [n, 3, S, S] on the host; the rows are read in file order, so a step's reads go forward."""
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
        host = torch.from_numpy(out).reshape(len(out), *self.shape)
        return host.pin_memory() if self.device.type == "cuda" else host

    def read(self, indices: Iterable[Index]) -> Iterator[Tensor]:
        for host in prefetched((self.gather(index) for index in indices), self.depth):
            x = host.to(self.device, non_blocking=True).float()
            yield x.sub_(self.mean).div_(self.std)


class DownsampledImageNet(ImageData):
    """Imagenet32 or Imagenet64: 1.28M training images (val_size of them held out), the official 50k as the test set.

    `data_dir` holds `train_data_batch_1..10.npz` and `val_data.npz` (or has them one folder below); the cache is
    written to `data_dir/cache/imagenet<S>/` at the first run and reused after.
    """

    def __init__(self, data_dir: str, image_size: int = 32, prefetch_depth: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_dir, self.size, self.prefetch_depth = Path(data_dir), image_size, prefetch_depth
        self.dataset = f"Imagenet{image_size}"

    def load(self) -> tuple[MemoryMapped, Tensor, MemoryMapped, Tensor]:
        require(self.size in (32, 64), f"data.image_size={self.size}: downsampled ImageNet comes in 32 or 64")
        require(
            is_whole(self.prefetch_depth) and self.prefetch_depth >= 1,
            f"data.prefetch_depth={self.prefetch_depth!r} must be a positive number of chunks",
        )
        cache = Cache.prepare(self.data_dir, self.size)
        y_train, y_test = cache.labels("train"), cache.labels("test")
        log.info(
            "%s: %d training (%d held out for validation) and %d test images from %s",
            self.dataset,
            len(y_train),
            self.val_size,
            len(y_test),
            cache.directory,
        )
        depth = self.prefetch_depth
        return MemoryMapped(cache, "train", depth), y_train, MemoryMapped(cache, "test", depth), y_test

    @property
    def chunks_in_flight(self) -> int:  # type: ignore[override]
        """Read ahead, being moved and normalised, being computed on."""
        return self.prefetch_depth + 2
