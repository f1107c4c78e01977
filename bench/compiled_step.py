"""Does `torch.compile` pay for a cheap step on this machine? The plain loop's step on the MLP 784-16-10 at B=64
(random MNIST-shaped data), eager against the network compiled, and against network and optimizer step compiled
(inductor on a CPU). Prints milliseconds a step (median of 4 epochs after the compiling one) and compile seconds.

    python bench/compiled_step.py [--threads 2]
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

N, B = 55_000, 64

Step = Callable[[nn.Module, torch.optim.Optimizer, Tensor, Tensor], None]


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))


def epoch_seconds(net: nn.Module, optimizer: torch.optim.Optimizer, step: Step, x: Tensor, y: Tensor) -> float:
    order = torch.randperm(N)
    start = time.perf_counter()
    for first in range(0, N, B):
        index = order[first : first + B]
        step(net, optimizer, x[index], y[index])
    return time.perf_counter() - start


def eager_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    loss = F.cross_entropy(net(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@torch.compile
def compiled_optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    optimizer.step()


def all_compiled_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    loss = F.cross_entropy(net(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    compiled_optimizer_step(optimizer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    torch.set_num_threads(parser.parse_args().threads)
    torch.manual_seed(0)
    x, y = torch.randn(N, 784), torch.randint(0, 10, (N,))
    variants = {}
    for name, compile_net, step in (("eager", False, eager_step), ("compiled network", True, eager_step),
                                    ("compiled network and optimizer step", True, all_compiled_step)):  # fmt: skip
        net = network()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
        model = torch.compile(net) if compile_net else net
        first = epoch_seconds(model, optimizer, step, x, y)  # compiles, where it does
        variants[name] = (model, optimizer, step, first)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(4):  # interleaved, so that load from elsewhere falls on all alike
        for name, (model, optimizer, step, _) in variants.items():
            times[name].append(epoch_seconds(model, optimizer, step, x, y))
    steps = -(-N // B)
    for name, (_, _, _, first) in variants.items():
        per_step = 1000 * statistics.median(times[name]) / steps
        print(f"{name:40} {per_step:.3f} ms a step; first epoch {first:.1f} s")


if __name__ == "__main__":
    main()
