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
