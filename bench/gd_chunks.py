"""One epoch of batch gradient descent on MNIST-sized data, by chunk size, against a plain full-batch step.

Data: 60,000 x 784 float32 (seeded noise: speed and memory do not depend on the values). Network: MLP
784-512-512-10. Each variant runs in a fresh process, so that its peak RSS is its own; the figure reported is the
peak RSS above what the process held once the data was in memory. descent's variant is its real training path
(Lightning Trainer, `Classifier`, `Batches`), with the per-epoch evaluation switched off: this times the step.

    python bench/gd_chunks.py [--threads 2] [--epochs 3] [--chunks 2000 5000 10000 20000 60000]
"""

import argparse
import multiprocessing
import resource
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

N, FEATURES, HIDDEN, CLASSES, LR, SEED = 60_000, 784, [512, 512], 10, 0.1, 0


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(SEED)
    return torch.randn(N, FEATURES, generator=generator), torch.randint(CLASSES, (N,), generator=generator)


def plain_full_batch_epochs(x: torch.Tensor, y: torch.Tensor, epochs: int) -> list[float]:
    """The textbook step: one forward and backward over all N samples, one optimizer step."""
    from descent.nets import MLP

    torch.manual_seed(SEED)
    net = MLP((FEATURES,), CLASSES, HIDDEN, "relu", 0.0)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def descent_gd_epochs(x: torch.Tensor, y: torch.Tensor, epochs: int, chunk_size: int) -> list[float]:
    """descent's exact GD: the step accumulated over chunks through Lightning, one optimizer step an epoch."""
    import lightning

    from descent.data import Plan, Tensors
    from descent.data.base import Steps
    from descent.module import Classifier
    from descent.nets import MLP

    class EpochTimer(lightning.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            self.seconds.append(time.perf_counter() - self.start)

    torch.manual_seed(SEED)
    model = Classifier(MLP((FEATURES,), CLASSES, HIDDEN), optimizer=lambda params: torch.optim.SGD(params, lr=LR))
    timer = EpochTimer()
    trainer = lightning.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=Steps(Plan(N, N, chunk_size, seed=SEED), Tensors(x), y))
    assert trainer.global_step == epochs  # one step an epoch, whatever the chunk size
    return timer.seconds


def measure(variant: str, chunk_size: int, threads: int, epochs: int, queue: Any) -> None:
    torch.set_num_threads(threads)
    import lightning  # noqa: F401  imported before the baseline, so that its memory is not counted as training's

    import descent.module  # noqa: F401

    x, y = data()
    baseline = rss_bytes()
    if variant == "plain":
        seconds = plain_full_batch_epochs(x, y, epochs + 1)
    else:
        seconds = descent_gd_epochs(x, y, epochs + 1, chunk_size)
    queue.put((statistics.median(seconds[1:]), peak_rss_bytes() - baseline))


def run_in_fresh_process(variant: str, chunk_size: int, threads: int, epochs: int) -> tuple[float, int]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(variant, chunk_size, threads, epochs, queue))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise SystemExit(f"{variant} chunk_size={chunk_size}: the measuring process failed (exit {process.exitcode})")
    return queue.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up (median reported)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[2048, 4096, 8192, 16_384, N])
    args = parser.parse_args()

    print(f"GD epoch, {N} x {FEATURES}, MLP {FEATURES}-{'-'.join(map(str, HIDDEN))}-{CLASSES}, {args.threads} threads")
    plain_s, plain_rss = run_in_fresh_process("plain", N, args.threads, args.epochs)
    print(f"{'variant':<26}{'s/epoch':>10}{'vs plain':>10}{'peak RSS above data':>22}{'vs plain':>10}")
    print(f"{'plain full-batch step':<26}{plain_s:>10.3f}{1:>10.2f}{plain_rss / 2**20:>18.0f} MiB{1:>10.2f}")
    rows = []
    for chunk in args.chunks:
        seconds, rss = run_in_fresh_process("descent", chunk, args.threads, args.epochs)
        rows.append((seconds, rss, chunk))
        print(
            f"{f'descent, chunk_size={chunk}':<26}{seconds:>10.3f}{seconds / plain_s:>10.2f}"
            f"{rss / 2**20:>18.0f} MiB{rss / plain_rss:>10.2f}"
        )
    meeting = [chunk for seconds, rss, chunk in rows if seconds <= plain_s and rss < plain_rss / 2]
    seconds, rss, chunk = min(rows)
    print(
        f"\nfastest: chunk_size={chunk}, time ratio {seconds / plain_s:.2f}, memory ratio {rss / plain_rss:.2f}; "
        f"no slower than the plain step with under half its memory (the target): "
        f"{', '.join(f'chunk_size={c}' for c in meeting) if meeting else 'NONE'}"
    )


if __name__ == "__main__":
    main()
