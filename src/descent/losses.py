"""What a chunk's loss must be for every step and figure to be exact: a sum over the chunk's samples (a step divides
it by its own size), and plain cross-entropy where the gradient is written out by hand (model.backprop=manual)."""

from collections.abc import Callable

import torch
from torch import Tensor, nn

from descent.backprop import check_backprop, check_mlp
from descent.errors import require

Loss = Callable[[Tensor, Tensor], Tensor]


def check_loss(loss: Loss, backprop: str, net: nn.Module) -> None:
    """Refuse an unknown backprop, a loss that declares another reduction, and anything but plain cross-entropy
    (and an MLP) for manual backprop."""
    check_backprop(backprop)
    reduction = getattr(loss, "reduction", "sum")
    require(
        reduction == "sum",
        f"model.loss.reduction={reduction!r}: descent sums the loss over each chunk and divides by the step's own "
        "size, so the step is exact in any chunks; set model.loss.reduction=sum",
    )
    if backprop == "manual":
        check_mlp(net)
        require(
            is_plain_cross_entropy(loss),
            f"model.backprop=manual writes out the gradient of plain cross-entropy, not of {loss}; use "
            "model.backprop=autograd or the plain loss (loss=cross_entropy, label_smoothing 0)",
        )


def check_loss_sums(loss: Loss, num_classes: int, dtype: torch.dtype, device: torch.device) -> None:
    """A loss that averages makes every chunked step and figure wrong without an error: the sum over twice the
    samples must be twice the sum (checked at fit start, where the data's classes are known)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, num_classes, generator=generator, dtype=dtype).to(device)
    y = torch.randint(num_classes, (4,), generator=generator).to(device)
    one, twice = loss(logits, y), loss(torch.cat([logits, logits]), torch.cat([y, y]))
    require(
        one.dim() == 0 and torch.allclose(twice, 2 * one),
        f"model.loss ({loss}) does not return the sum over the chunk's samples (one number, doubled for the "
        "samples twice over); descent divides a step's sum by the step's size: make it sum",
    )


def is_plain_cross_entropy(loss: Loss) -> bool:
    return (
        type(loss) is nn.CrossEntropyLoss
        and loss.weight is None
        and loss.label_smoothing == 0
        and loss.ignore_index < 0
        and loss.reduction == "sum"
    )


def check_precision(backprop: str, precision_plugin: object, precision: str) -> None:
    """Manual backprop bypasses autograd, through which a loss scaler (16-bit precision) works."""
    require(
        backprop == "autograd" or getattr(precision_plugin, "scaler", None) is None,
        f"model.backprop=manual with trainer.precision={precision}: its loss scaler works through autograd; use "
        "model.backprop=autograd or another precision",
    )
