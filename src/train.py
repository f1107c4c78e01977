"""Train an MLP: `python src/train.py optimizer=sgd batch_size=64` (see conf/train.yaml)."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from descent import monitor  # noqa: F401  (registers ${monitor_mode:...} and ${monitor_direction:...})
from descent.command_line import check_arguments
from descent.errors import exit_on_error
from descent.multirun import check_one_run, job_dir_name, sweep_going_on
from descent.stopping import stop_before_training

OmegaConf.register_new_resolver("job_dir_name", job_dir_name)  # names a sweep's job dirs (conf/train.yaml)
TYPED: list[str] = []
"""The arguments as typed (`resume=<sweep dir>` expanded), without what `in_its_own_run_dir` adds: what a
one-line error shows as the command to type."""


def in_its_own_run_dir(arguments: list[str]) -> list[str]:
    """`resume=<run dir>` of a single run logs into that dir (its train.log goes on), not a new one; its .hydra/
    keeps the command that started it."""
    if any(arg in ("-m", "--multirun") or arg.startswith("hydra.run.dir=") for arg in arguments):
        return []
    resume = next((arg.partition("=")[2] for arg in arguments if arg.startswith("resume=")), "")
    if not resume or not (Path(resume) / "config.yaml").is_file():  # resumed_config says why, in a new run dir
        return []
    return [f"hydra.run.dir={resume}", "hydra.output_subdir=null"]


def summarise_stopped_sweep() -> None:
    from descent.sweep import summarise_stopped_sweep as summarise  # here: torch loads once a job runs

    summarise()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@exit_on_error(when_a_sweep_stops=summarise_stopped_sweep)
def main(cfg: DictConfig) -> float:
    """Returns the best epoch's `monitor` figure: the objective of a hyperparameter search."""
    from descent.config import check_config, one_max_epochs

    check_one_run(HydraConfig.get(), TYPED, Path(__file__))  # a search or a sweep asked for without -m
    if cfg.resume is None:  # a bad setting in one line before Lightning loads (train checks a resumed run's)
        one_max_epochs(cfg)
        check_config(cfg)
    from descent.multirun import ddp_ranks_run_this_job  # here: a mistyped override fails before torch loads
    from descent.resume import GoingOn, resumed_config
    from descent.slurm import requeued
    from descent.training import train

    # resume=, or a requeued SLURM job going on from where it stopped, in its own run dir: read once, here.
    going_on = GoingOn.read(cfg.resume) if cfg.resume is not None else requeued(cfg.run_dir)
    if going_on is not None:
        cfg.resume = str(going_on.run_dir)
        cfg = resumed_config(cfg, list(HydraConfig.get().overrides.task), going_on)
    with ddp_ranks_run_this_job():  # under -m, trainer=ddp's other ranks run this job, not the sweep again
        return train(cfg, going_on)["best"][cfg.monitor]


@exit_on_error
def check_command_line() -> None:
    """`resume=<sweep dir>` becomes the sweep's own command line; then mistyped keys and options in one line (a
    sweep's `hydra.sweeper.*` and `hydra.launcher.*` are those of the sweeper and launcher it chose)."""
    sys.argv[1:] = sweep_going_on(sys.argv[1:]) or sys.argv[1:]
    check_arguments(sys.argv[1:], Path(__file__), config_path="../conf", config_name="train")


if __name__ == "__main__":
    stop_before_training()
    check_command_line()
    TYPED.extend(sys.argv[1:])
    sys.argv += in_its_own_run_dir(TYPED)
    exit_on_error(main)()  # a stop signal while Hydra composes the config, too
