"""Evaluate a checkpoint: `python src/eval.py ckpt_path=logs/train/runs/<run>/checkpoints/best.ckpt`."""

import hydra
from omegaconf import DictConfig

from descent.errors import exit_on_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
@exit_on_error
def main(cfg: DictConfig) -> None:
    from descent.training import evaluate  # here, so that a mistyped override fails before torch loads

    evaluate(cfg)


if __name__ == "__main__":
    main()
