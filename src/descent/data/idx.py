"""MNIST and its drop-in relatives (Fashion-MNIST, KMNIST): the four IDX files of the original release."""

import gzip
import logging
import math
import struct
from pathlib import Path

import torch
from torch import Tensor

from descent.data.base import ImageData
from descent.errors import DescentError, require

log = logging.getLogger(__name__)

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_UBYTE = 0x08
IDX_CLASSES = 10
"""MNIST, Fashion-MNIST and KMNIST all have ten classes."""


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
    # bytes are read-only; a bytearray of them is the one copy, and the tensor shares it.
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header_size).reshape(shape)


def find_file(directories: list[Path], name: str) -> Path | None:
    for directory in directories:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


class IdxData(ImageData):
    """The four IDX files, held whole on the training device as [N, 1, H, W].

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
            how += ", or install Debian's dataset-fashion-mnist package (make data)"
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
