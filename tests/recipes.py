"""The "Adapting descent" recipes' files as docs/adapting.md prints them (a network, an in-memory data set, a data
set read on demand), and learnable images to train them on: for test_adapting.py, which follows the recipes, and
test_fork.py, whose fork adds the first two to its own config dir."""

import numpy as np

MY_NETS = '''\
from torch import nn

from descent.errors import require


class SmallCNN(nn.Module):
    """Two 3x3 convolutions of `channels` filters, each with ReLU and 2x2 max pooling, then a linear layer."""

    def __init__(self, input_shape, num_classes, channels=16):
        self.check(channels)
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.logits = nn.Linear(channels * (h // 4) * (w // 4), num_classes)

    def forward(self, x):
        return self.logits(self.features(x))

    @staticmethod
    def check(channels=16):  # optional: run on the settings before any data is loaded
        require(isinstance(channels, int) and channels >= 1,
                f"model.net.channels={channels!r} is not allowed: give a positive number of filters")
'''

SMALL_CNN_YAML = """\
_target_: descent.module.Classifier
net:
  _target_: my_nets.SmallCNN
  channels: 16
backprop: autograd
"""

SEARCH_SPACE_YAML = """\
# @package _global_
hydra:
  sweeper:
    params:
      model.net.channels: choice(8, 16, 32)
"""

MY_DATA = '''\
import numpy as np
import torch

from descent.data import ImageData

ARRAYS = ("x_train", "y_train", "x_test", "y_test")


class NpzData(ImageData):
    """x_train [N, C, H, W] or [N, H, W] of any dtype, y_train [N], x_test, y_test: arrays in one .npz file."""

    def __init__(self, path, **kwargs):
        super().__init__(**kwargs)
        self.path = path

    def load(self):
        with np.load(self.path) as f:
            x_train, y_train, x_test, y_test = (torch.from_numpy(f[name]) for name in ARRAYS)
        return x_train, y_train.long(), x_test, y_test.long()

    @property
    def class_names(self):  # optional: titles in TensorBoard's image grid and confusion matrix
        return ["top left", "top right", "bottom left", "bottom right"]
'''

MY_NPZ_YAML = """\
_target_: my_data.NpzData
path: data/my_set.npz
val_size: 1000         # carved from the training set by split_seed
"""

MY_BIG_DATA = '''\
from pathlib import Path

import numpy as np
import torch

from descent.data import ImageData


class MemmapImages:
    """uint8 images [N, C, H, W] in a raw file, read row by row when a chunk is asked for (descent.data.Images)."""

    def __init__(self, path, shape, rows=None):
        self.path, self.shape = path, tuple(shape)
        self.file = np.memmap(path, np.uint8, "r").reshape(-1, *self.shape)
        self.rows = np.arange(len(self.file)) if rows is None else rows
        self.device = torch.device("cpu")

    def __len__(self):
        return len(self.rows)

    def subset(self, rows):  # rows: a tensor of positions in this set
        return MemmapImages(self.path, self.shape, self.rows[rows.numpy()])

    def to(self, device):
        self.device = device
        return self

    def read(self, indices):  # each index: a slice or a tensor of positions
        for index in indices:
            rows = self.rows[index if isinstance(index, slice) else index.cpu().numpy()]
            x = torch.from_numpy(self.file[rows]).to(self.device).float()
            yield x.sub_(127.5).div_(64.0)  # normalise: here by fixed figures, or your set's mean and std


class BigData(ImageData):
    """data_dir/{train,test}_x.u8 (raw uint8 [N, C, H, W]) and data_dir/{train,test}_y.npy (labels)."""

    def __init__(self, data_dir, image_shape, **kwargs):
        super().__init__(**kwargs)
        self.data_dir, self.image_shape = Path(data_dir), image_shape

    def load(self):
        x = {s: MemmapImages(self.data_dir / f"{s}_x.u8", self.image_shape) for s in ("train", "test")}
        y = {s: torch.from_numpy(np.load(self.data_dir / f"{s}_y.npy")).long() for s in ("train", "test")}
        return x["train"], y["train"], x["test"], y["test"]
'''

BIG_YAML = """\
_target_: my_big_data.BigData
data_dir: data/big
image_shape: [3, 32, 32]
val_size: 10000
"""


def quadrant_images(n: int, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """uint8 noise [n, C, H, W], the quadrant of the class (0-3) brighter: learnable in an epoch or two."""
    labels = rng.integers(0, 4, n)
    images = rng.integers(0, 128, (n, *shape), dtype=np.uint8)
    h, w = shape[1] // 2, shape[2] // 2
    for i, label in enumerate(labels):
        top, left = divmod(int(label), 2)
        images[i, :, top * h : (top + 1) * h, left * w : (left + 1) * w] += 100
    return images, labels
