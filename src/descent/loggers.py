"""The run's loggers from the config's `logger` node, one per name (logger=[tensorboard,mlflow]): built, given the
run's settings, and closed."""

from pathlib import Path
from typing import Any

import lightning
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from descent.checkpoints import load, newest_checkpoint
from descent.tensorboard import purge_step


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """Every `logger.<name>` (logger=[tensorboard,mlflow]); TensorBoard's, on resume=, drops the points the resumed
    run writes again."""
    loggers = []
    newest = newest_checkpoint(Path(cfg.resume)) if cfg.get("resume") else None
    for node in (cfg.get("logger") or {}).values():
        if not node:
            continue
        resumed = newest is not None and node.get("_target_") == "descent.tensorboard.Logger"
        loggers.append(instantiate(node, **({"purge_step": purge_step(load(newest, mmap=True))} if resumed else {})))
    return loggers


def log_settings(trainer: lightning.Trainer, cfg: DictConfig) -> None:
    """The run's resolved settings, flattened (optimizer.lr, ...), as parameters of every logger but TensorBoard,
    whose HPARAMS tab gets the settings that tell runs apart with their final figures (`TensorBoardTabs`), and CSV,
    whose hparams.yaml would repeat the run dir's config.yaml."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    for logger in trainer.loggers:
        if not isinstance(logger, TensorBoardLogger | CSVLogger):
            logger.log_hyperparams(flat)


def finish_logger_runs(trainer: lightning.Trainer) -> None:
    """A W&B run stays open after fit, and the next job of an in-process sweep would log into it: end it here."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optimizer": {"lr": 0.1}} as {"optimizer.lr": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat |= flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return flat
