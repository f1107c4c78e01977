"""Files in the formats descent reads, written for the tests and the benchmarks (which import this module): IDX
files as MNIST ships them, downsampled-ImageNet .npz files, image folders.

Each class has a random prototype image; a sample is its class's prototype plus uniform noise, so a network can
learn the classes (the tests check that training lowers the loss) while speed and memory are those of real data.
"""

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from descent.data.idx import IDX_UBYTE


def write_idx(path: Path, array: Tensor) -> None:
    """`read_idx` backwards: a uint8 tensor as an IDX file (gzipped when the name ends in .gz), as MNIST ships."""
    header = bytes([0, 0, IDX_UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.to(torch.uint8).contiguous().numpy().tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


RELEASE_TRAIN_FILES = 10  # train_data_batch_1..10.npz, as the release has them
BLOCK_ROWS = 16_384  # rows generated at a time: bounds the generator's own memory


def class_images(labels: np.ndarray, prototypes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 images [n, *prototype shape]: half prototype, half noise."""
    noise = rng.integers(0, 128, size=(len(labels), *prototypes.shape[1:]), dtype=np.uint8)
    return prototypes[labels] + noise  # prototypes are < 128: no overflow


def write_npz_set(out: Path, train: int, val: int, size: int, classes: int, seed: int = 0) -> None:
    """`train_data_batch_<k>.npz` (k = 1..10, fewer for small sets) and `val_data.npz`: `data` [n, 3*S*S] uint8,
    channel-planar, and 1-based `labels`, as in Chrabaszcz et al. 2017."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 128, size=(classes, 3 * size * size), dtype=np.uint8)
    files = min(RELEASE_TRAIN_FILES, max(1, train // 1000))
    bounds = [train * k // files for k in range(files + 1)]
    parts = [(f"train_data_batch_{k + 1}.npz", bounds[k + 1] - bounds[k]) for k in range(files)]
    for name, n in [*parts, ("val_data.npz", val)]:
        labels = rng.integers(0, classes, size=n)
        data = np.empty((n, 3 * size * size), np.uint8)
        for start in range(0, n, BLOCK_ROWS):
            data[start : start + BLOCK_ROWS] = class_images(labels[start : start + BLOCK_ROWS], prototypes, rng)
        np.savez(out / name, data=data, labels=labels + 1)
        del data


def write_image_folder(out: Path, train: int, val: int, size: int, classes: int, seed: int = 0) -> None:
    """`train/<class>/<i>.png` and `val/<class>/<i>.png`, `train` and `val` images per class (PNG: lossless)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 128, size=(classes, size, size, 3), dtype=np.uint8)
    for split, per_class in (("train", train), ("val", val)):
        for label in range(classes):
            directory = out / split / f"class_{label:03d}"
            directory.mkdir(parents=True, exist_ok=True)
            images = class_images(np.full(per_class, label), prototypes, rng)
            for i, image in enumerate(images):
                Image.fromarray(image).save(directory / f"{i}.png")
