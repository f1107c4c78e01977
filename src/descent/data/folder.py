"""ImageNet's own layout, `train/<class>/*.JPEG` and `val/<class>/*.JPEG`: torchvision's `ImageFolder`, decoded by
DataLoader workers into pinned memory, chunk by chunk as the plan asks."""

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from descent.data.base import ImageData
from descent.data.steps import Index
from descent.errors import DescentError, is_whole, require

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
"""torchvision's ImageNet channel statistics, for images in [0, 1]."""


class Folder:
    """`Images` of a folder set (or a subset of it): each chunk's images loaded by a DataLoader's workers.

    The DataLoader's batches are the plan's chunks, so the per-epoch permutation, the per-rank shares and GD's
    accumulation over every chunk are those of `Plan`. torch's `DistributedSampler` is not used: it pads the ranks
    with repeated samples to equal lengths, which would count some samples twice in an epoch and in GD's exact step.
    """

    def __init__(self, dataset: Any, size: int, num_workers: int) -> None:
        self.dataset, self.num_workers = dataset, num_workers
        self.shape = (3, size, size)
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self.dataset)

    def subset(self, rows: Tensor) -> "Folder":
        from torch.utils.data import Subset

        return Folder(Subset(self.dataset, rows.tolist()), self.shape[1], self.num_workers)

    def to(self, device: torch.device) -> "Folder":
        self.device = device
        return self

    def read(self, indices: Iterable[Index]) -> Iterator[Tensor]:
        from torch.utils.data import DataLoader

        positions = range(len(self))
        batches = [list(positions[i]) if isinstance(i, slice) else i.tolist() for i in indices]
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        return (x.to(self.device, non_blocking=True) for x, _ in loader)


class ImageFolderData(ImageData):
    """`data_dir/train/<class>/*.JPEG` (val_size of them held out) and `data_dir/val/<class>/` as the test set,
    resized to `image_size` and centre-cropped by torchvision, decoded by `num_workers` DataLoader workers."""

    def __init__(self, data_dir: str, image_size: int = 32, num_workers: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_dir, self.size, self.num_workers = Path(data_dir), image_size, num_workers
        self.dataset = "ImageFolder"

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

    def load(self) -> tuple[Folder, Tensor, Folder, Tensor]:
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
        self.names = list(train.classes)
        log.info("image folder %s: %d training and %d test images", self.data_dir, len(train), len(test))
        images = (Folder(folder, self.size, self.num_workers) for folder in (train, test))
        return next(images), torch.tensor(train.targets), next(images), torch.tensor(test.targets)

    @property
    def class_names(self) -> list[str]:
        return self.names

    @property
    def chunks_in_flight(self) -> int:  # type: ignore[override]
        """Two per DataLoader worker (its prefetch), one being moved, one being computed on."""
        return 2 * self.num_workers + 2
