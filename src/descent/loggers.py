"""The run's loggers from the config's `logger` node, one per name (logger=[tensorboard,mlflow]): built, given the
run's settings, and closed."""

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from descent.resume import GoingOn

MLFLOW = "lightning.pytorch.loggers.MLFlowLogger"
RUN_NAMES = {MLFLOW: "run_name", "lightning.pytorch.loggers.WandbLogger": "name"}
"""The setting that names a run in each logger's list; left null, `run_name` fills it."""


def build_loggers(cfg: DictConfig, going_on: GoingOn | None = None) -> list[Logger]:
    """Every `logger.<name>` (logger=[tensorboard,mlflow]); on resume= (`going_on`), TensorBoard's drops the points
    the resumed run writes again and the CSV log keeps the rows written before them; MLflow's and W&B's runs named
    as TensorBoard names them (`run_name`)."""
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if not node:
            continue
        target, settings = node.get("_target_"), {}
        if going_on is not None and target == "descent.tensorboard.Logger":
            settings["purge_step"] = going_on.purge_step
        if going_on is not None and target == "descent.csv_log.CSVLogger":
            settings["going_on"] = going_on
        if (key := RUN_NAMES.get(target)) and node.get(key) is None:
            settings[key] = run_name(cfg.run_dir)
        loggers.append(mlflow_logger(node, settings) if target == MLFLOW else instantiate(node, **settings))
    return loggers


def run_name(run_dir: str) -> str:
    """The run dir as `tensorboard --logdir logs` names it: relative to logs/ (train/runs/<time>, a sweep job's
    train/multiruns/<time>/<overrides>), so that runs differ where their names start; elsewhere, the whole path."""
    path, logs = Path(run_dir).absolute(), Path.cwd() / "logs"
    return path.relative_to(logs).as_posix() if path.is_relative_to(logs) else str(path)


def mlflow_logger(node: DictConfig, settings: dict[str, Any]) -> Logger:
    """MLflow's logger, whose constructor opens its store (`logging_kept` says what a new one does to logging).

    A SQLite store also makes its default artifact root, an empty ./mlruns, wherever train.py starts; the experiment
    created for descent keeps its runs' artifacts beside the store instead (logs/mlruns/<run id>/artifacts, unless
    `artifact_location` says where), and that empty dir goes again.
    """
    database = sqlite_file(node.get("tracking_uri"))
    if database is not None:  # SQLite makes the file, not its folder: logs/ of a fresh clone, or one's own
        database.parent.mkdir(parents=True, exist_ok=True)
    if database is not None and node.get("artifact_location") is None:
        settings = settings | {"artifact_location": str(database.parent / "mlruns")}
    default_root = Path("mlruns")  # MLflow's DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    made_here = not default_root.exists()
    with logging_kept():
        logger = instantiate(node, **settings)
    if made_here and default_root.is_dir() and not any(default_root.iterdir()):
        with contextlib.suppress(OSError):  # another process's store may be filling it now
            default_root.rmdir()
    return logger


def sqlite_file(uri: str | None) -> Path | None:
    """The absolute path of a SQLite store's file (sqlite:///logs/mlflow.db), or None for another store."""
    if not uri or not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    return Path(database).absolute() if database and database != ":memory:" else None


@contextlib.contextmanager
def logging_kept() -> Iterator[None]:
    """Runs its body with records below WARNING off, and every logger's level, handlers, propagation and `disabled`
    flag put back afterwards; file handlers closed meanwhile are opened again, appending.

    Creating a new MLflow SQLite store runs alembic's migrations, whose env.py calls logging.config.fileConfig: it
    closes every handler, and gives the root logger level WARNING and a stderr handler of its own in place of
    Hydra's console and train.log handlers, for the rest of the run; the migrations then print about 45 lines.
    """
    manager = logging.Logger.manager
    loggers = [logging.root, *(x for x in manager.loggerDict.values() if isinstance(x, logging.Logger))]
    kept = [(x, x.level, list(x.handlers), x.propagate, x.disabled) for x in loggers]
    files = {h for _, _, handlers, _, _ in kept for h in handlers if isinstance(h, logging.FileHandler) and h.stream}
    disabled_below = manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(disabled_below)
        for logger, level, handlers, propagate, disabled in kept:
            logger.setLevel(level)
            logger.handlers = handlers
            logger.propagate, logger.disabled = propagate, disabled
        for handler in files:
            if handler.stream is None:  # closed by fileConfig
                handler.mode = "a"  # never "w": that would empty train.log of the lines before
                handler.stream = handler._open()


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


LIGHTNING_WARNINGS_ANSWERED = (
    # The epoch's figures are reduced over the ranks before they are logged: the advice to sync them is moot.
    r".*when logging on epoch level in distributed setting",
    # Per-epoch figures are logged every epoch whatever the interval; the step loss appears once there are steps.
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # resume= goes on in the run's own checkpoint dir, on purpose.
    r"Checkpoint directory .* exists and is not empty",
    # Lightning 2.6 calls a pytree API that torch 2.14 deprecates; nothing for a user to act on.
    r".*isinstance\(treespec, LeafSpec\)",
)
"""Lightning warnings that descent's own design answers; every other warning is shown."""


def quiet_lightning() -> None:
    """Lightning's info lines (devices present or not, a cloud product's tip, limits left at 100%) say nothing a
    run's own lines do not; its warnings still show (a GPU present but unused among them), but for those descent
    answers. Its own console handler goes too: under Hydra, its records reach the console and train.log once,
    through the root logger."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.profilers").setLevel(logging.INFO)  # debug=profile's report is its point
    for message in LIGHTNING_WARNINGS_ANSWERED:
        warnings.filterwarnings("ignore", message=message)
