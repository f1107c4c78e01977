"""Loggers labs use, several at once (logger=[tensorboard,mlflow,wandb,csv]): every logger holds the per-epoch
figures of metrics.json, read back with each library's own reader; MLflow's UI renders the run in a real browser."""

import glob
import json
import logging
import struct
import sys
import urllib.request
from pathlib import Path

import pytest
from helpers import ROOT, free_port, rendered, run, scalars, serving, small

from descent.training import train

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (make install installs it)")
wandb_pb = pytest.importorskip("wandb.proto.wandb_internal_pb2", reason="the wandb extra (make install installs it)")

KEYS = ("val/loss", "test/error", "train/macro_f1")


def mlflow_run(tracking_uri: str) -> tuple[object, object]:
    client = mlflow.tracking.MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("descent").experiment_id])
    return client, run


def wandb_records(run_dir: Path) -> list[object]:
    """The records of the offline run's .wandb file: a LevelDB-style log (a 7-byte header, 32 KiB blocks of
    records, each a 7-byte header and a piece of one protobuf Record of wandb's own)."""
    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    data, pos, pieces, records = Path(path).read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - (pos - 7) % 32768
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or kind == 0:
            pos += left
            continue
        pieces += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or its last piece
            record = wandb_pb.Record()
            record.ParseFromString(pieces)
            records.append(record)
            pieces = b""
    return records


def test_tensorboard_mlflow_wandb_and_csv_at_once_hold_every_epochs_figures(make_cfg, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_cfg("logger=[tensorboard,mlflow,wandb,csv]", f"logger.mlflow.tracking_uri={uri}", "metrics=[macro_f1]",
                   "max_epochs=3", "optimizer.lr=0.01")  # fmt: skip
    history = train(cfg)["history"]
    run_dir = Path(cfg.run_dir)
    expected = {key: [row[key] for row in history] for key in KEYS}
    assert len(set(expected["val/loss"])) == 3  # figures that change: a mix-up of epochs would show

    client, run = mlflow_run(uri)
    assert run.info.run_name == str(run_dir) and run.info.status == "FINISHED"
    for key in KEYS:
        points = sorted(client.get_metric_history(run.info.run_id, key), key=lambda point: point.step)
        assert [point.step for point in points] == [1, 2, 3]  # the x-axis is the epoch k
        assert [point.value for point in points] == pytest.approx(expected[key], rel=1e-6)
    assert run.data.params["optimizer.lr"] == "0.01" and run.data.params["model.net._target_"] == "descent.nets.MLP"

    records = wandb_records(run_dir)
    logged = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        for record in records
        if record.WhichOneof("record_type") == "history"
    ]
    per_epoch = [row for row in logged if "val/loss" in row]
    for key in KEYS:
        assert [row[key] for row in per_epoch] == pytest.approx(expected[key], rel=1e-6)
    updates = [item for record in records if record.HasField("config") for item in record.config.update]
    config = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in updates}
    assert config["optimizer.lr"] == 0.01

    events = scalars(run_dir)
    for key in KEYS:
        assert events[key] == pytest.approx(expected[key], rel=1e-6)
    csv_rows = [row for row in (run_dir / "metrics.csv").read_text().splitlines()[1:] if row]
    assert len(csv_rows) >= 3


@pytest.mark.slow
def test_mlflow_ui_shows_the_run_in_a_real_browser(make_cfg, tmp_path: Path) -> None:
    """`mlflow ui` on the run's store, and headless Chromium (Debian's; .ci/run installs it) rendering the
    experiment's page: the run's name appears in the page the browser built, not only in the served HTML."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_cfg("logger=mlflow", f"logger.mlflow.tracking_uri={uri}", "max_epochs=1")
    train(cfg)
    _, run = mlflow_run(uri)
    port = free_port()
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    command = [str(mlflow_cli), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1"]  # not MLflow's 4: each imports MLflow's server, and one page needs one
    with serving(command, f"http://127.0.0.1:{port}/health"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as answer:
            served = answer.read().decode()
        page = f"http://127.0.0.1:{port}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        shown = rendered(page, tmp_path / "chromium")
    assert str(cfg.run_dir) not in served  # the served page is an empty shell: its script draws the run
    assert str(cfg.run_dir) in shown  # the run's name, rendered by MLflow's own JavaScript
    assert "val/error" in shown  # and its figures' names


def test_a_new_mlflow_store_leaves_logging_as_it_was(make_cfg, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """Creating a SQLite store runs alembic's logging.config.fileConfig: the root logger's level and handlers (Hydra's
    console and train.log) and other loggers' settings stay as they were, the file handler keeps writing, and no
    migration line reaches the console."""
    root, descent = logging.getLogger(), logging.getLogger("descent")
    log_file = logging.FileHandler(tmp_path / "train.log")  # as Hydra's job logging has it
    level_before, descent_level_before = root.level, descent.level
    root.addHandler(log_file)
    root.setLevel(logging.INFO)
    descent.setLevel(logging.DEBUG)
    kept = (root.level, list(root.handlers), descent.level, descent.propagate, descent.disabled)
    try:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        train(make_cfg("logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={uri}"))
        assert (root.level, root.handlers, descent.level, descent.propagate, descent.disabled) == kept
    finally:
        root.removeHandler(log_file)
        log_file.close()
        root.setLevel(level_before)
        descent.setLevel(descent_level_before)
    written = (tmp_path / "train.log").read_text()
    assert "epoch 1 " in written and "epoch 2 " in written and "final (epoch 2)" in written
    out, err = capfd.readouterr()
    assert "alembic" not in out + err and "database tables" not in out + err


def test_mlflow_and_wandb_name_runs_by_their_dir_under_logs_and_leave_no_mlruns(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep job's run is told apart by its name as TensorBoard shows it (`tensorboard --logdir logs`), not by an
    absolute path that starts the same for every run; the artifacts go under logs/, not into a new ./mlruns."""
    monkeypatch.chdir(tmp_path)  # where train.py starts: logs/ is under it
    (tmp_path / "logs").mkdir()
    uri = f"sqlite:///{tmp_path / 'logs' / 'mlflow.db'}"
    run_dir = tmp_path / "logs" / "train" / "multiruns" / "2026-01-02_03-04-05_678901" / "optimizer:gd"
    train(make_cfg("logger=[mlflow,wandb]", f"logger.mlflow.tracking_uri={uri}", "max_epochs=1", run_dir=run_dir))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["logs"]  # no mlruns/ where train.py started

    name = "train/multiruns/2026-01-02_03-04-05_678901/optimizer:gd"
    client, run = mlflow_run(uri)
    assert run.info.run_name == name
    experiment = client.get_experiment(run.info.experiment_id)
    assert Path(experiment.artifact_location) == tmp_path / "logs" / "mlruns"
    assert run.info.artifact_uri == f"{tmp_path}/logs/mlruns/{run.info.run_id}/artifacts"
    (run_record,) = [record.run for record in wandb_records(run_dir) if record.WhichOneof("record_type") == "run"]
    assert run_record.display_name == name


@pytest.mark.slow
def test_a_first_run_on_a_fresh_mlflow_store_keeps_hydras_console_and_train_log(idx_dir: Path, tmp_path: Path) -> None:
    """The README's command, where Hydra configures the logging that a new store's migrations used to replace:
    train.log and the console hold every epoch's line and the final table, and no migration line shows."""
    done = run(str(ROOT / "src" / "train.py"), "logger=[tensorboard,mlflow]", *small(idx_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    log = (run_dir / "train.log").read_text()
    for line in ("FashionMNIST: 600 training", "epoch 1 ", "epoch 2 ", "final (epoch 2)", "best (epoch 2)"):
        assert line in log and line in done.stdout, line
    assert "alembic" not in done.stderr and "database tables" not in done.stderr + done.stdout
    assert len(json.loads((run_dir / "metrics.json").read_text())["history"]) == 2
    assert (tmp_path / "logs" / "mlflow.db").is_file() and not (tmp_path / "mlruns").exists()
