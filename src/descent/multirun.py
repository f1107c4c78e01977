"""What a Hydra multirun needs beyond Hydra: job dir names that can be typed back, a sweep that goes on with
`resume=<sweep dir>`, DDP ranks that run their job, and a sweep asked for without -m refused, not run once.

Job dirs are named by their overrides, so that TensorBoard's run names say what each run is; `job_dir_name` makes
that name a path that needs no quoting in a shell or in Hydra's override grammar (`resume=<dir>` and
`ckpt_path=<dir>/checkpoints/best.ckpt` work as `ls` shows them).

Lightning starts ranks 1..G-1 by re-running `sys.argv` with `hydra.run.dir` pinned to `HydraConfig.run.dir`.
Under `-m`, `sys.argv` is the whole sweep and `run.dir` is not the job's dir, so each rank would start a sweep of
its own in a second multirun dir. Here, for the duration of one job, `sys.argv` is that job's overrides and
`run.dir` its output dir; after it, the process group and the variables Lightning set for it are cleared so that
the next job starts its own ranks. Processes started by SLURM or torchrun are not re-run and are left alone.
"""

import contextlib
import hashlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf, read_write

from descent.errors import in_multirun, require

NOT_IN_NAMES = re.compile(r"[^A-Za-z0-9_.:+@%/-]")
"""What Hydra's grammar or a shell would need quoted: brackets, commas, quotes, spaces, `=`, `$`, `*`, ..."""


LONGEST_NAME = 200
"""File systems refuse names over 255 bytes: longer ones are cut here and made unique by a hash of the whole."""


def job_dir_name(override_dirname: str) -> str:
    """`batch_size:32+model.net.hidden:[64,32]` (Hydra's override_dirname with `:` and `+` as separators) as
    `batch_size:32+model.net.hidden:64-32`: list commas become `-`, brackets and quotes go, the rest becomes `_`.
    A name over LONGEST_NAME characters keeps its start and ends in `+` and 12 hex digits of its SHA-256."""
    name = override_dirname.replace(",", "-").replace("/", "-")
    name = NOT_IN_NAMES.sub("_", re.sub(r"[\[\]{}()'\"]", "", name)) or "default"
    if len(name) > LONGEST_NAME:
        name = f"{name[: LONGEST_NAME - 13]}+{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return name


GOING_ON_MAY_CHANGE = ("hydra/launcher=", "hydra.launcher.", "hydra.sweeper.n_trials=", "hydra.sweeper.n_jobs=",
                       "hydra.verbose=")  # fmt: skip
"""What `resume=<sweep dir>` lets the command line add: where the jobs run, how many, and how much is logged."""


def sweep_going_on(arguments: list[str]) -> list[str] | None:
    """For `resume=<sweep dir>` (a dir with Hydra's multirun.yaml), the sweep's own command line into that dir,
    whose jobs then go on where they stopped (descent.launches); None for any other command line. Where and how
    many jobs run (GOING_ON_MAY_CHANGE) and options such as `-cd <dir>` may be added; any other setting would make
    the jobs still to run differ from those that ran, or the job dirs from those there."""
    resume = next((arg.partition("=")[2] for arg in arguments if arg.startswith("resume=")), "")
    if not resume or not (Path(resume) / "multirun.yaml").is_file():
        return None
    added = [arg for arg in arguments if not arg.startswith("resume=")]
    changed = [arg for arg in added if "=" in arg and not arg.startswith(("-", *GOING_ON_MAY_CHANGE))]
    require(
        not changed,
        f"resume={resume}: a sweep goes on with its own settings, so {' '.join(changed)} cannot be given; start a new "
        f"sweep for other settings (only {', '.join(GOING_ON_MAY_CHANGE)} may be added)",
    )
    saved = OmegaConf.load(Path(resume) / "multirun.yaml").hydra.overrides
    own = [arg for arg in saved.hydra if not arg.startswith(("hydra.mode=", "hydra.sweep.dir="))]
    return ["-m", *saved.task, *own, f"hydra.sweep.dir={Path(resume).resolve()}", *added]


def check_one_run(hydra_cfg: Any, argv: list[str], script: Path) -> None:
    """Without -m Hydra runs one job and never calls the sweeper or the launcher: a search, a sweep that an
    experiment declares, or a SLURM launcher would silently be one run here. Refused in one line, unless the run
    pins every swept key (`experiment=gd_vs_sgd method=gd` is one arm of the study). Ranks 1..G-1 that Lightning
    starts for a sweep's job (LOCAL_RANK) run that job's overrides without -m, as they should."""
    from hydra.types import RunMode

    from descent.command_keys import CommandLine

    if hydra_cfg.mode == RunMode.MULTIRUN or os.environ.get("LOCAL_RANK", "0") != "0":
        return
    command = CommandLine(argv, script).with_multirun()
    choices = hydra_cfg.runtime.choices
    sweeper, launcher = choices.get("hydra/sweeper"), choices.get("hydra/launcher")
    if sweeper not in (None, "basic"):
        search = choices.get("hparams_search")
        asked = f"hparams_search={search}" if search is not None else f"hydra/sweeper={sweeper}"
        require(False, f"{asked} is a search of several trials, which Hydra runs only with -m: add it ({command})")
    if launcher not in (None, "basic"):
        require(False, f"hydra/launcher={launcher} launches a sweep's jobs, which Hydra does only with -m: add it to "
                       f"launch this run as a sweep of one job ({command})")  # fmt: skip
    given = {override.partition("=")[0].lstrip("+~") for override in hydra_cfg.overrides.task}
    swept = {str(key): value for key, value in (hydra_cfg.sweeper.get("params") or {}).items() if key not in given}
    if swept:
        key, values = next(iter(swept.items()))
        by = f", from experiment={choices['experiment']}" if choices.get("experiment") else ""
        require(False, f"this config sweeps {key}={values} (hydra.sweeper.params{by}), which Hydra runs only with -m: "
                       f"add it to run a job for each ({command}), or give {key}=<one value> for one run")  # fmt: skip


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
        import torch.distributed

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
