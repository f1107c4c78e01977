"""Seconds per training epoch: descent against a plain PyTorch loop and the usual torchvision + DataLoader pipeline.

Measured side by side in one process, on the same training tensors (Fashion-MNIST from Debian's package when
installed, else synthetic data of the same shape), the same MLP (784-512-512-10), seed and thread count:

  a     descent's real code (the composed conf/ with trainer=cpu logger=none, `build`, the trainer config) with
        the per-epoch evaluation switched off (last.ckpt still written each epoch); a_on the same with it on (the
        default, through `build_trainer` as `train` runs it), whole epochs including the evaluation, and the
        training part alone from descent's own `time/train_s`. Each epoch is timed until its checkpoints are
        written (a run writes them in the background while the next epoch trains; here `fit` waits for them).
  b     a plain PyTorch loop: randperm, slice, forward, backward, SGD step (one full-batch step for GD)
  c     the common template: torchvision's MNIST class (per sample: uint8 -> PIL -> ToTensor -> Normalize) on IDX
        files of the same samples, DataLoader with default collate, automatic optimization under a default
        Trainer (B=64 only); `c data` iterates its DataLoader alone, without training
  a_bar a with the progress bar a run shows in a terminal (`descent.progress`: Lightning's own, fed at most ten
        times a second; written to /dev/null): the bar's own cost
  cnn   at B=512, a with the LeNet CNN (model=cnn), and cnn_aug the same with data.augment={crop_padding: 2,
        flip: true}: what the crops and flips cost
  curv  one sharpness measurement (curvature.enabled=true, 20 Lanczos steps: 20 Hessian-vector products over the
        training set) at a_on's weights, once in the whole bench (after the first B's warm-up round): it is as long
        as several epochs, and the same work at every B (the whole training set, in the evaluation's chunks)
  a_64, a_16, b_64, b_16  at B=64, a and b with the small MLPs 784-64-10 and 784-16-10, whose steps are cheap:
        where descent's fixed cost per step weighs most (on a GPU, every small network's step is that cheap).
        `extra`: (a - b) / steps, descent's extra milliseconds per step, for each network
  l, l_16  at B=64, the plain loop's step in a bare LightningModule (manual optimization, batches sliced beforehand,
        no checkpoints or bar), for the default MLP and 784-16-10: l - b is Lightning's own per-batch cost, a - l
        descent's
  l8_16 l_16 with 8 optimizer steps in each Lightning batch: (l8 - b) / steps is Lightning's cost per step if a
        batch held several steps, the floor of that alternative (descent keeps one step a batch)
  noise one gradient-noise measurement (noise.enabled=true: the full gradient and 16 minibatches of 64) at a_on's
        weights after each of its epochs, against an epoch of a
  fwd   one forward pass of the same network over the train, val and test sets (the most the evaluation should
        add to an epoch), run right before and right after a_on's validation loop in the same epoch (their mean)

Every variant trains descent's MLP (`descent.nets.MLP`, ReLU in place) from the same initial weights.
At the end, one real `src/train.py` run (Fashion-MNIST, Adam, model.net.hidden=[512,512,512], B=64, 1 epoch) is
started as a subprocess and its peak resident memory printed.

Each round trains one more epoch of every variant in turn (forwards, then backwards), so that load from other
processes on this shared machine falls on all of them alike; the first round is a warm-up, the median of the
others is reported. Each ratio is printed twice: of the medians, and the median of the ratios within each round
(`paired`: b and a, a and a_on run back to back; c runs next to a_on, within seconds of a). The targets are judged
on `paired`: on this shared virtual machine the speed drifts by a tenth or more from one minute to the next, which
the ratio within a round cancels.
Run: `.venv/bin/python bench/epoch_speed.py [--threads 2] [--epochs 4] [--skip-torchvision]`.
"""

import argparse
import itertools
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import lightning
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import MNIST

from descent.checkpoints import BackgroundCheckpointIO
from descent.curvature import top_eigenvalues
from descent.data import ImageData
from descent.data.idx import IDX_FILES, IdxData
from descent.data.synthetic import SyntheticData
from descent.measurement import evaluating
from descent.nets import MLP
from descent.noise import GradientNoise
from descent.progress import progress_bar as descent_progress_bar
from descent.results import TRAIN_S
from descent.training import build, build_trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the IDX writer the tests use
from data_files import write_idx  # noqa: E402

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SEED = 0

Epoch = Callable[[], dict[str, float]]
"""Trains one more epoch of a variant and returns what was timed, in seconds, by name."""


def load_shared_data(scratch: Path) -> tuple[ImageData, str]:
    """The tensors every variant trains on: Fashion-MNIST if Debian's package is installed, else synthetic data."""
    if all((FASHION_MNIST_DIR / f"{name}.gz").is_file() for pair in IDX_FILES.values() for name in pair):
        empty = scratch / "no-data"
        empty.mkdir()
        data: ImageData = IdxData("FashionMNIST", str(empty), system_dir=str(FASHION_MNIST_DIR), download=False)
        name = "Fashion-MNIST"
    else:
        data, name = SyntheticData(num_train=60000, num_test=10000, val_size=5000), "synthetic"
    data.setup()
    return data, name


def compose_config(batch_size: int | str, data_name: str, scratch: Path, run_name: str, *extra: str) -> DictConfig:
    """conf/train.yaml as `src/train.py trainer=cpu logger=none ...` composes it; B = `full` means optimizer=gd."""
    if data_name == "Fashion-MNIST":
        data = ["data=fashion_mnist", f"data.data_dir={scratch / 'no-data'}", "data.download=false"]
    else:
        data = ["data=synthetic", "data.num_train=60000", "data.num_test=10000", "data.val_size=5000"]
    steps = ["optimizer=gd"] if batch_size == "full" else [f"batch_size={batch_size}"]
    overrides = ["trainer=cpu", "logger=none", f"seed={SEED}", f"run_dir={scratch / run_name}", *data, *steps, *extra]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


class EpochSeconds(Callback):
    """Wall time from the start of the epoch to the end of `fit` (with one epoch per `fit`, the whole epoch, until
    its checkpoints are written), and of the validation loop within it (this callback's hooks run before the
    checkpoint callbacks': no saving).

    `beside_validation`, if given, is run and timed right before and right after the validation loop (the fwd
    baseline, back to back with what it is compared with); its seconds are left out of the epoch's.
    """

    def __init__(self, beside_validation: Callable[[], float] | None = None) -> None:
        self.beside_validation = beside_validation
        self.seconds: list[float] = []
        self.validation_seconds: list[float] = []
        self.beside_seconds: list[list[float]] = []

    def on_train_epoch_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        self._start = time.perf_counter()
        self._beside: list[float] = []

    def on_validation_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        if hasattr(pl_module, "clock"):  # this hook runs before the module's: fwd is not training time
            pl_module.clock.stop(pl_module.device)
        if self.beside_validation is not None:
            self._beside.append(self.beside_validation())
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        self.validation_seconds.append(time.perf_counter() - self._validation_start)
        if self.beside_validation is not None:
            self._beside.append(self.beside_validation())

    def on_fit_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        # Lightning calls on_fit_end after its teardown, which waits for checkpoints written in the background.
        self.seconds.append(time.perf_counter() - self._start - sum(self._beside))
        self.beside_seconds.append(self._beside)


def fit_one_more_epoch(trainer: lightning.Trainer, model: lightning.LightningModule, **data: object) -> None:
    """Continue training for exactly one epoch: same model, trainer, optimizer state and epoch counter."""
    trainer.fit_loop.max_epochs = trainer.current_epoch + 1
    trainer.fit(model, **data)


def descent_epochs_with_evaluation(
    cfg: DictConfig, shared: ImageData, forward_pass: Callable[[], float], with_sharpness: bool
) -> Epoch:
    """a_on: `build` + `build_trainer` as `train(cfg)` calls them, with the full evaluation and checkpoints; fwd
    right before and right after each validation loop (the mean of the two); noise after each epoch; with
    `with_sharpness`, curv once, after the warm-up epoch."""
    lightning.seed_everything(SEED, verbose=False)
    data, model = build(cfg)
    data.sets = shared.sets  # the very tensors the other variants use (the same values; one copy in memory)
    trainer = build_trainer(cfg, Path(cfg.run_dir))
    timer = EpochSeconds(beside_validation=forward_pass)
    trainer.callbacks.append(timer)

    noise = GradientNoise(batch_size=64, samples=16)
    calls = 0

    def epoch() -> dict[str, float]:
        nonlocal calls
        calls += 1
        train_s_before = model.history[-1][TRAIN_S] if model.history else 0.0
        fit_one_more_epoch(trainer, model, datamodule=data)
        train_s = model.history[-1][TRAIN_S] - train_s_before
        start = time.perf_counter()
        with evaluating(model):  # as descent.measurement.EpochMeasurement runs each measurement
            noise.measure(trainer, model)  # what noise.enabled=true adds to each epoch, at these weights
        noise_s = time.perf_counter() - start
        curv: dict[str, float] = {}
        if with_sharpness and calls == 2:  # once, after the warm-up
            start = time.perf_counter()
            with evaluating(model):  # what curvature.enabled=true adds, the same way
                top_eigenvalues(model, 1, SHARPNESS_ITERATIONS, seed=0)
            curv["curv"] = time.perf_counter() - start
        return curv | {
            "noise": noise_s,
            "a_on": timer.seconds[-1],
            "a_on train": train_s,
            "a_on validation": timer.validation_seconds[-1],
            "a_on evaluation": timer.seconds[-1] - train_s,
            "fwd": statistics.mean(timer.beside_seconds[-1]),
        }

    return epoch


def descent_epochs_without_evaluation(
    cfg: DictConfig, shared: ImageData, progress_bar: bool = False, name: str = "a"
) -> Epoch:
    """a: descent's data and model under its trainer config, with `limit_val_batches=0`, saving last.ckpt each epoch;
    with `progress_bar`, the bar `build_trainer` gives a run in a terminal.

    The Trainer is built here from `cfg.trainer` rather than by `build_trainer`, whose best-checkpoint callback
    monitors val/error and would fail without an evaluation; last.ckpt is written as `build_trainer` writes it, so
    that a_on - a is what the evaluation adds, not the checkpointing a run does either way.
    """
    lightning.seed_everything(SEED, verbose=False)
    data, model = build(cfg)
    data.sets = shared.sets
    timer = EpochSeconds()
    last = ModelCheckpoint(Path(cfg.run_dir) / "checkpoints", "last", enable_version_counter=False)
    trainer = instantiate(
        cfg.trainer,
        logger=False,
        callbacks=[timer, last, *([descent_progress_bar()] if progress_bar else [])],
        plugins=[BackgroundCheckpointIO()],
        limit_val_batches=0,
        enable_progress_bar=progress_bar,
        gradient_clip_val=None,
        gradient_clip_algorithm=None,
    )

    def epoch() -> dict[str, float]:
        if not progress_bar:
            fit_one_more_epoch(trainer, model, datamodule=data)
            return {name: timer.seconds[-1]}
        with open(os.devnull, "w") as devnull, redirect_stdout(devnull), redirect_stderr(devnull):
            fit_one_more_epoch(trainer, model, datamodule=data)
        return {name: timer.seconds[-1]}

    return epoch


def plain_model(cfg: DictConfig, x: Tensor, y: Tensor) -> nn.Sequential:
    """The MLP of `cfg.model`, initialised from the same seed as descent's."""
    torch.manual_seed(SEED)
    net = cfg.model.net
    return MLP(tuple(x.shape[1:]), int(y.max()) + 1, list(net.hidden), net.activation, net.dropout)


def plain_loop_epochs(cfg: DictConfig, x: Tensor, y: Tensor, batch_size: int, name: str = "b") -> Epoch:
    """b: randperm, slice, forward, backward, step; with B = N one full-batch step on the tensors as they are.

    SGD with the composed config's learning rate (0.05 for optimizer=sgd, 0.5 for gd), as descent steps.
    """
    net = plain_model(cfg, x, y)
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.optimizer.lr)

    def step(x_step: Tensor, y_step: Tensor) -> None:
        loss = F.cross_entropy(net(x_step), y_step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def epoch() -> dict[str, float]:
        start = time.perf_counter()
        if batch_size >= len(y):
            step(x, y)
        else:
            order = torch.randperm(len(y))
            for first in range(0, len(y), batch_size):
                index = order[first : first + batch_size]
                step(x[index], y[index])
        return {name: time.perf_counter() - start}

    return epoch


class TemplateClassifier(lightning.LightningModule):
    """The common template's module: automatic optimization, the loss returned from `training_step`."""

    def __init__(self, net: nn.Module, lr: float) -> None:
        super().__init__()
        self.net, self.lr = net, lr

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x.flatten(1)), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class PlainLightningStep(lightning.LightningModule):
    """l: the plain loop's step (forward, backward, SGD step) as the least a LightningModule under manual
    optimization can do, fed batches sliced beforehand: l - b is Lightning's own cost per batch, a - l descent's."""

    def __init__(self, net: nn.Module, lr: float) -> None:
        super().__init__()
        self.net, self.lr, self.automatic_optimization = net, lr, False

    def training_step(self, batch: tuple[Tensor, Tensor] | list[tuple[Tensor, Tensor]], batch_idx: int) -> None:
        optimizer = self.optimizers()
        for x, y in batch if isinstance(batch, list) else [batch]:  # several steps a batch: l8
            loss = F.cross_entropy(self.net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class SlicedBatches:
    """An epoch's batches of B samples in a fresh random order, sliced as the plain loop slices them; with
    `steps_per_batch` > 1, Lightning's batches are lists of that many of them."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, steps_per_batch: int = 1) -> None:
        self.x, self.y, self.batch_size, self.steps_per_batch = x, y, batch_size, steps_per_batch

    def __len__(self) -> int:
        return -(-len(self.y) // (self.batch_size * self.steps_per_batch))

    def __iter__(self):  # type: ignore[no-untyped-def]
        order = torch.randperm(len(self.y))
        steps = ((self.x[index], self.y[index]) for index in order.split(self.batch_size))
        if self.steps_per_batch == 1:
            yield from steps
            return
        while group := list(itertools.islice(steps, self.steps_per_batch)):
            yield group


def plain_lightning_epochs(
    cfg: DictConfig, x: Tensor, y: Tensor, batch_size: int, name: str = "l", steps_per_batch: int = 1
) -> Epoch:
    """l: `PlainLightningStep` under the bench's trainer settings (no checkpoints, no logger, no bar); l8 the same
    with STEPS_PER_BATCH optimizer steps in each Lightning batch."""
    model = PlainLightningStep(plain_model(cfg, x, y), cfg.optimizer.lr)
    timer = EpochSeconds()
    trainer = instantiate(
        cfg.trainer, logger=False, callbacks=[timer], enable_checkpointing=False, enable_progress_bar=False,
        limit_val_batches=0, gradient_clip_val=None, gradient_clip_algorithm=None, enable_model_summary=False,
    )  # fmt: skip
    batches = SlicedBatches(x, y, batch_size, steps_per_batch)

    def epoch() -> dict[str, float]:
        fit_one_more_epoch(trainer, model, train_dataloaders=batches)
        return {name: timer.seconds[-1]}

    return epoch


def as_uint8_images(x: Tensor) -> Tensor:
    """Undo the normalisation (an affine map, so min and max give it back): [N, 784] float -> [N, 28, 28] uint8."""
    x = x.flatten(1)
    low, high = x.min(), x.max()
    return ((x - low) / (high - low) * 255).round().to(torch.uint8).reshape(len(x), 28, 28)


def torchvision_mnist(shared: ImageData, root: Path, transform: Callable[[Image.Image], Tensor]) -> MNIST:
    """torchvision's own `MNIST` dataset over the very training samples the other variants use (its per-sample
    `__getitem__`: uint8 tensor -> numpy -> PIL image -> transform), written as the IDX files it reads."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, name in (("train", "train"), ("t10k", "test")):
        images, y = shared.sets[name]
        write_idx(raw / f"{prefix}-images-idx3-ubyte", as_uint8_images(images.normalised()))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y.to(torch.uint8))
    return MNIST(str(root), train=True, transform=transform, download=False)


def torchvision_pipeline_epochs(cfg: DictConfig, shared: ImageData, scratch: Path, batch_size: int) -> Epoch:
    """c: torchvision's MNIST (PIL -> ToTensor -> Normalize per sample), a shuffling DataLoader with default
    collate and no workers, automatic optimization under a default Trainer (progress bar, model summary, logger
    and checkpoint as Lightning sets them up; their output goes to /dev/null). `c data` is the loader alone."""
    dataset = torchvision_mnist(shared, scratch / "torchvision", transforms.ToTensor())
    images = dataset.data.float() / 255
    normalise = transforms.Normalize((images.mean().item(),), (images.std().item(),))
    dataset.transform = transforms.Compose([transforms.ToTensor(), normalise])
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    images, y = shared.sets["train"]
    model = TemplateClassifier(plain_model(cfg, images.x, y), lr=cfg.optimizer.lr)
    timer = EpochSeconds()
    trainer = lightning.Trainer(
        accelerator="cpu", devices=1, callbacks=[timer], default_root_dir=scratch / "torchvision-trainer"
    )

    def epoch() -> dict[str, float]:
        with open(os.devnull, "w") as devnull, redirect_stdout(devnull), redirect_stderr(devnull):
            fit_one_more_epoch(trainer, model, train_dataloaders=loader)
        start = time.perf_counter()
        for _ in loader:
            pass
        return {"c": timer.seconds[-1], "c data": time.perf_counter() - start}

    return epoch


def evaluation_forward_pass(cfg: DictConfig, shared: ImageData) -> Callable[[], float]:
    """fwd: loss and errors of one forward pass over train, val and test in eval mode, `chunk_size` at a time."""
    images, y = shared.sets["train"]
    net = plain_model(cfg, images.x, y).eval()
    sets = [(x_set.normalised(), y_set) for x_set, y_set in shared.sets.values()]  # float32, as a plain loop has

    def seconds() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for x_set, y_set in sets:
                chunks = zip(x_set.split(cfg.chunk_size), y_set.split(cfg.chunk_size), strict=True)
                for x_chunk, y_chunk in chunks:
                    logits = net(x_chunk)
                    F.cross_entropy(logits, y_chunk, reduction="sum").item()
                    (logits.argmax(1) != y_chunk).sum().item()
        return time.perf_counter() - start

    return seconds


def interleaved_epoch_seconds(variants: list[Epoch], epochs: int) -> dict[str, list[float]]:
    """One warm-up round, then `epochs` rounds of one epoch of each variant; the i-th entries share a round.

    The rounds run the variants forwards and backwards in turn, so that neighbours in the list always run back to
    back, each first as often as second when `epochs` is even.
    """
    timings: dict[str, list[float]] = {}
    for round_number in range(1 + epochs):
        for epoch in variants if round_number % 2 == 0 else variants[::-1]:
            for name, seconds in epoch().items():
                if round_number > 0:
                    timings.setdefault(name, []).append(seconds)
    return timings


def measure_batch_size(
    batch_size: int | str,
    shared: ImageData,
    data_name: str,
    scratch: Path,
    epochs: int,
    with_torchvision: bool,
    with_sharpness: bool,
) -> dict[str, list[float]]:
    """Seconds of each timed epoch of every variant at one B (`full`: descent's optimizer=gd)."""
    label = "gd" if batch_size == "full" else f"b{batch_size}"
    cfg_on = compose_config(batch_size, data_name, scratch, f"{label}-on")
    cfg_off = compose_config(batch_size, data_name, scratch, f"{label}-off")
    images, y = shared.sets["train"]
    steps_of = len(y) if batch_size == "full" else int(batch_size)
    # Neighbours run back to back (see interleaved_epoch_seconds): a_bar and b, b and l (B=64 only) or a, l and a,
    # a and a_on, a_on and c; fwd runs inside a_on.
    variants = [
        descent_epochs_without_evaluation(cfg_off, shared, progress_bar=True, name="a_bar"),
        plain_loop_epochs(cfg_off, images.normalised(), y, steps_of),
        *([plain_lightning_epochs(cfg_off, images.normalised(), y, steps_of)] if batch_size == 64 else []),
        descent_epochs_without_evaluation(cfg_off, shared),
        descent_epochs_with_evaluation(cfg_on, shared, evaluation_forward_pass(cfg_off, shared), with_sharpness),
    ]
    if with_torchvision:
        variants.append(torchvision_pipeline_epochs(cfg_off, shared, scratch, steps_of))
    if batch_size == 64:  # small networks, where a step is cheap and the per-step cost weighs most
        for width in TINY_WIDTHS:
            cfg = compose_config(64, data_name, scratch, f"mlp{width}", f"model.net.hidden=[{width}]")
            variants.append(plain_loop_epochs(cfg, images.normalised(), y, steps_of, name=f"b_{width}"))
            if width == 16:  # the split of the extra for the cheapest step (the default MLP's is split above)
                variants.append(plain_lightning_epochs(cfg, images.normalised(), y, steps_of, name=f"l_{width}"))
                several = plain_lightning_epochs(
                    cfg, images.normalised(), y, steps_of, name="l8_16", steps_per_batch=STEPS_PER_BATCH
                )
                variants.append(several)
            variants.append(descent_epochs_without_evaluation(cfg, shared, name=f"a_{width}"))
    if batch_size == 512:  # the augmentation's cost, on the network it is for; the two run back to back
        cnn = ("model=cnn",)
        augmented = (*cnn, "data.augment={crop_padding:2,flip:true}")
        variants.append(
            descent_epochs_without_evaluation(compose_config(512, data_name, scratch, "cnn", *cnn), shared, name="cnn")
        )
        variants.append(
            descent_epochs_without_evaluation(
                compose_config(512, data_name, scratch, "cnn-aug", *augmented), shared, name="cnn_aug"
            )
        )
    started = time.perf_counter()
    timings = interleaved_epoch_seconds(variants, epochs)
    timings["a_on - a"] = [on - off for on, off in zip(timings["a_on"], timings["a"], strict=True)]
    steps = -(-len(y) // steps_of)  # ceil(N / B)
    for net in ("", *(f"_{width}" for width in TINY_WIDTHS)) if batch_size == 64 else ():
        per_step = [1000 * (a - b) / steps for a, b in zip(timings[f"a{net}"], timings[f"b{net}"], strict=True)]
        timings[f"extra{net}"] = per_step
        if f"l{net}" in timings:  # the extra split: Lightning's loop (l - b) and descent's own (a - l)
            for part, (top, bottom) in {
                "lightning": ("l", "b"),
                "descent": ("a", "l"),
                "lightning8": ("l8", "b"),
            }.items():
                if f"{top}{net}" in timings:
                    pairs = zip(timings[f"{top}{net}"], timings[f"{bottom}{net}"], strict=True)
                    timings[f"extra{net} {part}"] = [1000 * (t - u) / steps for t, u in pairs]
    print(f"  B={batch_size}: {time.perf_counter() - started:.0f} s", flush=True)
    return timings


ROWS = {
    "a": "a     descent, evaluation off",
    "a_bar": "a_bar descent, evaluation off, progress bar on",
    "a_on": "a_on  descent, evaluation on (whole epoch)",
    "a_on train": "        of which training (time/train_s)",
    "a_on validation": "        of which the validation loop",
    "b": "b     plain PyTorch loop",
    "l": "l     the plain step in a LightningModule",
    "c": "c     torchvision + DataLoader + default Trainer",
    "c data": "c data  its torchvision + DataLoader alone",
    "fwd": "fwd   forward pass over train+val+test",
    "noise": "noise gradient noise, one measurement",
    "curv": "curv  sharpness, one measurement (20 Lanczos steps)",
    "a_64": "a_64  descent, MLP 784-64-10, evaluation off",
    "b_64": "b_64  plain loop, MLP 784-64-10",
    "a_16": "a_16  descent, MLP 784-16-10, evaluation off",
    "b_16": "b_16  plain loop, MLP 784-16-10",
    "l_16": "l_16  the plain step in a LightningModule, 784-16-10",
    "l8_16": "l8_16 the same, 8 optimizer steps a Lightning batch",
    "cnn": "cnn   LeNet CNN, evaluation off",
    "cnn_aug": "cnn_aug the same, crops and flips on",
}

Target = tuple[str, float]
"""("<=", 1.15): the paired ratio must be at most 1.15; (">=", 4.0): at least 4."""

RATIOS: list[tuple[str, str, str, dict[int | str, Target] | Target | None]] = [
    # title, numerator, denominator, target (one for every B, or by B)
    ("a/b", "a", "b", {64: ("<=", 1.10), 512: ("<=", 1.05), "full": ("<=", 1.05)}),
    ("a_64/b_64 (MLP 784-64-10)", "a_64", "b_64", None),
    ("a_16/b_16 (MLP 784-16-10)", "a_16", "b_16", ("<=", 1.5)),
    ("a_bar/a (the progress bar's cost)", "a_bar", "a", None),
    ("a_on/b", "a_on", "b", None),
    # The evaluation should add at most a forward pass, measured against the evaluation-off run (which writes
    # last.ckpt too). Within a_on's epochs, what is not training also holds the write of last.ckpt.
    ("eval cost (a_on - a) / fwd", "a_on - a", "fwd", ("<=", 1.0)),
    ("(a_on - its train part) / fwd", "a_on evaluation", "fwd", None),
    ("noise measurement / training epoch (a)", "noise", "a", ("<=", 1.0)),
    ("sharpness measurement / training epoch (a)", "curv", "a", None),
    ("c/a", "c", "a", (">=", 4.0)),
    # What c/a could reach if descent cost no more than the plain loop: c/a's ceiling on this machine.
    ("c/b", "c", "b", None),
    ("c data/a", "c data", "a", None),
    ("augmentation (cnn_aug/cnn)", "cnn_aug", "cnn", ("<=", 1.10)),
]


TINY_WIDTHS = (64, 16)
"""The small MLPs timed at B=64 beside the default one: 784-64-10 and 784-16-10."""

STEPS_PER_BATCH = 8
"""l8_16's optimizer steps in each Lightning batch: what Lightning's per-batch cost becomes per step if a batch
held several steps (an alternative descent does not take: see docs/speed.md)."""

EXTRA_ROWS = {
    "extra": "MLP 784-512-512-10",
    "extra lightning": "  of which Lightning's loop (l - b)",
    "extra descent": "  of which descent's own (a - l)",
    "extra_64": "MLP 784-64-10",
    "extra_16": "MLP 784-16-10",
    "extra_16 lightning": "  of which Lightning's loop (l - b)",
    "extra_16 descent": "  of which descent's own (a - l)",
    "extra_16 lightning8": "  Lightning's loop at 8 steps a batch (l8 - b)",
}
EXTRA_TARGET_MS = 0.25
"""descent's extra per step at B=64 (issue 31's goal)."""


def print_report(results: dict[int | str, dict[str, list[float]]], header: str) -> None:
    """Median seconds by variant and B; then each ratio of medians and the median of the per-round ratios (less
    sensitive to load that drifts during the run) beside its target, judged on the latter."""
    titles = {b: "GD (B=N)" if b == "full" else f"B={b}" for b in results}
    print(f"\n{header}\n")
    print(f"{'seconds per epoch (median)':46}" + "".join(f"{title:>10}" for title in titles.values()))
    for key, title in ROWS.items():
        if any(key in timings for timings in results.values()):
            medians = [
                statistics.median(timings[key]) if key in timings else float("nan") for timings in results.values()
            ]
            print(f"{title:46}" + "".join(f"{median:>10.3f}" for median in medians))

    print(f"\n{'ratio':46}{'medians':>10}{'paired':>10}{'target':>10}{'met':>6}")
    for b, timings in results.items():
        for name, numerator, denominator, rule in RATIOS:
            if numerator not in timings:
                continue
            top, bottom = timings[numerator], timings[denominator]
            of_medians = statistics.median(top) / statistics.median(bottom)
            # A measurement taken once (curv) has no rounds to pair: its ratio is of the medians.
            paired = (
                statistics.median(x / y for x, y in zip(top, bottom, strict=True))
                if len(top) == len(bottom)
                else of_medians
            )
            target = rule.get(b) if isinstance(rule, dict) else rule
            line = f"{name + ' ' + titles[b]:46}{of_medians:>10.3f}{paired:>10.3f}"
            if target is not None:
                relation, bound = target
                met = paired <= bound if relation == "<=" else paired >= bound
                line += f"{relation + ' ' + str(bound):>10}{'yes' if met else 'NO':>6}"
            print(line)
    print(f"\n{'descent extra per step, (a - b) / steps (ms)':46}{'median':>10}{'':>10}{'target':>10}{'met':>6}")
    for b, timings in results.items():
        for key, network in EXTRA_ROWS.items():
            if key in timings:
                median = statistics.median(timings[key])
                line = f"{network + ' ' + titles[b]:46}{median:>10.3f}{'':>10}"
                if " " not in key:
                    line += f"{'<= ' + str(EXTRA_TARGET_MS):>10}{'yes' if median <= EXTRA_TARGET_MS else 'NO':>6}"
                print(line)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak_mib:.0f} MiB; load average (1 min) at the end {os.getloadavg()[0]:.2f}")


def parse_batch_size(text: str) -> int | str:
    if text in ("full", "gd"):
        return "full"
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of samples or `full`")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs after one warm-up (default 4)")
    parser.add_argument(
        "--batch-sizes",
        nargs="+",
        type=parse_batch_size,
        default=[64, 512, "full"],
        help="B values; `full` is full-batch GD, descent's optimizer=gd (default 64 512 full)",
    )
    parser.add_argument(
        "--skip-torchvision",
        action="store_true",
        help="leave out the per-sample PIL + DataLoader pipeline (about 20 s an epoch on 2 cores; B=64 only)",
    )
    args = parser.parse_args()
    if args.epochs < 1 or args.threads < 1:
        parser.error("--epochs and --threads must be at least 1")

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # the per-fit "GPU available" lines
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")

    with tempfile.TemporaryDirectory(prefix="epoch-speed-") as scratch_name:
        scratch = Path(scratch_name)
        shared, data_name = load_shared_data(scratch)
        n_train = len(shared.sets["train"][1])
        print(f"measuring {args.batch_sizes} on {data_name} ({n_train} training samples)", flush=True)
        first = args.batch_sizes[0]  # the sharpness is measured once, at the first B
        results = {
            b: measure_batch_size(
                b, shared, data_name, scratch, args.epochs, b == 64 and not args.skip_torchvision, b == first
            )
            for b in args.batch_sizes
        }
        model = compose_config(64, data_name, scratch, "header").model
    assert torch.get_num_threads() == args.threads, "something changed the thread count"
    inputs = int(torch.tensor(shared.input_shape).prod())
    widths = "-".join(str(width) for width in [inputs, *model.net.hidden, shared.num_classes])
    header = (
        f"{data_name}: {n_train} training samples, MLP {widths} ({model.net.activation}), "
        f"{args.threads} threads, torch {torch.__version__}, lightning {lightning.__version__}, "
        f"median of {args.epochs} epoch(s) after 1 warm-up, variants interleaved"
    )
    print_report(results, header)
    if data_name == "Fashion-MNIST":
        print(f"peak RSS of a real run ({' '.join(REAL_RUN)}): {real_run_peak_rss_mib():.0f} MiB")


SHARPNESS_ITERATIONS = 20
"""curvature.iterations's default."""

REAL_RUN = ("data=fashion_mnist", "optimizer=adam", "model.net.hidden=[512,512,512]", "batch_size=64", "max_epochs=1")
"""The issue's memory comparison: lightning-hydra-template's same network on the same files peaked at 0.96 GB."""


PEAK_AT_EXIT = (
    "import atexit, runpy, sys; "
    "peak = lambda: [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0]; "
    "atexit.register(lambda: print('VmHWM', peak(), file=sys.stderr)); "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)
"""Runs a script and prints its own peak resident memory (kB) as it exits. A child's ru_maxrss seen from here would
count the bench's own pages that the child shared before it ran the script."""


def real_run_peak_rss_mib() -> float:
    """`src/train.py` with REAL_RUN, in a process of its own; its peak resident set size."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="epoch-speed-run-") as run_dir:
        done = subprocess.run(
            [sys.executable, "-c", PEAK_AT_EXIT, "src/train.py", *REAL_RUN, "logger=none", "trainer=cpu",
             f"hydra.run.dir={run_dir}"],
            cwd=CONF_DIR.parent, check=True, capture_output=True, text=True,
        )  # fmt: skip
    (peak,) = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("VmHWM ")]
    return int(peak) / 1024


if __name__ == "__main__":
    main()
