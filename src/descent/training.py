"""`train(cfg)`: build data, network, module and trainer from a composed config and run them."""

import json
import logging
import sys
from pathlib import Path
from typing import Any

import lightning
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from descent import metrics, results, slurm
from descent.batchnorm import check_batch_coupling
from descent.checkpoints import (
    BackgroundCheckpointIO,
    StepState,
    check_fits,
    in_precision,
    load,
    periodic_checkpoints,
)
from descent.config import check_config, one_max_epochs
from descent.curvature import GradientFlow, Sharpness
from descent.data import ImageData
from descent.errors import require
from descent.files import replace_text
from descent.loggers import build_loggers, finish_logger_runs, log_settings, quiet_lightning
from descent.memory import estimate, free_bytes, plan_chunk_size, run_dtype
from descent.module import Classifier
from descent.monitor import monitor_mode
from descent.noise import GradientNoise
from descent.progress import ProgressLines, progress_bar
from descent.resume import GoingOn
from descent.stepping import KeepWeightsOnLightningStop
from descent.stopping import StoppedEarly, received, stop_on_signals, why_it_ended
from descent.tensorboard import TensorBoardTabs, hyperparameters
from descent.trial import trial_reports

log = logging.getLogger(__name__)

CLIPPING = ("gradient_clip_val", "gradient_clip_algorithm")
"""Trainer settings the module applies itself: Lightning refuses them under manual optimization."""


def build(cfg: DictConfig) -> tuple[ImageData, Classifier]:
    """The data (loaded and checked) and the module, its network sized to the data."""
    batch_size = cfg.batch_size
    if cfg.full_batch and batch_size != "full":
        optimizer = cfg.optimizer._target_.rsplit(".", 1)[-1]
        log.warning(
            "full-batch %s takes each step over all N training samples: ignoring batch_size=%s", optimizer, batch_size
        )
        batch_size = "full"
    # The top-level keys users type most feed every data set and model: a new data or model yaml need not repeat them.
    data: ImageData = instantiate(cfg.data, batch_size=batch_size, chunk_size=cfg.chunk_size, seed=cfg.seed)
    data.setup("fit")
    net = instantiate(cfg.model.net, input_shape=data.input_shape, num_classes=data.num_classes)
    clipping = {key: cfg.trainer.get(key) for key in CLIPPING}
    model: Classifier = instantiate(
        cfg.model,
        net=net,
        optimizer=cfg.optimizer,
        scheduler=cfg.get("scheduler"),
        metrics=metrics.build_metrics(cfg.get("metrics"), data.num_classes, cfg.monitor),
        warmup_epochs=cfg.get("warmup_epochs", 0),
        monitor=cfg.monitor,
        **clipping,
    )
    data.samples_per_group = model.samples_per_group
    data.eval_train_samples = (cfg.get("eval") or {}).get("train_samples")
    return data, model


def plan_memory(cfg: DictConfig, data: ImageData, model: Classifier, trainer: lightning.Trainer) -> int:
    """Say what the run will hold on each device, and return the chunk size that fits `memory_budget_bytes`."""
    device = trainer.strategy.root_device
    budget = cfg.memory_budget_bytes if cfg.memory_budget_bytes is not None else free_bytes(device)
    optimizer = model.optimizer
    plan = estimate(
        data.nbytes,
        model,
        data.input_shape,
        getattr(optimizer, "func", optimizer).__name__,
        getattr(optimizer, "keywords", {}).get("momentum", 0),
        budget,
        dtype=run_dtype(trainer.precision_plugin),
    )
    per_device = -(-data.samples_per_step // trainer.world_size)
    return plan_chunk_size(plan, per_device, data.samples_per_chunk, cfg.full_batch, device)


def build_trainer(
    cfg: DictConfig,
    run_dir: Path,
    callbacks: tuple[Callback, ...] = (),
    going_on: GoingOn | None = None,
    **overrides: Any,
) -> lightning.Trainer:
    """Lightning's Trainer from `cfg.trainer`, with descent's checkpoints and `cfg.callbacks`; its loggers go on
    from `going_on` on resume=."""
    quiet_lightning()
    loggers = build_loggers(cfg, going_on)
    # Two callbacks, not save_last=True: Lightning 2.6 writes "last" only in epochs that improved "best".
    mode = monitor_mode(cfg.monitor, cfg.get("metrics"))
    best = ModelCheckpoint(run_dir / "checkpoints", "best", cfg.monitor, mode=mode, enable_version_counter=False)
    # At every epoch's end, evaluated or not: Lightning's default skips epochs check_val_every_n_epoch leaves out.
    last = ModelCheckpoint(run_dir / "checkpoints", "last", enable_version_counter=False, save_on_train_epoch_end=True)
    chosen = [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node]
    settings = trainer_settings(cfg.trainer, BackgroundCheckpointIO())
    if settings["enable_progress_bar"] and not any(isinstance(c, ProgressBar) for c in [*chosen, *callbacks]):
        chosen.append(progress_bar())  # Lightning's own, fed ten times a second rather than every step
    elif not settings["enable_progress_bar"] and cfg.get("progress_every_minutes"):
        chosen.append(ProgressLines(cfg.progress_every_minutes))
    return instantiate(
        settings,
        logger=loggers or False,
        callbacks=[
            best,
            last,
            StepState(),
            *periodic_checkpoints(cfg.get("checkpoint") or {}, run_dir),
            *chosen,
            *callbacks,
        ],  # fmt: skip
        **overrides,
    )


def measurements(cfg: DictConfig) -> tuple[Callback, ...]:
    """The opt-in measurements at theta^k of every evaluated epoch: gradient noise, sharpness, gradient flow."""
    noise, curvature = cfg.get("noise") or {}, cfg.get("curvature") or {}
    chosen: list[Callback] = []
    if noise.get("enabled"):
        chosen.append(GradientNoise(noise.batch_size, noise.samples))
    if curvature.get("enabled"):
        chosen.append(Sharpness(curvature.get("eigenvalues", 1), curvature.get("iterations", 20)))
    if (cfg.get("gradient_flow") or {}).get("enabled"):
        chosen.append(GradientFlow())
    return tuple(chosen)


def trainer_settings(trainer: DictConfig, checkpoint_io: CheckpointIO) -> dict[str, Any]:
    """`trainer` as Lightning's Trainer takes it: clipping left to the module (see Classifier), the progress bar,
    unless set, on in a terminal and off in a log file (one line per epoch there; `build_trainer` gives the bar it
    shows, `descent.progress`), and descent's `checkpoint_io` before the plugins `trainer.plugins` names."""
    settings = OmegaConf.to_container(trainer, resolve=True)
    for key in CLIPPING:
        settings.pop(key, None)
    if settings.get("enable_progress_bar") is None:
        settings["enable_progress_bar"] = sys.stderr.isatty()
    theirs = settings.get("plugins") or []
    settings["plugins"] = [checkpoint_io, *(theirs if isinstance(theirs, list) else [theirs])]
    settings["_convert_"] = "all"  # plain dicts and lists, as Lightning checks them (max_time={hours: 2})
    return settings


def train(cfg: DictConfig, going_on: GoingOn | None = None) -> dict[str, Any]:
    """Train, evaluating every epoch; write config.yaml and metrics.json to the run dir and return the metrics.

    On resume= (see `resume.resumed_config`), `going_on` is what the run goes on from, if the caller has read
    it already."""
    one_max_epochs(cfg)
    check_config(cfg)
    run_dir = Path(cfg.run_dir)
    if cfg.get("resume") and going_on is None:
        going_on = GoingOn.read(cfg.resume)
    if cfg.seed is not None:
        lightning.seed_everything(cfg.seed, workers=True, verbose=False)
    data, model = build(cfg)
    stopper = KeepWeightsOnLightningStop()
    mode = monitor_mode(cfg.monitor, cfg.get("metrics"))
    tabs = TensorBoardTabs(hyperparameters(cfg, data), data, cfg.monitor, mode)
    measured = measurements(cfg)
    trainer = build_trainer(cfg, run_dir, callbacks=(tabs, stopper, *measured, *trial_reports(cfg)), going_on=going_on)
    in_precision(model, trainer)
    data.samples_per_chunk = plan_memory(cfg, data, model, trainer)
    check_batch_coupling(data, model, trainer.world_size)
    partial = partial_figures(trainer, data)
    if trainer.is_global_zero:
        log.info("run dir %s", run_dir)
        for line in partial:
            log.info("%s", line)
        if going_on is not None:
            log.info(
                "going on from %s: step %d, after %d evaluated epochs",
                going_on.checkpoint, going_on.global_step, len(going_on.history),
            )  # fmt: skip
        log_settings(trainer, cfg)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        # Resolved, so eval.py can rebuild this run without Hydra's runtime.
        replace_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    # resume= goes on with everything the run had (Lightning's fit(ckpt_path=)); ckpt_path= is a warm start: a new
    # run from those weights alone, with this config's optimizer, schedule and epochs, and its own bookkeeping.
    go_on_from = str(going_on.checkpoint) if going_on is not None else None
    if cfg.ckpt_path is not None and go_on_from is None:
        check_fits(Path(cfg.ckpt_path), model)
        model.load_state_dict(load(Path(cfg.ckpt_path))["state_dict"])
    try:
        with stop_on_signals() as handlers_before:
            trainer.fit(model, datamodule=data, ckpt_path=go_on_from)
    except (StoppedEarly, SIGTERMException) as error:
        # What the run has so far, marked as stopped; last.ckpt is that of the last finished epoch.
        stopped = error if isinstance(error, StoppedEarly) else stopper.stopped
        assert stopped is not None
        if trainer.is_global_zero:
            result = summarise(model, trainer, cfg, partial) if model.history else {"history": []}
            result["stopped"] = {
                "reason": type(stopped).__name__.lower(),  # diverged or interrupted
                "epoch": stopped.epoch,
                "step": stopped.step,
                "message": str(stopped),
            }
            replace_text(run_dir / "metrics.json", json.dumps(result, indent=2) + "\n")
        if received() == slurm.WARNING_SIGNAL.name:  # SLURM's time limit is near: start the job again
            slurm.requeue(handlers_before.get(slurm.WARNING_SIGNAL), trainer.is_global_zero)
        raise stopped from None
    finally:
        finish_logger_runs(trainer)
    require(model.history, "trainer: the run ended before its first evaluation; nothing to report")
    result = summarise(model, trainer, cfg, partial) | {"ended": why_it_ended(trainer, model.history[-1])}
    if trainer.is_global_zero:
        replace_text(run_dir / "metrics.json", json.dumps(result, indent=2) + "\n")
        log.info("%s", result["ended"]["message"])
        log.info("\n%s", results.format_table(result))
        log.info("run dir %s: metrics.json, checkpoints/, train.log", run_dir)
    return result


def summarise(model: Classifier, trainer: lightning.Trainer, cfg: DictConfig, partial: list[str]) -> dict[str, Any]:
    best_checkpoint = trainer.checkpoint_callbacks[0].best_model_path if trainer.checkpoint_callbacks else ""
    mode = monitor_mode(cfg.monitor, cfg.get("metrics"))
    return results.summary(model.history, cfg.monitor, str(cfg.run_dir), best_checkpoint, mode, partial)


def partial_figures(trainer: lightning.Trainer, data: ImageData) -> list[str]:
    """Where the run's figures are not over whole sets, and what they are over: said before training, and kept in
    metrics.json, where the sweep summary and the report say it again beside the figures."""
    partial = []
    if trainer.fast_dev_run:  # Lightning's limit of every loop to its first n batches (debug=fast)
        n = int(trainer.fast_dev_run)
        partial.append(
            f"trainer.fast_dev_run={trainer.fast_dev_run}: {n} step(s), and each figure is of its set's first {n} "
            "chunk(s), not of the whole set unless it fits in them"
        )
    if trainer.overfit_batches:  # Lightning limits the evaluation to as many chunks as the training's steps
        partial.append(
            f"trainer.overfit_batches={trainer.overfit_batches}: the same first steps every epoch, and each figure "
            "is of as many chunks of its set, not of the whole set"
        )
    if data.eval_train_samples is not None and data.eval_train_samples < data.num_train:
        partial.append(
            f"train/ figures: a fixed subset of {data.eval_train_samples} of the {data.num_train} training samples "
            "(eval.train_samples), not the whole set"
        )
    return partial
