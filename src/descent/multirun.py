"""Lightning's `ddp` strategy inside a Hydra multirun: each job's ranks run that job, in that job's dir.

Lightning starts ranks 1..G-1 by re-running `sys.argv` with `hydra.run.dir` pinned to `HydraConfig.run.dir`.
Under `-m`, `sys.argv` is the whole sweep and `run.dir` is not the job's dir, so each rank would start a sweep of
its own in a second multirun dir. Here, for the duration of one job, `sys.argv` is that job's overrides and
`run.dir` its output dir; after it, the process group and the variables Lightning set for it are cleared so that
the next job starts its own ranks. Processes started by SLURM or torchrun are not re-run and are left alone.
"""

import contextlib
import os
import sys
from collections.abc import Iterator

import torch.distributed
from omegaconf import read_write

from descent.errors import in_multirun

LIGHTNING_DDP_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
"""What `_SubprocessScriptLauncher` writes into os.environ when it starts the ranks of a job."""


@contextlib.contextmanager
def ddp_ranks_run_this_job() -> Iterator[None]:
    if not in_multirun():
        yield
        return
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    argv, run_dir = sys.argv, hydra_cfg.run.dir
    environment = {name: os.environ.get(name) for name in LIGHTNING_DDP_VARIABLES}
    sys.argv = [argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hydra_cfg):
            hydra_cfg.run.dir = run_dir
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
