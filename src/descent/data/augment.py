"""Random crops and horizontal flips of the training images, batched on the device as airbench does them.

Each sample is translated by up to `crop_padding` pixels each way (a crop of the image padded by reflection, so
no black border appears) and flipped left-right with probability 1/2. The draws come from (seed, epoch, sample)
alone: the sample's row in the training set, not its place in a step, so a resumed run, any number of ranks, any
batch or chunk size see exactly the same augmented images. Only the training steps are augmented (`Steps`); the
evaluation, the gradient-noise measurement and every other reader of a set see the images as stored.
"""

import torch
from torch import Tensor

from descent.errors import is_whole, require

STREAM = 0x6175676D656E74
"""Added to the draws' seed ("augment" in ASCII): apart from the training order's and the noise draws' streams."""


class Augment:
    """`data.augment={crop_padding: 2, flip: true}`: the keys are these arguments; null or false is off."""

    def __init__(self, crop_padding: int = 2, flip: bool = True) -> None:
        require(
            is_whole(crop_padding) and crop_padding >= 0,
            f"data.augment.crop_padding={crop_padding!r} is not allowed: give a number of pixels, 0 or more",
        )
        require(isinstance(flip, bool), f"data.augment.flip={flip!r} is not allowed: give true or false")
        self.crop_padding, self.flip = crop_padding, flip

    def check(self, input_shape: tuple[int, ...]) -> None:
        """Reflection needs a padding smaller than the image: said when the data's shape is known."""
        require(
            len(input_shape) == 3 and self.crop_padding < min(input_shape[1:]),
            f"data.augment.crop_padding={self.crop_padding} must be smaller than the images' height and width "
            f"(images {list(input_shape)}, [C, H, W])",
        )

    def draws(self, seed: int, epoch: int, n: int) -> Tensor:
        """[n, 3] int16 for each sample of the set: its vertical and horizontal shift, and 1 to flip it. Drawn on the
        CPU, the same numbers whatever the device."""
        generator = torch.Generator().manual_seed(STREAM + seed * 1_000_003 + epoch)
        p = self.crop_padding
        shifts = torch.randint(-p, p + 1, (n, 2), generator=generator, dtype=torch.int16)
        flips = torch.randint(0, 2 if self.flip else 1, (n, 1), generator=generator, dtype=torch.int16)
        return torch.cat([shifts, flips], dim=1)

    def __call__(self, x: Tensor, draws: Tensor) -> Tensor:
        """Images [n, C, H, W] shifted and flipped by their `draws` [n, 3]: one gather, no loop over samples.

        out[i, j] = x[reflect(i + dy), reflect(j' + dx)] with j' = W - 1 - j when flipped: the image padded by
        reflection, cropped at (dy, dx) from its centre, then flipped.
        """
        n, channels, height, width = x.shape
        dy, dx, flip = draws.to(torch.long).unbind(1)
        rows = reflect(torch.arange(height, device=x.device) + dy[:, None], height)  # [n, H]
        columns = torch.arange(width, device=x.device).expand(n, width)
        columns = reflect(torch.where(flip[:, None] == 1, width - 1 - columns, columns) + dx[:, None], width)
        pixels = (rows[:, :, None] * width + columns[:, None, :]).reshape(n, 1, height * width)
        return x.reshape(n, channels, height * width).gather(2, pixels.expand(n, channels, -1)).view_as(x)


def reflect(position: Tensor, size: int) -> Tensor:
    """Positions up to size - 1 outside [0, size) mirrored back inside, as torch's reflect padding does."""
    position = position.abs()
    return torch.where(position > size - 1, 2 * (size - 1) - position, position)
