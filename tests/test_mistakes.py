"""What a new user gets wrong, or does at an awkward moment, one command each: every case ends in one line that
says what happened (and a non-zero exit where nothing could be done), and leaves nothing half-written behind."""

import csv
import json
import logging
import math
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import lightning
import pytest
from helpers import ROOT, environment, points, small

from descent.checkpoints import load
from descent.data.idx import IdxData
from descent.progress import RichBar
from descent.resume import resumed_config
from descent.training import train


class SignalledWhileLoading(IdxData):
    """A user's data set that takes a stop signal while it loads: before any training step, deterministically."""

    def __init__(self, signal_name: str, **settings: object) -> None:
        super().__init__(**settings)
        self.signal_name = signal_name

    def load(self):  # noqa: ANN201
        loaded = super().load()
        signal.raise_signal(getattr(signal, self.signal_name))
        return loaded


@pytest.mark.slow
@pytest.mark.parametrize(("signal_name", "exit_code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stop_signal_while_the_run_sets_up_stops_it_in_one_line_and_leaves_no_run_dir(
    idx_dir: Path, tmp_path: Path, signal_name: str, exit_code: int
) -> None:
    """Sent as the data loads, with SIGINT ignored by the shell that started the run (`command &` does that):
    the run stops there, says so, and leaves no run dir for TensorBoard to list."""
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable, "src/train.py", *small(idx_dir), "data._target_=test_mistakes.SignalledWhileLoading",
            f"+data.signal_name={signal_name}", f"hydra.run.dir={run_dir}",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=environment(PYTHONPATH=str(ROOT / "tests")),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    assert done.returncode == exit_code, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"stopped: {signal_name} before training started; no checkpoint or metrics were written"
    ]
    assert not run_dir.exists()


@pytest.mark.slow
def test_a_refused_run_leaves_no_run_dir_but_a_pinned_dir_with_an_earlier_run_stays(
    idx_dir: Path, tmp_path: Path
) -> None:
    fresh, used = tmp_path / "fresh", tmp_path / "used"
    (used / "checkpoints").mkdir(parents=True)
    (used / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's")
    for run_dir in (fresh, used):
        done = subprocess.run(
            [sys.executable, "src/train.py", *small(idx_dir), "monitor=test/acc", f"hydra.run.dir={run_dir}"],
            cwd=ROOT, capture_output=True, text=True, timeout=300, env=environment(),
        )  # fmt: skip
        assert done.returncode == 2 and done.stderr.startswith("error: monitor='test/acc'"), done.stderr
    assert not fresh.exists()
    assert (used / "checkpoints" / "last.ckpt").read_bytes() == b"an earlier run's"


def test_epochs_are_counted_from_1_in_every_logger_the_checkpoint_and_the_progress_bar(
    make_cfg, tmp_path: Path
) -> None:
    """theta^k after epoch k, k = 1, 2: the `epoch` figure each logger holds sits at step k with value k (no 0-based
    point from Lightning at a training step); the checkpoint says 2; the bar's first epoch reads "Epoch 1/2"."""
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (make install installs it)")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_cfg("logger=[tensorboard,csv,mlflow]", f"logger.mlflow.tracking_uri={uri}", "max_epochs=2",
                   "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=true")  # fmt: skip
    train(cfg)
    run_dir = Path(cfg.run_dir)
    assert points(run_dir)["epoch"] == [(1, 1.0), (2, 2.0)]
    with open(run_dir / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(row["step"], row["epoch"]) for row in rows if row["epoch"]] == [("1", "1.0"), ("2", "2.0")]
    assert any(row["train/step_loss"] for row in rows)  # the step losses are there, with no epoch of their own
    client = mlflow.tracking.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("descent").experiment_id])
    logged = sorted((point.step, point.value) for point in client.get_metric_history(run.info.run_id, "epoch"))
    assert logged == [(1, 1.0), (2, 2.0)]
    assert load(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 2
    pytest.importorskip("rich", reason="Lightning's Rich bar: the one it shows where rich is installed")
    bar = RichBar()
    bar._trainer = lightning.Trainer(max_epochs=2, logger=False, enable_checkpointing=False)
    assert bar._get_train_description(0).strip() == "Epoch 1/2"


def test_a_run_says_where_it_is_what_it_trains_on_its_rate_how_far_it_is_and_why_it_ended(
    make_cfg, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A subset, evaluated every second epoch, stopped early by Lightning's EarlyStopping (no improvement counts
    with min_delta 1): each fact in a line, and why it ended in metrics.json."""
    cfg = make_cfg("data.train_size=100", "max_epochs=6", "trainer.check_val_every_n_epoch=2", "logger=none",
                   "callbacks=early_stopping", "callbacks.early_stopping.patience=1",
                   "callbacks.early_stopping.min_delta=1")  # fmt: skip
    with caplog.at_level(logging.INFO):
        result = train(cfg)
    said = [record.getMessage() for record in caplog.records]
    run_dir = Path(cfg.run_dir)
    assert f"run dir {run_dir}" in said and f"run dir {run_dir}: metrics.json, checkpoints/, train.log" in said
    assert "training on 100 of the 500 samples (data.train_size), validating on 100, testing on 200" in said
    assert any(
        line.startswith("epoch 1 of 6 trained, not evaluated (trainer.check_val_every_n_epoch=2)") for line in said
    )
    assert any(line.startswith("epoch 2 ") and line.endswith("lr 0.05)") for line in said), said
    ended = json.loads((run_dir / "metrics.json").read_text())["ended"]
    assert ended["reason"] == "early_stopping" and ended["epoch"] == 4 == result["ended"]["epoch"]
    assert ended["message"] in said and "did not improve" in ended["message"]


def test_trainer_max_epochs_is_max_epochs_for_the_schedule_and_resume_too(make_cfg, tmp_path: Path) -> None:
    """Lightning's flag as its users type it: 3 epochs under a cosine over 3, then resumed to 4 by the same flag
    (the cosine stretched over 4 as `max_epochs=4` would)."""
    cfg = make_cfg("trainer.max_epochs=3", "scheduler=cosine", "logger=none")
    rates = [row["progress/lr"] for row in train(cfg)["history"]]
    cosine = [0.05 * (1 + math.cos(math.pi * k / 3)) / 2 for k in range(3)]
    assert rates == pytest.approx(cosine, rel=1e-9)
    run_dir = Path(cfg.run_dir)
    more = make_cfg("trainer.max_epochs=4", "scheduler=cosine", "logger=none", f"resume={run_dir}")
    history = train(resumed_config(more, [f"resume={run_dir}", "trainer.max_epochs=4"]))["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history[3]["progress/lr"] == pytest.approx(0.05 * (1 + math.cos(math.pi * 3 / 4)) / 2, rel=1e-9)


@pytest.mark.slow
def test_every_mistake_the_readme_shows_gets_the_line_it_shows() -> None:
    """Each `$ python src/...` line of the README or docs/ followed by an `error:` line, run verbatim: that line,
    alone, and exit 2 (docs of one's own without such examples skip this). A group's options listed beyond the
    ones shown are a user's own configs: a warning, not a failure."""
    import warnings

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    readme = "\n".join(page.read_text() for page in pages if page.is_file())
    shown = re.findall(r"^\$ python (src/\S+\.py[^\n]*)\n(error: [^\n]*)$", readme, flags=re.MULTILINE)
    if not shown:
        pytest.skip("the README and docs/ show no `$ python src/...` command with its error line")
    listing = re.compile(r"(.* choose one of )(.*)( \(the files in conf/\S+/[^)]*\))")
    for command, line in shown:
        done = subprocess.run(
            [sys.executable, *shlex.split(command)], cwd=ROOT, capture_output=True, text=True, timeout=300,
            env=environment(),
        )  # fmt: skip
        said = done.stderr.strip()
        docs, here = listing.fullmatch(line), listing.fullmatch(said)
        if docs and here and docs.expand(r"\1\3") == here.expand(r"\1\3"):
            listed, found = set(docs[2].split(", ")), set(here[2].split(", "))
            if listed < found:  # every option the docs show is there, and configs of the user's own besides
                warnings.warn(f"{command}: the docs' line leaves out {', '.join(sorted(found - listed))}", stacklevel=2)
                said = line
        assert (done.returncode, said) == (2, line), command


def test_an_mlflow_store_in_a_folder_not_made_yet_is_made(make_cfg, tmp_path: Path) -> None:
    """A fresh clone's logs/, or a store of one's own elsewhere: SQLite makes the file but not its folder."""
    pytest.importorskip("mlflow", reason="the mlflow extra (make install installs it)")
    store = tmp_path / "not" / "made" / "mlflow.db"
    train(make_cfg("logger=mlflow", f"logger.mlflow.tracking_uri=sqlite:///{store}", "max_epochs=1"))
    assert store.is_file() and store.stat().st_size > 0
