"""The networks: any `nn.Module` built from `input_shape` ([C, H, W]) and `num_classes`, returning logits.

A config names one under `model.net` (`_target_` plus its settings); the data supplies the two sizes. A network
may define `check(**settings)` to refuse bad settings before any data is loaded.
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from descent.errors import is_number, is_whole, require

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class MLP(nn.Sequential):
    """Linear layers of the given widths with an activation (and dropout, if any) between them; logits out.

    The images are flattened on the way in: an MLP sees each sample as one vector of C*H*W inputs.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (512, 512),
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        self.check(hidden, activation, dropout)
        widths = [int(torch.tensor(input_shape).prod()), *(int(width) for width in hidden)]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(widths, widths[1:], strict=False):
            # ReLU in place: nothing else reads the linear layer's output (its backward needs only its input).
            f = nn.ReLU(inplace=True) if activation == "relu" else ACTIVATIONS[activation]()
            layers += [nn.Linear(n_in, n_out), f]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(widths[-1], num_classes))
        super().__init__(*layers)
        # He-style init, scaled by the gain of the activation that follows (1 for the logits): PyTorch's default
        # uniform init is a third as wide for ReLU and costs about two points of test accuracy after 3 epochs.
        linears = [layer for layer in layers if isinstance(layer, nn.Linear)]
        for i, layer in enumerate(linears):
            gain = nn.init.calculate_gain(activation) if i < len(linears) - 1 else 1.0
            nn.init.normal_(layer.weight, std=gain / layer.in_features**0.5)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.flatten(1))

    @staticmethod
    def check(hidden: object = (), activation: object = "relu", dropout: object = 0.0) -> None:
        require(
            isinstance(hidden, Sequence)
            and not isinstance(hidden, str)
            and all(is_whole(width) and width >= 1 for width in hidden),
            f"model.net.hidden={hidden!r} is not allowed: give a list of positive layer widths, e.g. "
            "model.net.hidden=[512,512] (or [] for none)",
        )
        require(
            activation in ACTIVATIONS, f"model.net.activation={activation!r} is not one of {', '.join(ACTIVATIONS)}"
        )
        require(
            is_number(dropout) and 0 <= dropout < 1,
            f"model.net.dropout={dropout!r} is not allowed: give a probability in [0, 1)",
        )


class LeNet(nn.Module):
    """A LeNet-5-style CNN: two 5x5 convolutions with ReLU and 2x2 max pooling, then three linear layers.

    The first convolution pads by 2, so 28x28 images give LeNet's 5x5 maps of `channels[1]` before the linear part.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (6, 16),
        hidden: Sequence[int] = (120, 84),
    ) -> None:
        self.check(channels, hidden)
        super().__init__()
        c1, c2 = (int(c) for c in channels)
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], c1, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *input_shape)).shape[1]
        widths = [flat, *(int(width) for width in hidden)]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(widths, widths[1:], strict=False):
            layers += [nn.Linear(n_in, n_out), nn.ReLU(inplace=True)]
        self.classifier = nn.Sequential(*layers, nn.Linear(widths[-1], num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

    @staticmethod
    def check(channels: object = (6, 16), hidden: object = (120, 84)) -> None:
        require(
            isinstance(channels, Sequence) and len(channels) == 2 and all(is_whole(c) and c >= 1 for c in channels),
            f"model.net.channels={channels!r} is not allowed: give the two convolutions' channel counts, e.g. [6,16]",
        )
        require(
            isinstance(hidden, Sequence)
            and not isinstance(hidden, str)
            and all(is_whole(width) and width >= 1 for width in hidden),
            f"model.net.hidden={hidden!r} is not allowed: give a list of positive layer widths, e.g. [120,84]",
        )


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the input (through a 1x1 convolution where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        return self.conv2(torch.relu(self.bn2(out))) + shortcut


class ResNet(nn.Module):
    """A pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual Networks") for small images:
    a 3x3 convolution, three stages of (depth - 2) / 6 blocks of `width`, 2*`width` and 4*`width` channels (the
    last two halve the resolution: 28x28 -> 7x7, 32x32 -> 8x8), BatchNorm and ReLU, global average pooling, logits.
    `depth` counts the weighted layers as the paper's CIFAR ResNets do (8, 14, 20, 32, 56, ...)."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, depth: int = 8, width: int = 16) -> None:
        self.check(depth, width)
        super().__init__()
        blocks = (depth - 2) // 6
        self.stem = nn.Conv2d(input_shape[0], width, 3, padding=1, bias=False)
        layers: list[nn.Module] = []
        c_in = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for block in range(blocks):
                layers.append(PreActBlock(c_in, c_out, 2 if stage > 0 and block == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))

    @staticmethod
    def check(depth: object = 8, width: object = 16) -> None:
        require(
            is_whole(depth) and depth >= 8 and (depth - 2) % 6 == 0,
            f"model.net.depth={depth!r} is not allowed: give 6n+2 for n >= 1 blocks per stage (8, 14, 20, 32, ...)",
        )
        require(is_whole(width) and width >= 1, f"model.net.width={width!r} is not allowed: give a positive number")
