"""The memory plan: said before training; GD shrinks its chunks to the budget; an SGD step that cannot fit fails;
its peak is that of a real run, measured by torch's profiler, for the MLP, the CNN and the ResNet in float32 and
float64."""

import logging
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from descent.errors import DescentError
from descent.memory import PEAK_WITHIN, MemoryPlan, estimate, plan_chunk_size, run_dtype
from descent.training import build, build_trainer, train

CPU = torch.device("cpu")


def plan_of(make_cfg, *overrides: str) -> MemoryPlan:
    """The plan of plain SGD (no optimizer state) for the composed run, with an unbounded budget."""
    data, model = build(make_cfg(*overrides))
    return estimate(data.nbytes, model, data.input_shape, "SGD", 0, 2**50)


def memory_line(caplog) -> str:
    return next(record.message for record in caplog.records if record.message.startswith("memory on cpu"))


def test_the_plan_is_said_before_training(make_cfg, caplog) -> None:
    caplog.set_level(logging.INFO)
    train(make_cfg("max_epochs=1", "batch_size=50"))
    line = memory_line(caplog)
    plan = plan_of(make_cfg)
    assert "parameters 25,450 (0.097 MiB in float32)" in line  # 784 x 32 + 32 + 32 x 10 + 10
    assert "optimizer state 0.0 MiB" in line and "budget" in line
    # SGD's steps are chunks of B = 50; the evaluation reads the largest set, 500 samples, at once.
    assert "activations of a training chunk of 50 samples" in line and "evaluation chunk of 500" in line
    assert plan.training.bytes(50) > 50 * 4 * (784 + 32 + 10)  # the input, the hidden layer, the logits at least


def test_gd_picks_a_chunk_that_fits_the_budget_and_still_takes_one_step(make_cfg, caplog) -> None:
    caplog.set_level(logging.INFO)
    plan = plan_of(make_cfg, "optimizer=gd")
    budget = plan.fixed_bytes + plan.training.bytes(100)
    result = train(make_cfg("optimizer=gd", "max_epochs=1", f"memory_budget_bytes={budget}"))
    assert "optimizer=gd: a chunk of 500 samples would not fit; computing each step in chunks of 100" in caplog.text
    assert "activations of a training chunk of 100 samples" in memory_line(caplog)
    assert result["final"]["progress/steps"] == 1


def test_an_sgd_batch_that_cannot_fit_fails_before_training(make_cfg, tmp_path) -> None:
    plan = plan_of(make_cfg)
    budget = plan.fixed_bytes + plan.training.bytes(100)
    with pytest.raises(DescentError, match=r"a chunk of 256 samples .* use a smaller batch_size, or chunk_size=100"):
        train(make_cfg("batch_size=256", f"memory_budget_bytes={budget}"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_evaluation_reads_smaller_chunks_when_its_own_would_not_fit(make_cfg) -> None:
    plan = plan_of(make_cfg)
    plan.budget_bytes = plan.fixed_bytes + plan.evaluation.bytes(200)  # SGD's steps of 50 fit, 500 to evaluate not
    assert plan_chunk_size(plan, 50, 500, False, CPU) == 200


def test_a_budget_smaller_than_the_data_says_so(make_cfg) -> None:
    with pytest.raises(
        DescentError, match="memory_budget_bytes=1000: the data, parameters, gradients, optimizer state and"
    ):
        train(make_cfg("memory_budget_bytes=1000"))


def test_a_momentum_buffer_is_counted(make_cfg, caplog) -> None:
    caplog.set_level(logging.INFO)
    train(make_cfg("optimizer=momentum", "max_epochs=1"))
    line = memory_line(caplog)
    _, model = build(make_cfg())
    assert sum(p.numel() for p in model.parameters()) == 25_450  # 101,800 bytes in float32: 0.097 MiB
    assert "optimizer state 0.097 MiB" in line and "parameters 25,450 (0.097 MiB in float32)" in line  # one buffer


def test_the_probe_leaves_the_module_and_the_random_stream_alone(make_cfg) -> None:
    data, model = build(make_cfg("model=resnet", "model.net.width=4"))
    model.eval()
    state = {name: value.clone() for name, value in model.state_dict().items()}
    rng = torch.get_rng_state()
    estimate(data.nbytes, model, data.input_shape, "SGD", 0, 2**40, torch.float64)
    assert all(torch.equal(value, state[name]) for name, value in model.state_dict().items())
    assert all(p.dtype == torch.float32 and p.grad is None for p in model.parameters())
    assert not model.training and all(norm.group_size == 32 for norm in model.norms)
    assert torch.equal(torch.get_rng_state(), rng)


def peak_allocated(profiled: profile) -> int:
    """The most bytes the CPU allocator held during a profiled run above what it held at its start, from every
    allocation and free the profiler saw, in order (torch's own accounting, not descent's probe)."""
    changes = []
    events = list(profiled.profiler.kineto_results.experimental_event_tree())
    while events:
        event = events.pop()
        events += event.children
        if event.tag == torch._C._profiler._EventType.Allocation and event.extra_fields.device.type == "cpu":
            changes.append((event.start_time_ns, event.extra_fields.alloc_size))
    held = peak = 0
    for _, change in sorted(changes):
        held += change
        peak = max(peak, held)
    return peak


NETS = {"mlp": ["model.net.hidden=[512,512]"], "cnn": [], "resnet": ["model.net.width=8"]}
"""The networks as configured, the MLP at its default width and the ResNet at half its (for time)."""


@pytest.mark.parametrize("precision", ["32-true", "64-true"])
@pytest.mark.parametrize("model", NETS)
def test_the_planned_peak_is_a_real_runs(make_cfg, model: str, precision: str) -> None:
    """A GD epoch in chunks of 100 and its evaluation (the BatchNorm statistics first), through descent's build,
    trainer and data path, peaks within PEAK_WITHIN of the plan made in the run's dtype, by the allocator's count."""
    cfg = make_cfg(
        f"model={model}",
        *NETS[model],
        f"trainer.precision={precision}",
        "optimizer=gd",
        "chunk_size=100",
        "max_epochs=1",
        "logger=none",
        "data.train_size=200",
        "trainer.limit_val_batches=1",  # one chunk of each set: the evaluation's peak, in a fraction of the time
    )
    data, module = build(cfg)
    trainer = build_trainer(cfg, Path(cfg.run_dir))
    dtype = run_dtype(trainer.precision_plugin)
    assert dtype == (torch.float64 if precision == "64-true" else torch.float32)
    plan = estimate(data.nbytes, module, data.input_shape, "SGD", 0, 2**40, dtype)
    chunk = plan_chunk_size(plan, data.samples_per_step, data.samples_per_chunk, True, CPU)
    assert chunk == 100
    held_before = data.nbytes + sum(p.nbytes for p in module.parameters())
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiled:
        trainer.fit(module, datamodule=data)
    measured, planned = held_before + peak_allocated(profiled), plan.peak_bytes(chunk, chunk)
    low, high = PEAK_WITHIN
    assert low <= measured / planned <= high, (measured, planned)
