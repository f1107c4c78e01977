"""Train an MLP: `python src/train.py optimizer=sgd batch_size=64` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from descent.errors import exit_on_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@exit_on_error
def main(cfg: DictConfig) -> float:
    """Returns the best epoch's `monitor` figure: the objective of a hyperparameter search."""
    from descent.training import train  # here, so that a mistyped override fails before torch loads

    from descent.multirun import ddp_ranks_run_this_job

    with ddp_ranks_run_this_job():  # under -m, trainer=ddp's other ranks run this job, not the sweep again
        return train(cfg)["best"][cfg.monitor]


if __name__ == "__main__":
    main()
