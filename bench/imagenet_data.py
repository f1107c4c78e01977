"""Imagenet32 at full size: the data path's samples per second against the training step's, and the peak RSS.

Data: a synthetic Imagenet32 of the real size (1,281,167 x 3,072 uint8 = 3.9 GB, 1000 classes), written once by
bench/make_imagenet.py into --dir and converted once into descent's memory-mapped cache; both are reused by later
runs. Measured in a fresh process, so that the peak RSS is the training run's, not the conversion's:

- data path: descent's own training iterable (`DownsampledImageNet.train_dataloader`): a seeded permutation of the
  1.27M training samples, B=256 rows gathered by index from the memory map on the prefetch thread, moved and
  normalised, consumed without computing anything;
- training step: the MLP 3072-1024-1024-1000 on B=256 samples already in memory (forward, backward, SGD step);

interleaved, round by round, so that load from other processes falls on both alike. The data path is then run for
a whole epoch to show that resident memory does not grow with the samples read.

    python bench/imagenet_data.py [--dir /tmp/descent-imagenet32-full] [--rounds 5] [--threads 2]
"""

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

B, HIDDEN, TRAIN, VAL, CLASSES = 256, [1024, 1024], 1_281_167, 50_000, 1000
STEPS_PER_ROUND = 40


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def prepare(directory: Path) -> None:
    """Generate the .npz files and convert them into the cache, in child processes, unless already done."""
    if not (directory / "val_data.npz").is_file():
        print(f"writing a full-size synthetic Imagenet32 into {directory} (once; a few minutes)", flush=True)
        bench = Path(__file__).parent
        subprocess.run([sys.executable, bench / "make_imagenet.py", "--out", directory], check=True)
    code = (
        f"from descent.data.npz_cache import Cache; Cache.prepare(__import__('pathlib').Path({str(directory)!r}), 32)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def data_path_round(chunks, n_steps: int) -> float:
    """Samples per second of the training iterable alone, over n_steps steps."""
    start = time.perf_counter()
    for _ in range(n_steps):
        (chunk,) = next(chunks)  # a step of one chunk (chunk_size = B)
        float(chunk.x[0, 0, 0, 0])  # the normalised chunk exists (on the CPU this is already so)
    return n_steps * B / (time.perf_counter() - start)


def step_round(net, optimizer, x, y, n_steps: int) -> float:
    start = time.perf_counter()
    for _ in range(n_steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    return n_steps * B / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/descent-imagenet32-full"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epoch-fraction", type=float, default=1.0, help="of an epoch read at the end")
    args = parser.parse_args()
    prepare(args.dir)
    torch.set_num_threads(args.threads)

    from descent.data.downsampled import DownsampledImageNet
    from descent.nets import MLP

    data = DownsampledImageNet(str(args.dir), batch_size=B, chunk_size=B, val_size=10_000, seed=0)
    data.setup("fit")
    file_bytes = (args.dir / "cache" / "imagenet32" / "train_x.u8").stat().st_size
    inputs = 3 * 32 * 32
    header = data.sets["train"][0].cache.header
    print(f"data: {header['num_train']:,} x {inputs} uint8 = {file_bytes / 1e9:.2f} GB memory-mapped")
    chunks = iter(data.train_dataloader())
    torch.manual_seed(0)
    net = MLP(data.input_shape, CLASSES, HIDDEN, "relu", 0.0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(B, *data.input_shape), torch.randint(CLASSES, (B,))
    data_path_round(chunks, 5), step_round(net, optimizer, x, y, 2)  # warm-up
    data_rates, step_rates = [], []
    for _ in range(args.rounds):
        data_rates.append(data_path_round(chunks, STEPS_PER_ROUND * 10))
        step_rates.append(step_round(net, optimizer, x, y, STEPS_PER_ROUND))
    data_rate, step_rate = statistics.median(data_rates), statistics.median(step_rates)
    print(f"MLP {inputs}-{'-'.join(map(str, HIDDEN))}-{CLASSES}, B={B}, CPU, {args.threads} threads; "
          f"median of {args.rounds} interleaved rounds")  # fmt: skip
    print(f"  data path (gather from memmap + normalise): {data_rate:>10,.0f} samples/s")
    print(f"  training step (forward + backward + SGD):   {step_rate:>10,.0f} samples/s")
    print(f"  ratio data path / step: {data_rate / step_rate:.1f}x (target >= 5)")
    rss_before = rss_bytes()
    n_epoch = int(args.epoch_fraction * data.num_train) // B
    chunks.close()  # stops its prefetch thread
    start = time.perf_counter()
    for _, step in zip(range(n_epoch), data.train_dataloader(), strict=False):
        del step
    seconds = time.perf_counter() - start
    print(f"  data path over {n_epoch * B:,} samples ({args.epoch_fraction:g} epoch): {n_epoch * B / seconds:,.0f} "
          f"samples/s; RSS {gib(rss_before)} before, {gib(rss_bytes())} after")  # fmt: skip
    peak = peak_rss_bytes()
    print(f"  peak RSS: {gib(peak)} (target < 2 GiB) while the data file is {file_bytes / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
