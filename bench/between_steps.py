"""What Python work between optimizer steps costs beyond its own time, by network: why a framework's fixed per-step
cost weighs more on the default MLP than its own duration says.

The plain loop's step (randperm, slice, forward, backward, SGD step) on the bench's data, for the default MLP
(784-512-512-10) and for 784-16-10, at B=64, three ways in each round: alone (`plain`), and with a stretch of plain
Python after every step (`busy`: reading a list of small dicts, about what Lightning's loop does between two
steps) whose own time is measured (`busy_s`). `slowdown` = (busy - plain - busy_s) / steps: how much slower the
steps themselves became, in ms a step. Median of the rounds after a warm-up epoch.

Run: `.venv/bin/python bench/between_steps.py [--threads 2] [--rounds 4] [--items 3000]`.
"""

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from epoch_speed import compose_config, load_shared_data, plain_model
from torch import Tensor


def epoch(
    net: torch.nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, between: Callable[[], int] | None
) -> tuple[float, float]:
    """One epoch of the plain loop at B=64, `between` called after every step: seconds in all, and in `between`."""
    order, between_s = torch.randperm(len(y)), 0.0
    start = time.perf_counter()
    for first in range(0, len(y), 64):
        index = order[first : first + 64]
        loss = F.cross_entropy(net(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if between is not None:
            started = time.perf_counter()
            between()
            between_s += time.perf_counter() - started
    return time.perf_counter() - start, between_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--items", type=int, default=3000, help="dicts read between two steps (default 3000)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    junk = [{"a": i, "b": [i, i + 1]} for i in range(max(args.items, 1))]

    def busy() -> int:
        return sum(item["a"] + len(item["b"]) for item in junk)

    with tempfile.TemporaryDirectory(prefix="between-steps-") as scratch_name:
        scratch = Path(scratch_name)
        shared, data_name = load_shared_data(scratch)
        images, y = shared.sets["train"]
        x = images.normalised()
        steps = -(-len(y) // 64)
        print(f"{data_name}, B=64, {steps} steps an epoch, {args.threads} threads, {args.items} dicts between steps")
        print(f"{'network':22}{'plain':>10}{'busy':>10}{'busy_s':>10}{'slowdown':>10}   (ms a step)")
        for name, extra in (("784-512-512-10", ()), ("784-16-10", ("model.net.hidden=[16]",))):
            cfg = compose_config(64, data_name, scratch, "between", *extra)
            net = plain_model(cfg, x, y)
            optimizer = torch.optim.SGD(net.parameters(), lr=cfg.optimizer.lr)

            epoch(net, optimizer, x, y, None)
            plain, with_busy, busy_s = [], [], []
            for _ in range(args.rounds):
                plain.append(epoch(net, optimizer, x, y, None)[0])
                seconds, between_s = epoch(net, optimizer, x, y, busy)
                with_busy.append(seconds)
                busy_s.append(between_s)
            ms = [1000 * statistics.median(values) / steps for values in (plain, with_busy, busy_s)]
            print(f"{name:22}{ms[0]:>10.3f}{ms[1]:>10.3f}{ms[2]:>10.3f}{ms[1] - ms[0] - ms[2]:>10.3f}")


if __name__ == "__main__":
    main()
