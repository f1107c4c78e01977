"""Downsampled ImageNet's release files (Chrabaszcz et al. 2017) converted once into a uint8 memory-mapped cache.

The release's `.npz` batch files are checked and written into raw array files next to the data, with a header
(shapes, per-channel mean and std) written last, so a killed conversion never looks complete.
"""

import contextlib
import fcntl
import json
import logging
import mmap
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from descent.errors import DescentError, require

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
