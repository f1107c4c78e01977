"""What a run will hold in memory, said before training, and the chunk size that keeps a step inside the budget."""

import logging
import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from descent.errors import require

log = logging.getLogger(__name__)

OPTIMIZER_STATE_PER_PARAMETER = {"SGD": 0, "Adam": 2, "AdamW": 2, "RMSprop": 1, "Adagrad": 1}
"""Tensors of parameter size each optimizer keeps (SGD with momentum adds one); others are assumed to keep 2."""


def free_bytes(device: torch.device) -> int:
    """What the device reports as free now: CUDA's free memory, or the host's available physical memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass
class MemoryPlan:
    data_bytes: int
    parameter_bytes: int
    optimizer_state_bytes: int
    activation_bytes_per_sample: int
    budget_bytes: int
    parameter_count: int = 0

    @property
    def fixed_bytes(self) -> int:
        """Everything but the activations: data, parameters, their gradients and the optimizer's state."""
        return self.data_bytes + 2 * self.parameter_bytes + self.optimizer_state_bytes

    def largest_chunk(self) -> int:
        return max(0, (self.budget_bytes - self.fixed_bytes) // self.activation_bytes_per_sample)

    def describe(self, chunk: int, device: torch.device) -> str:
        activations = chunk * self.activation_bytes_per_sample
        total = self.fixed_bytes + activations
        return (
            f"memory on {device}: data {mib(self.data_bytes)}, "
            f"parameters {self.parameter_count:,} ({mib(self.parameter_bytes)}), "
            f"gradients {mib(self.parameter_bytes)}, optimizer state {mib(self.optimizer_state_bytes)}, "
            f"activations of one chunk of {chunk} samples {mib(activations)}; "
            f"total about {mib(total)} of a {mib(self.budget_bytes)} budget"
        )


def mib(n: int) -> str:
    """In MiB, to a tenth; below 1 MiB to two significant digits (a small network's 0.037 MiB is not 0.0)."""
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 or n == 0 else f"{n / 2**20:.2g} MiB"


PROBE_SAMPLES = (8, 16)
"""The two probe chunks: their difference is the per-sample memory, without what a chunk keeps whatever its size."""


def saved_bytes(module: nn.Module, input_shape: tuple[int, ...], n: int) -> int:
    """The bytes autograd keeps for the backward pass of a chunk of `n` samples, measured.

    Every tensor saved for backward during the forward pass and the loss is counted once (views of one tensor,
    such as an MLP's flattened input, share their memory) and the parameters not, plus the logits and the input.
    """
    saved: dict[int, int] = {}
    parameters = {p.data_ptr() for p in module.parameters()}  # saved too (a layer's backward needs its weight)

    def pack(tensor: Tensor) -> Tensor:
        if tensor.data_ptr() not in parameters:
            saved[tensor.data_ptr()] = max(saved.get(tensor.data_ptr(), 0), tensor.numel() * tensor.element_size())
        return tensor

    parameter = next(module.parameters())
    x = torch.zeros(n, *input_shape, dtype=parameter.dtype, device=parameter.device)
    y = torch.zeros(n, dtype=torch.long, device=parameter.device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = module(x)
        loss = module.loss(logits, y) if hasattr(module, "loss") else logits.sum()
    del loss
    return sum(saved.values()) + (0 if x.data_ptr() in saved else x.nbytes) + logits.nbytes


def activation_bytes_per_sample(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Measured for any network, from two small probe chunks in training mode (dropout keeps its masks then)."""
    was_training = module.training
    module.train()
    with torch.random.fork_rng(devices=[]):  # the probe's dropout draws leave the run's random stream alone
        small, large = (saved_bytes(module, input_shape, n) for n in PROBE_SAMPLES)
    module.train(was_training)
    return -(-(large - small) // (PROBE_SAMPLES[1] - PROBE_SAMPLES[0]))


def estimate(
    data_bytes: int,
    module: nn.Module,
    input_shape: tuple[int, ...],
    optimizer: str,
    momentum: float,
    budget_bytes: int,
) -> MemoryPlan:
    """Data and parameters counted, optimizer state by the optimizer's kind, activations measured by a probe."""
    parameter_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    count = sum(p.numel() for p in module.parameters())
    states = OPTIMIZER_STATE_PER_PARAMETER.get(optimizer, 2) + (optimizer == "SGD" and momentum > 0)
    per_sample = activation_bytes_per_sample(module, input_shape)
    return MemoryPlan(data_bytes, parameter_bytes, states * parameter_bytes, per_sample, budget_bytes, count)


def plan_chunk_size(plan: MemoryPlan, step_size: int, chunk_size: int, full_batch: bool, device: torch.device) -> int:
    """The most samples in one forward pass: `chunk_size` when it fits the budget, else what does.

    A step of SGD is one chunk when it fits (B per rank at most), GD's is cut into chunks of this size; the
    evaluation, which keeps no graph, reads chunks of this size too. `step_size` and `chunk_size` are per rank.
    SGD with a step that does not fit fails here, before training.
    """
    require(
        plan.fixed_bytes < plan.budget_bytes,
        f"memory_budget_bytes={plan.budget_bytes}: the data, parameters, gradients and optimizer state alone need "
        f"{mib(plan.fixed_bytes)}; raise the budget or use a smaller data set or model",
    )
    chunk = min(step_size, chunk_size)
    largest = plan.largest_chunk()
    if chunk > largest:
        require(
            full_batch and largest >= 1,
            f"batch_size: a chunk of {chunk} samples (the smaller of batch_size and chunk_size, per device) needs "
            f"about {mib(chunk * plan.activation_bytes_per_sample)} "
            f"of activations but only {mib(plan.budget_bytes - plan.fixed_bytes)} of memory_budget_bytes="
            f"{plan.budget_bytes} is left: use a smaller batch_size, or chunk_size={max(largest, 1)} to accumulate "
            "each step exactly in chunks",
        )
        log.info(
            "optimizer=gd: a chunk of %d samples would not fit; computing each step in chunks of %d", chunk, largest
        )
        chunk = largest
    log.info(plan.describe(chunk, device))
    return min(chunk_size, largest)
