"""Write synthetic data in the formats descent reads at ImageNet scale: downsampled-ImageNet .npz files, image folders.

Each class has a random prototype image; a sample is its class's prototype plus uniform noise, so an MLP can learn
the classes (the tests check that training lowers the loss) while speed and memory are those of real data.

    python bench/make_imagenet.py --out DIR --train 1281167 --val 50000 --size 32 --classes 1000   # full Imagenet32
    python bench/make_imagenet.py --out DIR --folder --train 12 --val 6 --classes 3              # a tiny image folder
"""

import argparse
from pathlib import Path

import numpy as np

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=1_281_167, help="training images (per class with --folder)")
    parser.add_argument("--val", type=int, default=50_000, help="validation images (per class with --folder)")
    parser.add_argument("--size", type=int, default=32, help="image side S: 32 or 64 for downsampled ImageNet")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", action="store_true", help="an ImageFolder tree of PNGs instead of .npz files")
    args = parser.parse_args()
    write = write_image_folder if args.folder else write_npz_set
    write(args.out, args.train, args.val, args.size, args.classes, args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
