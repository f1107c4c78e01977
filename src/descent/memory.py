"""What a run will hold in memory, said before training, and the chunk size that keeps a step inside the budget.

The activations are measured, not counted: a probe runs a training chunk (forward, loss, backward) and an
evaluation chunk (forward and loss without a graph) of a copy of the network in the run's dtype, at two small
sizes, and records every allocation and free. What each moment of a pass holds is then a + b * n for a chunk of n
samples, and a chunk's peak the highest of those lines. That includes what a count of the tensors autograd saves
misses: the gradients of the activations in the backward pass, each layer's temporaries (a float64 convolution
unfolds its input: 9 times a 3x3 layer's), the copies of ghost BatchNorm's groups, and the weight gradient of a
layer being made, which can be a small chunk's peak.
"""

import copy
import functools
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from descent.batchnorm import GhostBatchNorm
from descent.errors import require

log = logging.getLogger(__name__)

OPTIMIZER_STATE_PER_PARAMETER = {"SGD": 0, "Adam": 2, "AdamW": 2, "RMSprop": 1, "Adagrad": 1}
"""Tensors of parameter size each optimizer keeps (SGD with momentum adds one); others are assumed to keep 2."""

PEAK_WITHIN = (0.75, 1.25)
"""A real run's peak over its memory line's peak, by the allocator's count (torch's profiler), that the tests hold
the MLP, the LeNet CNN and the ResNet in float32 and float64 to. Measured (README, "Batch gradient descent at any
scale"): 0.65x to 1.00x by the allocator's count, and 0.7x to 2.5x in resident memory on the CPU (0.7x to 1.4x with
chunks of 2,000; glibc's heap keeps what small chunks free)."""


PROBE_SAMPLES = (16, 32)
"""The probe's two chunk sizes: what each moment of a pass holds is a + b * n, solved from the two."""

PROBE_GROUP = 4
"""Ghost BatchNorm's group size in the probe: several groups per chunk, as a run's chunks have, so that the probe
pays for their copies (a chunk of one group is normalised in a view) at any `norm_batch_size`."""


def free_bytes(device: torch.device) -> int:
    """What the device reports as free now: CUDA's free memory, or the host's available physical memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def run_dtype(precision: Any) -> torch.dtype:
    """The dtype a run computes in, from its Lightning precision plugin (`trainer.precision_plugin`): float64 for
    64-true, bfloat16 for bf16-true, float32 for 32-true and the mixed precisions (an upper bound for those)."""
    return precision.convert_input(torch.zeros(())).dtype


@dataclass(frozen=True)
class Activations:
    """The most bytes one chunk of n samples holds during a pass: the highest of lines a + b * n, one for each
    moment of the pass (at one a layer's weight gradient is being made, whatever n; at another n samples'
    activations and their gradients are alive)."""

    lines: tuple[tuple[int, int], ...]

    @classmethod
    def highest(cls, lines: list[tuple[int, int]]) -> "Activations":
        """Of many lines, those that are the highest somewhere: no other is as high in both intercept and slope."""
        kept = {(a, b) for a, b in lines if not any(a2 >= a and b2 >= b and (a2, b2) != (a, b) for a2, b2 in lines)}
        return cls(tuple(sorted(kept, key=lambda line: line[1])))

    def bytes(self, n: int) -> int:
        return max(0, *(a + b * n for a, b in self.lines))

    def largest(self, room: int) -> int:
        """The most samples whose chunk holds at most `room` bytes (0: not even one)."""
        if any(a + b > room for a, b in self.lines):
            return 0
        return min((int(room - a) // b for a, b in self.lines if b > 0), default=2**62)


@dataclass
class MemoryPlan:
    data_bytes: int
    parameter_bytes: int
    optimizer_state_bytes: int
    training: Activations
    """A training chunk's activations: forward, loss and backward, at their peak."""
    evaluation: Activations
    """An evaluation chunk's (no graph): forward and loss at their peak, in eval or in training mode (the BatchNorm
    statistics pass)."""
    budget_bytes: int
    parameter_count: int = 0
    dtype: torch.dtype = torch.float32

    @property
    def checkpoint_bytes(self) -> int:
        """The copy of the parameters and the optimizer's state that a checkpoint takes to write from a thread
        (`descent.checkpoints.BackgroundCheckpointIO`); the next steps run while it is written."""
        return self.parameter_bytes + self.optimizer_state_bytes

    @property
    def fixed_bytes(self) -> int:
        """Everything but the activations: data, parameters, their gradients, the optimizer's state and a
        checkpoint's copy."""
        return self.data_bytes + 2 * self.parameter_bytes + self.optimizer_state_bytes + self.checkpoint_bytes

    def peak_bytes(self, training_chunk: int, evaluation_chunk: int) -> int:
        """What the run holds at its peak: the fixed part and the larger of the two chunks' activations."""
        return self.fixed_bytes + max(self.training.bytes(training_chunk), self.evaluation.bytes(evaluation_chunk))

    def describe(self, training_chunk: int, evaluation_chunk: int, device: torch.device) -> str:
        """The memory line. A real run's peak resident memory was 0.7x to 2.5x of its peak (0.7x to 1.4x with
        chunks of 2,000), and 0.65x to 1.00x by the allocator's count: see PEAK_WITHIN."""
        return (
            f"memory on {device}: data {mib(self.data_bytes)}, "
            f"parameters {self.parameter_count:,} ({mib(self.parameter_bytes)} in {dtype_name(self.dtype)}), "
            f"gradients {mib(self.parameter_bytes)}, optimizer state {mib(self.optimizer_state_bytes)}, "
            f"a checkpoint's copy {mib(self.checkpoint_bytes)}, activations of a training chunk of "
            f"{training_chunk} samples {mib(self.training.bytes(training_chunk))} and of an evaluation chunk of "
            f"{evaluation_chunk} {mib(self.evaluation.bytes(evaluation_chunk))}; "
            f"peak about {mib(self.peak_bytes(training_chunk, evaluation_chunk))} of a {mib(self.budget_bytes)} budget"
        )


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def mib(n: int) -> str:
    """In MiB, to a tenth; below 1 MiB to two significant digits (a small network's 0.037 MiB is not 0.0)."""
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 or n == 0 else f"{n / 2**20:.2g} MiB"


def held_bytes(run: Callable[[], object], device: torch.device) -> list[int] | None:
    """The bytes allocated on `device` after each allocation or free while `run` runs, above those allocated when
    it started; None when another profiler is running (the CPU's allocator reports to a profiler only)."""
    from torch._C._profiler import ProfilerConfig, ProfilerState, _ExperimentalConfig

    if torch.autograd._profiler_enabled():
        return None
    # The legacy profiler records every allocation and free in order, and prints nothing (Kineto's does, on stderr).
    config = ProfilerConfig(ProfilerState.CPU, False, True, False, False, False, _ExperimentalConfig())
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    torch.autograd._enable_profiler_legacy(config)
    try:
        run()
    finally:
        threads = torch.autograd._disable_profiler_legacy()
    index = (torch.cuda.current_device() if device.index is None else device.index) if cuda else -1
    changes = sorted(
        (event.start_us(), event.cuda_memory_usage() if cuda else event.cpu_memory_usage())
        for thread in threads
        for event in thread
        if event.kind() == "memory_alloc" and event.device() == index
    )
    if cuda and not changes:  # a CUDA allocator that does not report to the profiler: its peak alone
        torch.cuda.synchronize(device)
        return [torch.cuda.max_memory_allocated(device) - before]
    return list(itertools.accumulate(change for _, change in changes))


def lines(small: list[int], large: list[int]) -> list[tuple[int, int]]:
    """Each moment's a + b * n from what it held at the two probe sizes; where the passes differ (a kernel took
    another path at the other size), the line through the origin and the larger probe's peak."""
    n1, n2 = PROBE_SAMPLES
    if len(small) != len(large):
        return [(0, -(-max(large, default=0) // n2))]
    slopes = [max(0, -(-(h2 - h1) // (n2 - n1))) for h1, h2 in zip(small, large, strict=True)]
    return [(h1 - b * n1, b) for h1, b in zip(small, slopes, strict=True)]


def probe(
    module: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype | None = None
) -> tuple[Activations, Activations] | None:
    """The activations of a training chunk (forward, loss, backward) and of an evaluation chunk (forward and loss
    without a graph, in eval mode and in training mode, as the BatchNorm statistics pass runs), measured on a copy
    of the network in `dtype` (default: its parameters'), each chunk made as the data path makes it (float32
    images converted to `dtype`, int64 labels); nothing of `module` changes. None: another profiler is running."""
    net = copy.deepcopy(getattr(module, "net", module))
    if dtype is not None:
        net.to(dtype)
    for norm in net.modules():
        if isinstance(norm, GhostBatchNorm):
            norm.group_size = PROBE_GROUP
    loss = module.loss if hasattr(module, "loss") else lambda logits, y: logits.sum()
    parameter = next(net.parameters())

    def chunk(n: int) -> tuple[Tensor, Tensor, Tensor]:
        x = torch.zeros(n, *input_shape, device=parameter.device)
        return x, x.to(parameter.dtype), torch.zeros(n, dtype=torch.long, device=parameter.device)

    def training(n: int) -> None:
        net.train()
        _, x, y = chunk(n)  # the float32 images stay alive beside the converted ones, as the data path keeps them
        loss(net(x), y).backward()

    def evaluation(n: int, mode: bool) -> None:
        net.train(mode)
        _, x, y = chunk(n)
        with torch.no_grad():
            logits = net(x)
            loss(logits, y), logits.argmax(1)

    passes = [[training], [lambda n: evaluation(n, False), lambda n: evaluation(n, True)]]
    measured = []
    with torch.random.fork_rng(devices=[]):  # the probe's dropout draws leave the run's random stream alone
        training(PROBE_SAMPLES[0])  # the gradients exist before the measurement: they are fixed memory
        for runs in passes:
            found = []
            for run in runs:
                small, large = (held_bytes(functools.partial(run, n), parameter.device) for n in PROBE_SAMPLES)
                if small is None or large is None:
                    return None
                found += lines(small, large)
            measured.append(Activations.highest(found))
    return measured[0], measured[1]


def estimate(
    data_bytes: int,
    module: nn.Module,
    input_shape: tuple[int, ...],
    optimizer: str,
    momentum: float,
    budget_bytes: int,
    dtype: torch.dtype | None = None,
) -> MemoryPlan:
    """Data and parameters counted, optimizer state by the optimizer's kind, activations measured by a probe; all
    in `dtype`, the run's (`run_dtype`), which the parameters take only when training starts (default: theirs)."""
    dtype = dtype or next(module.parameters()).dtype
    count = sum(p.numel() for p in module.parameters())
    parameter_bytes = sum(
        p.numel() * (dtype.itemsize if p.is_floating_point() else p.element_size()) for p in module.parameters()
    )
    states = OPTIMIZER_STATE_PER_PARAMETER.get(optimizer, 2) + (optimizer == "SGD" and momentum > 0)
    measured = probe(module, input_shape, dtype)
    if measured is None:
        log.warning("memory: another profiler is running, so the activations are not measured (counted as 0)")
    training, evaluation = measured or (Activations(((0, 0),)), Activations(((0, 0),)))
    return MemoryPlan(
        data_bytes, parameter_bytes, states * parameter_bytes, training, evaluation, budget_bytes, count, dtype
    )


def plan_chunk_size(plan: MemoryPlan, step_size: int, chunk_size: int, full_batch: bool, device: torch.device) -> int:
    """The most samples in one forward pass: `chunk_size` when it fits the budget, else what does.

    A step of SGD is one chunk when it fits (B per rank at most), GD's is cut into chunks of this size; the
    evaluation, which keeps no graph, reads chunks of this size too. `step_size` and `chunk_size` are per rank.
    SGD with a step that does not fit fails here, before training.
    """
    require(
        plan.fixed_bytes < plan.budget_bytes,
        f"memory_budget_bytes={plan.budget_bytes}: the data, parameters, gradients, optimizer state and a "
        f"checkpoint's copy alone need {mib(plan.fixed_bytes)}; raise the budget or use a smaller data set or model",
    )
    room = plan.budget_bytes - plan.fixed_bytes
    chunk, largest = min(step_size, chunk_size), plan.training.largest(room)
    if chunk > largest:
        require(
            full_batch and largest >= 1,
            f"batch_size: a chunk of {chunk} samples (the smaller of batch_size and chunk_size, per device) needs "
            f"about {mib(plan.training.bytes(chunk))} of activations but only {mib(room)} of memory_budget_bytes="
            f"{plan.budget_bytes} is left: use a smaller batch_size, or chunk_size={max(largest, 1)} to accumulate "
            "each step exactly in chunks",
        )
        log.info(
            "optimizer=gd: a chunk of %d samples would not fit; computing each step in chunks of %d", chunk, largest
        )
        chunk_size = largest
    # The evaluation reads chunks of the returned size too, and keeps no graph: larger ones may fit.
    fits = min(chunk_size, max(1, plan.evaluation.largest(room)))
    if fits < chunk_size:
        log.info("the evaluation's chunks of %d samples would not fit; reading chunks of %d", chunk_size, fits)
    log.info(plan.describe(min(step_size, fits), fits, device))
    return fits
