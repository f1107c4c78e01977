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


PER_SAMPLE = 4 * (784 + 3 * 32 + 2 * 10)  # float32: input, 3 tensors per hidden unit, logits and their gradient


def test_the_plan_is_said_before_training(make_cfg, caplog) -> None:
    caplog.set_level(logging.INFO)
    train(make_cfg("max_epochs=1", "batch_size=50"))
    line = next(record.message for record in caplog.records if record.message.startswith("memory on cpu"))
    assert "activations of one chunk of 50 samples 0.2 MiB" in line
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
    parameters_mib = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    assert f"optimizer state {parameters_mib:,.1f} MiB" in line
