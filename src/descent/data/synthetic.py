"""Synthetic data: random MNIST-shaped sets for smoke runs (nothing to download).

Each class has a random prototype image and a sample is its class's prototype plus noise, so a network can learn
the classes while speed and memory are those of real data. (Files in the formats descent reads, for the tests and
benchmarks, are written by tests/data_files.py.)
"""

import torch
from torch import Tensor

from descent.data.base import ImageData


class SyntheticData(ImageData):
    """One random prototype image per class plus Gaussian noise, images [N, *image_shape]."""

    def __init__(
        self,
        num_train: int = 6000,
        num_test: int = 1000,
        num_classes: int = 10,
        image_shape: tuple[int, ...] = (1, 28, 28),
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
