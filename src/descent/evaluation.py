"""`evaluate(cfg)`: a checkpoint's figures on the train, val and test sets of the run that wrote it (src/eval.py)."""

import json
import logging
import warnings
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from descent.checkpoints import AtomicCheckpointIO, check_fits, in_precision
from descent.config import check_config
from descent.errors import require
from descent.files import replace_text
from descent.loggers import quiet_lightning
from descent.training import build, partial_figures, trainer_settings

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Figures of a checkpoint on the train, val and test sets of the run that wrote it."""
    require(
        cfg.ckpt_path is not None,
        "ckpt_path is missing: give the checkpoint to evaluate, e.g. python src/eval.py "
        "ckpt_path=logs/train/runs/<run>/checkpoints/best.ckpt",
    )
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
    trained_in = run_cfg.trainer.precision
    run_cfg.trainer, run_cfg.run_dir = cfg.trainer, cfg.run_dir  # the device is chosen now, not at training
    if run_cfg.trainer.get("precision") is None:  # conf/eval.yaml: the run's own unless given
        run_cfg.trainer.precision = trained_in
    elif str(run_cfg.trainer.precision) != str(trained_in):
        log.info("evaluating in trainer.precision=%s; the run trained in %s", run_cfg.trainer.precision, trained_in)
    check_config(run_cfg)
    quiet_lightning()
    # Lightning's advice to pass the training callbacks along with ckpt_path is for going on training.
    warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`, callbacks used to create")
    data, model = build(run_cfg)
    check_fits(ckpt_path, model)
    trainer = instantiate(
        trainer_settings(run_cfg.trainer, AtomicCheckpointIO()), logger=False, enable_checkpointing=False
    )
    in_precision(model, trainer)
    partial = partial_figures(trainer, data)
    for line in partial:
        log.info("%s", line)
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
        saved = {"ckpt_path": str(ckpt_path), **figures} | ({"partial": partial} if partial else {})
        figures_json = json.dumps(saved, indent=2) + "\n"
        replace_text(Path(cfg.run_dir) / "metrics.json", figures_json)
    return figures
