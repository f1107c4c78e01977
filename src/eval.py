"""Evaluate a checkpoint: `python src/eval.py ckpt_path=logs/train/runs/<run>/checkpoints/best.ckpt`."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from descent.command_line import check_arguments
from descent.errors import exit_on_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
@exit_on_error
def main(cfg: DictConfig) -> None:
    from descent.evaluation import evaluate  # here, so that a mistyped override fails before torch loads

    evaluate(cfg)


@exit_on_error
def check_command_line() -> None:
    check_arguments(sys.argv[1:], Path(__file__), config_path="../conf", config_name="eval")


if __name__ == "__main__":
    check_command_line()
    main()
