"""`train(cfg)` and `evaluate(cfg)`: build data, model and trainer from a composed config and run them."""

import json
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from descent.checkpoints import AtomicCheckpointIO, BackgroundCheckpointIO, check_fits
from descent.data import EVAL_SETS, ImageData, is_sample_count
from descent.errors import is_number, is_whole, require
from descent.files import replace_text
from descent.memory import estimate, free_bytes, plan_chunk_size
from descent.model import Classifier, StoppedEarly, check_settings
from descent.tensorboard import TensorBoardTabs, final_and_best, hyperparameters

log = logging.getLogger(__name__)


def check_config(cfg: DictConfig) -> None:
    """Fail on settings that cannot work before any data is loaded, naming the key."""
    require(
        is_sample_count(cfg.batch_size),
        f"batch_size={cfg.batch_size!r} is not allowed: give a positive number of samples per step, or batch_size=full",
    )
    require(
        is_sample_count(cfg.chunk_size),
        f"chunk_size={cfg.chunk_size!r} is not allowed: give a positive number of samples, or chunk_size=full",
    )
    monitors = [f"{stage}/{kind}" for stage in EVAL_SETS for kind in ("loss", "error")]
    require(
        cfg.monitor in monitors,
        f"monitor={cfg.monitor!r} is not allowed: choose the best epoch (and a sweep's objective) by one of "
        f"{', '.join(monitors)}",
    )
    lr = cfg.optimizer.get("lr")
    require(
        is_number(lr) and lr > 0,
        f"optimizer.lr={lr!r} is not allowed: the learning rate must be a positive number",
    )
    momentum = cfg.optimizer.get("momentum", 0.0)
    require(
        is_number(momentum) and 0 <= momentum < 1,
        f"optimizer.momentum={momentum!r} is not allowed: give a number in [0, 1), e.g. 0.9",
    )
    weight_decay = cfg.optimizer.get("weight_decay", 0.0)
    require(
        is_number(weight_decay) and weight_decay >= 0,
        f"optimizer.weight_decay={weight_decay!r} is not allowed: give a number >= 0 (0 for none)",
    )
    betas = cfg.optimizer.get("betas", (0.9, 0.999))
    require(
        len(betas) == 2 and all(is_number(beta) and 0 <= beta < 1 for beta in betas),
        f"optimizer.betas={list(betas)!r} is not allowed: give two numbers in [0, 1), e.g. [0.9,0.999]",
    )
    gamma = (cfg.get("scheduler") or {}).get("gamma", 1.0)
    require(
        is_number(gamma) and gamma > 0,
        f"scheduler.gamma={gamma!r} is not allowed: the learning rate is multiplied by it every epoch, give a "
        "positive number (below 1 to decay)",
    )
    model = cfg.model
    check_settings(model.get("hidden"), model.get("activation"), model.get("dropout"), model.get("backprop"))
    val_size = cfg.data.get("val_size", 1)
    require(
        is_whole(val_size) and val_size >= 1,
        f"data.val_size={val_size!r} is not allowed: give a whole number of samples, at least 1",
    )
    require(
        cfg.seed is None or is_whole(cfg.seed),
        f"seed={cfg.seed!r} is not allowed: give a whole number, or null for no seeding",
    )
    require(
        is_whole(cfg.max_epochs) and cfg.max_epochs >= 1,
        f"max_epochs={cfg.max_epochs!r} is not allowed: give a whole number of epochs, at least 1",
    )
    budget = cfg.memory_budget_bytes
    require(
        budget is None or (is_whole(budget) and budget > 0),
        f"memory_budget_bytes={budget!r} is not allowed: give a positive number of bytes, or null for what the "
        "device reports as free",
    )
    for key in ("limit_train_batches", "limit_val_batches"):
        value = cfg.trainer.get(key)
        require(
            value is None or (is_number(value) and value == 1),
            f"trainer.{key}={value!r} is not allowed: Lightning sees each epoch and each evaluated set as one batch "
            "(the model steps through their chunks), so only all of it (1.0) works; shorten a run with max_epochs, "
            "evaluate less often with trainer.check_val_every_n_epoch",
        )
    accelerator = cfg.trainer.get("accelerator")
    if accelerator in ("gpu", "cuda"):
        require(
            torch.cuda.is_available(),
            "trainer.accelerator=gpu but PyTorch sees no CUDA GPU here: use trainer=cpu",
        )
    if accelerator == "mps":
        require(
            torch.backends.mps.is_available(),
            "trainer.accelerator=mps but this machine has no Apple MPS device: use trainer=cpu",
        )


def build(cfg: DictConfig) -> tuple[ImageData, Classifier]:
    """The data (loaded and checked) and the model sized to it."""
    batch_size = cfg.batch_size
    if cfg.full_batch and batch_size != "full":
        log.warning("optimizer=gd takes one step over all N training samples: ignoring batch_size=%s", batch_size)
        batch_size = "full"
    data: ImageData = instantiate(cfg.data, batch_size=batch_size)
    data.setup("fit")
    model: Classifier = instantiate(cfg.model, input_size=data.input_size, num_classes=data.num_classes)
    return data, model


def plan_memory(cfg: DictConfig, data: ImageData, model: Classifier, trainer: lightning.Trainer) -> int:
    """Say what the run will hold on each device, and return the chunk size that fits `memory_budget_bytes`."""
    device = trainer.strategy.root_device
    budget = cfg.memory_budget_bytes if cfg.memory_budget_bytes is not None else free_bytes(device)
    optimizer = model.optimizer
    plan = estimate(
        data.nbytes,
        model.net,
        getattr(optimizer, "func", optimizer).__name__,
        getattr(optimizer, "keywords", {}).get("momentum", 0),
        budget,
    )
    per_device = -(-data.samples_per_step // trainer.world_size)
    return plan_chunk_size(plan, per_device, data.samples_per_chunk, cfg.full_batch, device)


def build_trainer(
    cfg: DictConfig, run_dir: Path, callbacks: tuple[Callback, ...] = (), **overrides: Any
) -> lightning.Trainer:
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    # Two callbacks, not save_last=True: Lightning 2.6 writes "last" only in epochs that improved "best".
    best = ModelCheckpoint(run_dir / "checkpoints", "best", cfg.monitor, mode="min", enable_version_counter=False)
    last = ModelCheckpoint(run_dir / "checkpoints", "last", enable_version_counter=False)
    plugins = [BackgroundCheckpointIO()]
    return instantiate(cfg.trainer, logger=logger, callbacks=[best, last, *callbacks], plugins=plugins, **overrides)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, evaluating every epoch; write config.yaml and metrics.json to the run dir and return the metrics."""
    check_config(cfg)
    run_dir = Path(cfg.run_dir)
    if cfg.seed is not None:
        lightning.seed_everything(cfg.seed, workers=True, verbose=False)
    data, model = build(cfg)
    trainer = build_trainer(cfg, run_dir, callbacks=(TensorBoardTabs(hyperparameters(cfg, data), data, cfg.monitor),))
    data.samples_per_chunk = plan_memory(cfg, data, model, trainer)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        # Resolved, so eval.py can rebuild this run without Hydra's runtime.
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    if cfg.ckpt_path is not None:
        check_fits(Path(cfg.ckpt_path), model)
    try:
        with stop_on_signals(model):
            trainer.fit(model, datamodule=data, ckpt_path=cfg.ckpt_path)
    except StoppedEarly as stopped:
        # What the run has so far, marked as stopped; last.ckpt is that of the last finished epoch.
        if trainer.is_global_zero:
            best_path = trainer.checkpoint_callbacks[0].best_model_path
            result = summarise(model.history, cfg.monitor, run_dir, best_path) if model.history else {"history": []}
            result["stopped"] = {
                "reason": type(stopped).__name__.lower(),  # diverged or interrupted
                "epoch": stopped.epoch,
                "step": stopped.step,
                "message": str(stopped),
            }
            replace_text(run_dir / "metrics.json", json.dumps(result, indent=2) + "\n")
        raise
    result = summarise(model.history, cfg.monitor, run_dir, trainer.checkpoint_callbacks[0].best_model_path)
    if trainer.is_global_zero:
        replace_text(run_dir / "metrics.json", json.dumps(result, indent=2) + "\n")
        log.info("\n%s", format_table(result))
    return result


@contextmanager
def stop_on_signals(model: Classifier) -> Iterator[None]:
    """SIGINT and SIGTERM ask the model to stop before its next optimizer step (a second SIGINT stops at once)."""

    def ask_to_stop(signum: int, frame: Any) -> None:
        if model.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        model.stop_signal = signal.Signals(signum).name

    if threading.current_thread() is not threading.main_thread():  # signals can only be handled there
        yield
        return
    previous = {number: signal.signal(number, ask_to_stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def summarise(history: list[dict[str, float]], monitor: str, run_dir: Path, best_checkpoint: str) -> dict[str, Any]:
    """Final and best-epoch figures (best by `monitor`, the first epoch reaching it) with the whole history."""
    final, best = final_and_best(history, monitor)
    return {
        "run_dir": str(run_dir),
        "monitor": monitor,
        "final": final,
        "best": best,
        "best_checkpoint": best_checkpoint,
        "history": history,
    }


def format_table(result: dict[str, Any]) -> str:
    columns = [(f"{name} {kind}", f"{name}/{kind}") for name in (*EVAL_SETS, "gap") for kind in ("loss", "error")]
    header = f"{'':16}" + "".join(f"{title:>12}" for title, _ in columns)
    lines = [header]
    for label in ("final", "best"):
        row = result[label]
        cells = "".join(
            f"{row[key]:>12.4f}" if key.endswith("loss") else f"{100 * row[key]:>11.2f}%" for _, key in columns
        )
        lines.append(f"{label + ' (epoch ' + str(int(row['epoch'])) + ')':16}{cells}")
    return "\n".join(lines)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Figures of a checkpoint on the train, val and test sets of the run that wrote it."""
    ckpt_path = Path(cfg.ckpt_path)
    require(ckpt_path.is_file(), f"ckpt_path={ckpt_path}: no such checkpoint file")
    run_config = ckpt_path.parent.parent / "config.yaml"
    require(
        run_config.is_file(),
        f"ckpt_path={ckpt_path}: no config.yaml in its run dir ({run_config.parent}); "
        "evaluate a checkpoint inside the run dir that src/train.py wrote",
    )
    run_cfg = OmegaConf.load(run_config)
    if cfg.data_dir is not None:
        run_cfg.data.data_dir = cfg.data_dir
    run_cfg.trainer, run_cfg.run_dir = cfg.trainer, cfg.run_dir  # the device is chosen now, not at training
    check_config(run_cfg)
    data, model = build(run_cfg)
    check_fits(ckpt_path, model)
    trainer = instantiate(run_cfg.trainer, logger=False, plugins=[AtomicCheckpointIO()])
    trainer.validate(model, datamodule=data, ckpt_path=str(ckpt_path), verbose=False)
    figures = model.last_evaluation
    log.info(
        "%s: test loss %.4f  test error %.2f%%  test accuracy %.2f%%",
        ckpt_path,
        figures["test/loss"],
        100 * figures["test/error"],
        100 * figures["test/acc"],
    )
    if trainer.is_global_zero:
        figures_json = json.dumps({"ckpt_path": str(ckpt_path), **figures}, indent=2) + "\n"
        replace_text(Path(cfg.run_dir) / "metrics.json", figures_json)
    return figures
