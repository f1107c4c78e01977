"""SLURM's time limit: a job warned ahead of it (SIGUSR1, `sbatch --signal=USR1@90`) saves its place and is
requeued; the requeued job finds its own run dir and resumes there by itself."""

import logging
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from descent.resume import GoingOn, newest_checkpoint

log = logging.getLogger(__name__)

WARNING_SIGNAL = signal.SIGUSR1
"""What SLURM sends ahead of a time limit when asked (`--signal=USR1@<seconds>`; submitit asks for it)."""


def requeue(previous_handler: Callable[[int, Any], Any] | int | None, global_zero: bool = True) -> None:
    """Ask SLURM to start this job again, after its place was saved: under submitit (hydra/launcher=slurm) its own
    SIGUSR1 handler resubmits the job (and exits); otherwise `scontrol requeue $SLURM_JOB_ID`, as for a job
    submitted with `sbatch --requeue` (from rank 0 alone). Outside SLURM, nothing: `resume=<run dir>` goes on by
    hand."""
    job = os.environ.get("SLURM_JOB_ID")
    if job is None:
        return
    if callable(previous_handler):  # submitit's: it knows which of the job's processes requeues
        previous_handler(WARNING_SIGNAL, None)
        return
    if not global_zero:
        return
    done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, check=False)
    if done.returncode == 0:
        log.info("SLURM job %s requeued: it resumes from this run dir when it starts again", job)
    else:
        log.warning("scontrol requeue %s failed (%s): resume=<run dir> goes on by hand", job, done.stderr.strip())


def requeued(run_dir: str) -> GoingOn | None:
    """What a requeued SLURM job (SLURM_RESTART_COUNT > 0) goes on from, when the run in `run_dir` left a checkpoint;
    the run dir must be pinned (e.g. hydra.run.dir=logs/train/runs/$SLURM_JOB_ID, or a sweep's)."""
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) < 1:
        return None
    if not (Path(run_dir) / "config.yaml").is_file():
        return None
    newest = newest_checkpoint(Path(run_dir))
    return None if newest is None else GoingOn.of(Path(run_dir), newest)
