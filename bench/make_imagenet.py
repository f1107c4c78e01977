"""Write synthetic data in the formats descent reads at ImageNet scale: downsampled-ImageNet .npz files, image folders.

Each class has a random prototype image; a sample is its class's prototype plus uniform noise, so an MLP can learn
the classes (the tests check that training lowers the loss) while speed and memory are those of real data.

    python bench/make_imagenet.py --out DIR --train 1281167 --val 50000 --size 32 --classes 1000   # full Imagenet32
    python bench/make_imagenet.py --out DIR --folder --train 12 --val 6 --classes 3              # a tiny image folder
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the writers the tests use
from data_files import write_image_folder, write_npz_set  # noqa: E402


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
