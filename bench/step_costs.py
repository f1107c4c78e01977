"""Where a cheap step's time goes: one B=64 epoch of descent's training path (evaluation off) under cProfile, each
step's time divided among Lightning's loop, descent's own step machinery and the step's arithmetic.

The network is the MLP 784-16-10 (`--hidden 16`), whose forward, backward and SGD step are so cheap that what is
around them shows. cProfile slows Python code more than the tensor kernels it calls, so the shares, not the
milliseconds, are what to read; `make bench`'s rows l_16 - b_16 (Lightning's loop) and a_16 - l_16 (descent's own)
measure the same split without a profiler.

    python bench/step_costs.py [--hidden 16] [--threads 2]
"""

import argparse
import cProfile
import logging
import pstats
import tempfile
import warnings
from pathlib import Path

import torch
from epoch_speed import compose_config, descent_epochs_without_evaluation, load_shared_data

PARTS: list[tuple[str, str, list[str], list[str]]] = [
    # (group, part, functions whose cumulative time it is, functions within those it leaves to another part)
    ("the step's arithmetic", "forward and loss", ["module.py:forward", "module.py:loss"], []),
    ("the step's arithmetic", "backward", ["_tensor.py:backward"], []),
    ("the step's arithmetic", "SGD step and zero_grad", ["optimizer.py:wrapper", "optimizer.py:zero_grad"], []),
    ("descent", "reading the step's chunks (gather, normalise)", ["steps.py:__iter__"], []),
    ("descent", "checks before the step (loss, stop signal)", ["stepping.py:check_before_step"], []),
    (
        "Lightning",
        "LightningOptimizer.step: strategy, precision plugin, hooks",
        ["optimizer.py:step"],
        ["optimizer.py:wrapper"],
    ),  # fmt: skip
]
"""Parts inside `training_step`: the rest of it is descent's bookkeeping (counters, clock, logging)."""

OUTSIDE: list[tuple[str, list[str]]] = [
    ("fetching the step from the loader", ["fetchers.py:__next__"]),
    ("batch transfer hooks", ["strategy.py:batch_to_device"]),
    ("logger connector per batch", ["logger_connector.py:on_batch_end"]),
    ("training_step's arguments (its signature inspected)", ["training_epoch_loop.py:_build_kwargs"]),
]
"""Lightning's loop around `training_step`: the rest of it is hooks' dispatch and progress counters."""


def cumulative(stats: pstats.Stats, names: list[str]) -> float:
    """The summed cumulative seconds of the functions `file.py:function` (every file of that name)."""
    total = 0.0
    for (path, _, function), (_, _, _, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        if f"{Path(path).name}:{function}" in names:
            total += cum
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory(prefix="step-costs-") as scratch_name:
        scratch = Path(scratch_name)
        shared, data_name = load_shared_data(scratch)
        cfg = compose_config(64, data_name, scratch, "profiled", f"model.net.hidden=[{args.hidden}]")
        epoch = descent_epochs_without_evaluation(cfg, shared)
        epoch()  # warm-up
        profile = cProfile.Profile()
        profile.enable()
        epoch()
        profile.disable()
    stats = pstats.Stats(profile)
    steps = -(-len(shared.sets["train"][1]) // 64)
    per_step = 1000 / steps
    whole = cumulative(stats, ["training_epoch_loop.py:advance"])
    training_step = cumulative(stats, ["module.py:training_step"])
    network = f"MLP 784-{args.hidden}-10"
    print(f"{data_name}, {network}, B=64, {steps} steps, under cProfile: {per_step * whole:.3f} ms a step")
    print("| group | part | ms a step (profiled) | share |")
    print("| --- | --- | --- | --- |")

    def row(group: str, part: str, seconds: float) -> None:
        print(f"| {group} | {part} | {per_step * seconds:.3f} | {seconds / whole:.0%} |")

    inside = 0.0
    for group, part, names, within in PARTS:
        seconds = cumulative(stats, names) - cumulative(stats, within)
        inside += seconds
        row(group, part, seconds)
    row("descent", "the rest of training_step (counters, clock, logging)", training_step - inside)
    outside = 0.0
    for part, names in OUTSIDE:
        seconds = cumulative(stats, names)
        outside += seconds
        row("Lightning", part, seconds)
    row("Lightning", "the rest of its loop (hooks' dispatch, progress counters)", whole - training_step - outside)


if __name__ == "__main__":
    main()
