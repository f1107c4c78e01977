"""The memory plan: said before training; GD shrinks its chunks to the budget; an SGD step that cannot fit fails."""

import logging

import pytest

from descent.errors import DescentError
from descent.training import build, train


def fixed_bytes(make_cfg) -> int:
    """Data on the device, parameters and their gradients (plain SGD keeps no state), counted independently."""
    data, model = build(make_cfg())
    parameters = sum(p.numel() * 4 for p in model.parameters())
    return sum(x.nbytes + y.nbytes for x, y in data.sets.values()) + 2 * parameters


PER_SAMPLE = 4 * (784 + 32 + 10 + 10) + 8
"""Bytes autograd keeps per sample of the MLP 784-32-10, counted by hand: the float32 input, the ReLU's output (in
place, so also the linear layer's), the logits and their log-softmax, and the int64 label; what the probe measures."""


def test_the_plan_is_said_before_training(make_cfg, caplog) -> None:
    caplog.set_level(logging.INFO)
    train(make_cfg("max_epochs=1", "batch_size=50"))
    line = next(record.message for record in caplog.records if record.message.startswith("memory on cpu"))
    assert "activations of one chunk of 50 samples 0.16 MiB" in line  # 50 x PER_SAMPLE bytes
    assert "parameters 25,450 (0.097 MiB)" in line  # 784 x 32 + 32 + 32 x 10 + 10, float32
    assert "optimizer state 0.0 MiB" in line and "budget" in line


def test_gd_picks_a_chunk_that_fits_the_budget_and_still_takes_one_step(make_cfg, caplog) -> None:
    caplog.set_level(logging.INFO)
    budget = fixed_bytes(make_cfg) + 100 * PER_SAMPLE + PER_SAMPLE // 2
    result = train(make_cfg("optimizer=gd", "max_epochs=1", f"memory_budget_bytes={budget}"))
    assert "optimizer=gd: a chunk of 500 samples would not fit; computing each step in chunks of 100" in caplog.text
    assert result["final"]["progress/steps"] == 1


def test_an_sgd_batch_that_cannot_fit_fails_before_training(make_cfg, tmp_path) -> None:
    budget = fixed_bytes(make_cfg) + 100 * PER_SAMPLE
    with pytest.raises(DescentError, match=r"a chunk of 256 samples .* use a smaller batch_size, or chunk_size=100"):
        train(make_cfg("batch_size=256", f"memory_budget_bytes={budget}"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_budget_smaller_than_the_data_says_so(make_cfg) -> None:
    with pytest.raises(DescentError, match="memory_budget_bytes=1000: the data, parameters, gradients and optimizer"):
        train(make_cfg("memory_budget_bytes=1000"))


def test_a_momentum_buffer_is_counted(make_cfg, caplog) -> None:
    caplog.set_level(logging.INFO)
    train(make_cfg("optimizer=momentum", "max_epochs=1"))
    line = next(record.message for record in caplog.records if record.message.startswith("memory on cpu"))
    _, model = build(make_cfg())
    assert sum(p.numel() for p in model.parameters()) == 25_450  # 101,800 bytes in float32: 0.097 MiB
    assert "optimizer state 0.097 MiB" in line and "parameters 25,450 (0.097 MiB)" in line  # one buffer each


def allocated_while_graph_lives(module, x, y) -> int:
    """What the CPU allocator holds after the forward pass and loss of one chunk, with autograd's graph alive:
    measured by torch's profiler from its allocation and free events, not by descent's probe."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiled:
        chunk = x.clone()  # the chunk as the data path makes it: a gather, a new tensor
        loss = module.loss(module(chunk), y)
    held = sum(event.self_cpu_memory_usage for event in profiled.events())
    del loss
    return held


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_the_measured_activation_memory_matches_the_allocators_peak(make_cfg, model: str) -> None:
    import torch

    from descent.memory import activation_bytes_per_sample

    _, module = build(make_cfg(f"model={model}", "model.net.hidden=[256]"))
    module.train()
    per_sample = activation_bytes_per_sample(module, (1, 28, 28))
    n = 512
    x, y = torch.randn(n, 1, 28, 28), torch.randint(10, (n,))
    measured = allocated_while_graph_lives(module, x, y)
    assert measured == pytest.approx(n * per_sample, rel=0.1), (measured, n * per_sample)
