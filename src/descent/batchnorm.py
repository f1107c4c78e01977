"""BatchNorm whose figures do not depend on chunk size, rank count or step size.

A BatchNorm layer normalises each sample by statistics of the other samples in its forward call, so a step computed
in chunks, or on several ranks, would normalise by different sets of samples than one pass over the step. descent
fixes the sets instead:

- in training, every BatchNorm normalises groups of `model.norm_batch_size` consecutive samples of the step, each
  by its own mean and variance (ghost batch norm, Hoffer et al. 2017); a step's chunks and rank shares are cut at
  group boundaries (`descent.data.Plan`), so the step's gradient is that of one pass, whatever the chunking;
- its running statistics are not moved by training steps; before every evaluation they are recomputed from the
  whole training set at theta^k: the population mean and variance of each layer's input, as training computes it
  (groups of `norm_batch_size` in the stored order), summed over chunks and ranks (precise BatchNorm, Wu and
  Johnson 2021). Every figure of theta^k (train, val, test, best.ckpt) uses those statistics.

Any other module that mixes the samples of a batch is found by a probe before training (`check_samples_apart`).
"""

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from descent.data import set_chunks
from descent.errors import DescentError, is_whole, require

log = logging.getLogger(__name__)


class GhostBatchNorm(_BatchNorm):
    """BatchNorm over fixed groups of `group_size` consecutive samples (the last group of a call may be smaller);
    in eval mode, the running statistics, as nn.BatchNorm. Its state dict is that of the BatchNorm it replaces."""

    def __init__(self, num_features: int, group_size: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_features, eps=eps, momentum=None, affine=affine, track_running_stats=True)
        self.group_size = group_size
        self.sums: Tensor | None = None  # [3, C] float64 while precise statistics are collected: count, sum, sum^2

    def _check_input_dim(self, x: Tensor) -> None:
        require(x.dim() >= 2, f"a BatchNorm input must be [N, C, ...], got shape {list(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        if self.sums is not None and len(x):
            # Per sample first, over the contiguous positions, then over samples in float64: x * x never exists.
            flat = x.reshape(len(x), x.shape[1], -1)
            count = torch.full_like(self.sums[0], flat.shape[0] * flat.shape[2])
            total = flat.sum(2).double().sum(0)
            squares = torch.linalg.vector_norm(flat, dim=2).double().square().sum(0)
            self.sums += torch.stack([count, total, squares])
        n, g = len(x), self.group_size
        full = n - n % g
        parts = [self._groups(x[:full], full // g)] if full else []
        if full < n:
            parts.append(self._groups(x[full:], 1))
        return torch.cat(parts) if len(parts) > 1 else parts[0] if parts else self._affine(x)

    def _groups(self, x: Tensor, k: int) -> Tensor:
        """`x` normalised as k equal groups of consecutive samples: each group's channels become channels of one
        batch of size n/k (a view to [n/k, k*C, ...]), so the native kernel computes every group's statistics."""
        if x[:1].numel() == x.shape[1] and len(x) == k:  # one value per channel in each group: x - mean is 0
            return self._affine(torch.zeros_like(x))
        grouped = x.unflatten(0, (k, len(x) // k)).transpose(0, 1).flatten(1, 2)
        weight = None if self.weight is None else self.weight.repeat(k)
        bias = None if self.bias is None else self.bias.repeat(k)
        y = F.batch_norm(grouped, None, None, weight, bias, True, 0.0, self.eps)
        return y.unflatten(1, (k, -1)).transpose(0, 1).flatten(0, 1)

    def _affine(self, x: Tensor) -> Tensor:
        if self.weight is None:
            return x
        shape = (1, -1, *([1] * (x.dim() - 2)))
        return x * self.weight.view(shape) + self.bias.view(shape)


def ghost_batch_norm(net: nn.Module, group_size: int) -> list[GhostBatchNorm]:
    """Replace every BatchNorm in `net` (nn.BatchNorm1d/2d/3d, SyncBatchNorm) by a GhostBatchNorm holding the same
    parameters and buffers; return them (none: `net` has no BatchNorm)."""
    require(
        is_whole(group_size) and group_size >= 1,
        f"model.norm_batch_size={group_size!r} is not allowed: give a positive number of samples, e.g. 32",
    )
    replaced: list[GhostBatchNorm] = []
    for parent_name, parent in list(net.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, GhostBatchNorm) or not isinstance(child, _BatchNorm):
                continue
            where = f"{parent_name}.{name}" if parent_name else name
            require(
                child.track_running_stats,
                f"model.net.{where} is a BatchNorm with track_running_stats=False, which normalises by the batch "
                "in evaluation too, so every figure would depend on chunk_size; give it track_running_stats=True "
                "(descent recomputes the statistics before every evaluation)",
            )
            ghost = GhostBatchNorm(child.num_features, group_size, child.eps, child.affine)
            if child.affine:
                ghost.weight, ghost.bias = child.weight, child.bias
            ghost.running_mean, ghost.running_var = child.running_mean, child.running_var
            ghost.num_batches_tracked = child.num_batches_tracked
            setattr(parent, name, ghost)
            replaced.append(ghost)
    return replaced


@contextmanager
def collecting(net: nn.Module, norms: list[GhostBatchNorm]) -> Iterator[None]:
    """Eval mode (dropout off) but for the BatchNorms, which normalise in groups as in training and sum their
    inputs' statistics; every module's mode is restored afterwards."""
    modes = {module: module.training for module in net.modules()}
    net.eval()
    for norm in norms:
        norm.train()
        norm.sums = torch.zeros(3, norm.num_features, dtype=torch.float64, device=norm.running_mean.device)
    try:
        yield
    finally:
        for norm in norms:
            norm.sums = None
        for module, training in modes.items():
            module.training = training


def recompute_statistics(
    net: nn.Module, norms: list[GhostBatchNorm], chunks: Iterable[Tensor], reduce: Callable[[Tensor], Tensor]
) -> None:
    """Precise BatchNorm: each norm's running mean and (unbiased) variance become those of its input over every
    sample of `chunks` (this rank's share of the training set, cut at group boundaries), summed over ranks by
    `reduce`. Layer by layer in one pass: a later layer sees the earlier ones normalising by groups, as in training.
    """
    with collecting(net, norms), torch.no_grad():
        for x in chunks:
            net(x)
        sums = reduce(torch.cat([norm.sums for norm in norms], dim=1))  # type: ignore[misc]
    per_norm = sums.split([norm.num_features for norm in norms], dim=1)
    for norm, (count, total, squares) in zip(norms, per_norm, strict=True):
        mean = total / count
        variance = (squares - count * mean.square()) / (count - 1).clamp(min=1)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(variance.clamp(min=0))
        norm.num_batches_tracked += 1


def mixing_module(net: nn.Module, input_shape: tuple[int, ...], training: bool) -> str | None:
    """`model.net.<name> (<class>)` of the first module (in call order) whose output for one sample depends on
    other samples of its forward call beyond the sample's own normalisation group, in training or eval mode
    (dropout off); None if there is none.

    A probe: 2 groups of 2 samples (every BatchNorm's group size is set to 2 for it), random inputs; the gradient
    of the first group's outputs with respect to the second group's inputs must be exactly zero. Nothing of `net`
    changes.
    """
    norms = [module for module in net.modules() if isinstance(module, GhostBatchNorm)]
    state = {name: value.clone() for name, value in net.state_dict().items()}
    modes = {module: module.training for module in net.modules()}
    sizes = [norm.group_size for norm in norms]
    parameter = next(net.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    device = parameter.device if parameter is not None else torch.device("cpu")
    outputs: list[tuple[str, Tensor]] = []

    def keep(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: object, output: object) -> None:
            if isinstance(output, Tensor) and output.dim() >= 1 and len(output) == 4 and output.requires_grad:
                outputs.append((name, output))

        return hook

    handles = [module.register_forward_hook(keep(name)) for name, module in net.named_modules() if name]
    try:
        net.train(training)
        for module in net.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.eval()
        for norm in norms:
            norm.group_size = 2
        x = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(0)).to(device, dtype)
        x.requires_grad_(True)
        with torch.enable_grad():
            logits = net(x)

            def mixes(output: Tensor) -> bool:
                (grad,) = torch.autograd.grad(output[:2].sum(), x, retain_graph=True, allow_unused=True)
                return grad is not None and bool(grad[2:].abs().sum() > 0)

            if not mixes(logits):
                return None
            modules = dict(net.named_modules())
            name = next((name for name, output in outputs if mixes(output)), "")
            return f"model.net{'.' if name else ''}{name} ({type(modules[name]).__name__})"
    finally:
        for handle in handles:
            handle.remove()
        for norm, size in zip(norms, sizes, strict=True):
            norm.group_size = size
        for module, was_training in modes.items():
            module.training = was_training
        net.load_state_dict(state)


def recompute_statistics_of(module: Any) -> None:
    """Precise BatchNorm at a module's present weights (descent.module.Classifier): each norm's statistics over the
    whole training set, read in the run's chunks (cut at group boundaries) on each rank and summed over the ranks."""
    if not module.norms:
        return
    trainer = module.trainer
    data, precision = trainer.datamodule, trainer.precision_plugin
    images, labels = data.sets["train"]
    every = set_chunks(images, labels, data.samples_per_chunk, trainer.global_rank, trainer.world_size,
                       module.norm_batch_size)  # fmt: skip
    chunks = (precision.convert_input(chunk.x) for chunk in every)
    if trainer.world_size > 1:
        reduce = lambda sums: trainer.strategy.reduce(sums, reduce_op="sum")  # noqa: E731
    else:
        reduce = lambda sums: sums  # noqa: E731
    with precision.forward_context():
        recompute_statistics(module.net, module.norms, chunks, reduce)


def check_samples_apart(net: nn.Module, input_shape: tuple[int, ...], one_pass: bool, one_pass_chunk: int) -> None:
    """Refuse, before training, a network whose samples influence each other in a way descent cannot make
    independent of chunk_size, unless `one_pass` (each step and each evaluated set is one forward on one rank);
    `one_pass_chunk` is the chunk_size that makes it so (the larger of a step and the largest set)."""
    for training, when in ((True, "training"), (False, "evaluation")):
        name = mixing_module(net, input_shape, training)
        if name is not None and not one_pass:
            raise DescentError(
                f"{name} mixes the samples of a forward pass in {when} mode (not as nn.BatchNorm, which "
                "descent normalises in fixed groups of model.norm_batch_size), so the figures would depend on "
                "chunk_size and the number of devices; use nn.BatchNorm1d/2d/3d or a per-sample layer (GroupNorm, "
                f"LayerNorm), or chunk_size={one_pass_chunk} on one device (each step and each set in one pass)"
            )


def check_batch_coupling(data: Any, model: Any, world_size: int) -> None:
    """Before training (data: descent.data.ImageData, model: descent.module.Classifier): refuse a network whose
    samples mix in a way chunks would change; say how BatchNorm's groups meet the chunk size."""
    largest_set = max(len(y) for _, y in data.sets.values())
    one_pass_chunk = max(data.samples_per_step, largest_set)
    one_pass = world_size == 1 and data.samples_per_chunk >= one_pass_chunk
    check_samples_apart(model.net, data.input_shape, one_pass, one_pass_chunk)
    group = data.samples_per_group
    if group > 1 and data.samples_per_chunk % group:
        held = max(group, data.samples_per_chunk // group * group)
        log.info(
            "BatchNorm in groups of model.norm_batch_size=%d: chunks hold whole groups, %d samples at most "
            "(chunk_size %d)",
            group,
            held,
            data.samples_per_chunk,
        )
