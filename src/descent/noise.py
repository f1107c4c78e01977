"""The gradient noise at theta^k after every epoch (opt-in: noise.enabled=true), as McCandlish et al. (2018),
"An Empirical Model of Large-Batch Training", define it: how far a minibatch gradient strays from the full one.

G is the exact gradient of the mean training loss over all N samples at theta^k, chunked and spread over ranks as a
GD step is; g_1..g_m are the gradients of the mean loss over m minibatches of b samples, each drawn without
replacement. With x_j the per-sample gradients and Sigma = (1/N) sum_j (x_j - G)(x_j - G)^T their covariance over
the training set, E|g - G|^2 = tr(Sigma) / b * (N - b) / (N - 1) (the finite-population correction), so

    tr(Sigma) ~ b (N - 1) / (N - b) * (1/m) sum_i |g_i - G|^2      unbiased
    B_simple  = tr(Sigma) / |G|^2                                   unbiased too: |G|^2 is exact, G being exact

B_simple is the batch size at which a step's noise is as large as its signal: far below it SGD's steps are mostly
noise (the lecture's "SGD is noisier"), far above it a bigger batch buys little. Cost: one forward and backward
pass over the training set, in the run's chunks, plus m * b samples; no optimizer steps: less than a training epoch
(the pass reads chunks of `chunk_size`, as the evaluation does).
"""

import math
from typing import TYPE_CHECKING

import lightning
import torch
from torch import Tensor

from descent import results
from descent.config import check_noise
from descent.errors import require
from descent.measurement import EpochMeasurement, gradient

if TYPE_CHECKING:
    from descent.module import Classifier

STREAM = 0x6E6F697365
"""Added to the draws' seed ("noise" in ASCII): apart from the training order's seed * 1_000_003 + epoch."""


def draws(seed: int, epoch: int, n: int, batch_size: int, samples: int) -> list[Tensor]:
    """`samples` sets of `batch_size` distinct rows of the N, independent of each other, from (seed, epoch) alone:
    the same on every rank and for any number of ranks, and again when a resumed run measures that epoch."""
    generator = torch.Generator().manual_seed(STREAM + seed * 1_000_003 + epoch)
    # Sorted: a streamed set reads its rows in file order; the sum over them is the same in any order.
    return [torch.randperm(n, generator=generator)[:batch_size].sort().values for _ in range(samples)]


class GradientNoise(EpochMeasurement):
    """Adds results.NOISE to the figures of every evaluated epoch of fit: |G| (the norm, not its square),
    tr(Sigma) and B_simple, from `samples` minibatches of `batch_size` (noise.batch_size, noise.samples)."""

    def __init__(self, batch_size: int = 64, samples: int = 16) -> None:
        check_noise(batch_size, samples)
        self.batch_size, self.samples = batch_size, samples

    def on_fit_start(self, trainer: lightning.Trainer, module: "Classifier") -> None:
        n = len(trainer.datamodule.sets["train"][1])
        require(
            self.batch_size < n,
            f"noise.batch_size={self.batch_size} must be smaller than the N={n} training samples: a minibatch of "
            "all of them is the full batch, with no noise to measure",
        )

    def measure(self, trainer: lightning.Trainer, module: "Classifier") -> dict[str, float]:
        """results.NOISE at the module's present weights."""
        data = trainer.datamodule
        images, labels = data.sets["train"]
        n, b, chunk = len(labels), self.batch_size, data.samples_per_chunk
        rows = [r.to(labels.device) for r in draws(data.seed or 0, module.current_epoch, n, b, self.samples)]
        # In eval mode, as every figure of theta^k: dropout's random masks would add a noise of their own to each
        # gradient (and make G not that of the train/loss logged), and batch norm would couple a batch's samples.
        full = gradient(module, images, labels, None, chunk)
        spread = [(gradient(module, images, labels, r, chunk) - full).square().sum() for r in rows]
        squared_norm = float(full.square().sum())
        trace = b * (n - 1) / (n - b) * float(torch.stack(spread).mean())
        b_simple = trace / squared_norm if squared_norm > 0 else math.inf
        return dict(zip(results.NOISE, (math.sqrt(squared_norm), trace, b_simple), strict=True))
