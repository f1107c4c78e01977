"""`src/report.py` on a real sweep of src/train.py: its table against the event files and metrics.json, its figure."""

import json
import shutil
import struct
from itertools import pairwise
from pathlib import Path

import pytest
from helpers import once_per_session, run
from helpers import points as events
from omegaconf import OmegaConf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def sweep(idx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real runs, GD and SGD at B=64, three epochs each; lr=0.05 so that the two end at different errors. One
    sweep for the session, however the tests are shared among workers (helpers.once_per_session)."""
    return once_per_session(tmp_path_factory, "report_sweep", lambda sweep_dir: two_runs(idx_dir, sweep_dir))


def two_runs(idx_dir: Path, sweep_dir: Path) -> None:
    done = run(
        "src/train.py",
        "-m",
        "optimizer=gd,sgd",
        "batch_size=64",
        "optimizer.lr=0.05",
        f"data.data_dir={idx_dir}",
        "data.download=false",
        "data.val_size=100",
        "model.net.hidden=[32]",
        "max_epochs=3",
        "trainer=cpu",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert done.returncode == 0, done.stderr


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of the table's body rows (those naming a run in backticks)."""
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines() if "| `" in line]


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def run_dirs(sweep_dir: Path) -> dict[str, Path]:
    """The sweep's run dirs by the override that tells them apart: {"optimizer:gd": ..., "optimizer:sgd": ...}."""
    dirs = [path.parent for path in sweep_dir.glob("*/metrics.json")]
    return {next(item for item in path.name.split("+") if item.startswith("optimizer:")): path for path in dirs}


def expected_row(run_dir: Path, target_error: float) -> list[str]:
    """The row the report must print for `run_dir`, from its metrics.json, checked against its event files."""
    result = json.loads((run_dir / "metrics.json").read_text())
    history = result["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    best = min(history, key=lambda row: row["val/error"])  # the first epoch of the lowest monitor
    assert result["monitor"] == "val/error" and best == result["best"] and history[-1] == result["final"]
    series = events(run_dir)  # what TensorBoard shows of the run is the same (events hold float32)
    for key in ("test/error", "val/error", "time/train_s", "progress/steps"):
        assert [value for _, value in series[key]] == pytest.approx([row[key] for row in history], rel=1e-6)
    train_s = [row["time/train_s"] for row in history]
    increments = [later - earlier for earlier, later in pairwise([0.0, *train_s])]
    reached = [row for row in history if row["test/error"] <= target_error]
    return [
        percent(best["val/error"]),
        str(best["epoch"]),
        percent(best["test/error"]),
        percent(history[-1]["test/error"]),
        f"{sum(increments) / len(increments):.3f}",
        str(int(history[-1]["progress/steps"])),
        f"{reached[0]['time/train_s']:.3f}" if reached else "not reached",
    ]


def lowest_test_error(run_dir: Path) -> float:
    return min(row["test/error"] for row in json.loads((run_dir / "metrics.json").read_text())["history"])


def is_png(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file; fails if it is not one."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_report_tables_each_run_with_the_figures_of_its_event_files(sweep: Path, tmp_path: Path) -> None:
    sweep = shutil.copytree(sweep, tmp_path / "sweep")  # the shared sweep stays as the runs left it
    done = run("src/report.py", str(sweep))
    assert done.returncode == 0, done.stderr
    markdown = (sweep / "report.md").read_text()
    assert table_rows(markdown) and table_rows(done.stdout) == table_rows(markdown)
    dirs = run_dirs(sweep)
    lowest = {name: lowest_test_error(path) for name, path in dirs.items()}
    target = max(lowest.values())  # the default: every run reaches it
    assert f"s to {percent(target)} test error" in markdown
    assert "| run | best val/error | best epoch | test error at best | final test error |" in markdown
    assert "The best epoch is the one with the lowest val/error" in markdown
    rows = {row[0]: row[1:] for row in table_rows(markdown)}
    assert sorted(rows) == ["`optimizer:gd`", "`optimizer:sgd`"]  # the overrides all runs share are left out
    for name, run_dir in dirs.items():
        assert rows[f"`{name}`"] == expected_row(run_dir, target)
    objective = {name: float(rows[f"`{name}`"][0].rstrip("%")) for name in dirs}  # best val/error, best first
    assert [row[0].strip("`") for row in table_rows(markdown)] == sorted(dirs, key=lambda n: (objective[n], n))
    width, height = is_png(sweep / "report.png")
    assert width >= 1000 and height >= 600
    assert (sweep / "report.png").stat().st_size > 30_000  # curves, labels and legend, not an empty canvas


READ_WITHOUT_TORCH = """
import runpy, sys
from pathlib import Path

from descent.runs import read_runs
from descent.sweep import write_summary

sweep_dir = Path(sys.argv[1])
sys.argv = ["src/report.py", str(sweep_dir)]
runpy.run_path("src/report.py", run_name="__main__")
write_summary(sweep_dir)
runs = read_runs(sweep_dir)
print(sorted(run.status for run in runs))
print(sorted({name.split(".")[0] for name in sys.modules} & {"torch", "lightning", "torchmetrics"}))
"""
"""The report (as `src/report.py` runs it), the sweep summary and the run-dir reader in one fresh process, which then
names the training stack's modules it imported."""


def test_the_report_the_summary_and_the_reader_of_run_dirs_import_no_torch(sweep: Path, tmp_path: Path) -> None:
    """What runs after training reads metrics.json and writes markdown, CSV and PNG: a torch import would cost it
    seconds (most of its start-up) and tie it to the training stack."""
    import optuna

    shutil.copytree(sweep, tmp_path, dirs_exist_ok=True)
    for name in ("report.md", "report.png", "summary.md", "summary.csv"):  # written again below
        (tmp_path / name).unlink(missing_ok=True)
    # The dir made a search's too: its study, and a multirun.yaml that names it as the Optuna sweeper writes it.
    saved = OmegaConf.load(tmp_path / "multirun.yaml")
    saved.hydra.sweeper = {"_target_": "hydra_plugins.descent_sweepers.OptunaSweeper", "storage": "sqlite",
                           "study_name": "lr"}  # fmt: skip
    OmegaConf.save(saved, tmp_path / "multirun.yaml")
    study = optuna.create_study(study_name="lr", storage=f"sqlite:///{tmp_path}/optuna.db")
    for value in (0.3, 0.2, None):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(0.01, 1.0, log=True)})
        trial.report(0.5, step=1)
        study.tell(trial, value, state=None if value else optuna.trial.TrialState.PRUNED)
    done = run("-c", READ_WITHOUT_TORCH, str(tmp_path))
    assert done.returncode == 0, done.stderr
    *_, statuses, imported = done.stdout.splitlines()
    assert statuses == "['ok', 'ok']" and imported == "[]"
    report = (tmp_path / "report.md").read_text()
    assert table_rows(report) and (tmp_path / "report.png").is_file()
    assert "## Search: study lr\n\n3 trials: 2 complete, 1 pruned. Best: trial 1, 0.2 at {'lr': " in report
    for name in ("search_curves.png", "search_history.png", "search_importances.png"):
        assert (tmp_path / name).is_file() and f"]({name})" in report
    assert "2 runs, 0 failed" in (tmp_path / "summary.md").read_text()


def test_a_target_error_that_some_run_misses_says_not_reached(sweep: Path, tmp_path: Path) -> None:
    shutil.copytree(sweep, tmp_path, dirs_exist_ok=True)
    dirs = run_dirs(tmp_path)
    lowest = {name: lowest_test_error(path) for name, path in dirs.items()}
    assert lowest["optimizer:gd"] > lowest["optimizer:sgd"], "lr=0.05 should leave three GD steps behind SGD"
    target = lowest["optimizer:sgd"]
    from descent.report import write_report  # here: matplotlib takes seconds to import, even for deselected tests

    rows = {row[0]: row[1:] for row in table_rows(write_report(tmp_path, target))}
    assert rows["`optimizer:gd`"][-1] == "not reached"
    for name, run_dir in dirs.items():
        assert rows[f"`{name}`"] == expected_row(run_dir, target)


def test_a_single_run_dir_and_a_dir_above_the_sweep_are_reports_too(sweep: Path, tmp_path: Path) -> None:
    from descent.report import write_report

    single = tmp_path / "single"
    shutil.copytree(run_dirs(sweep)["optimizer:sgd"], single)
    rows = table_rows(write_report(single))
    assert [row[0] for row in rows] == ["`single`"]
    assert rows[0][1:] == expected_row(single, lowest_test_error(single))
    above = tmp_path / "above"
    shutil.copytree(sweep, above / "sweep")
    rows = table_rows(write_report(above))
    assert sorted(row[0] for row in rows) == ["`optimizer:gd`", "`optimizer:sgd`"]
    assert (above / "report.png").is_file() and (above / "report.md").is_file()


def test_a_dir_without_runs_ends_in_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()  # a dir, but no metrics.json in it or below it
    (tmp_path / "eval").mkdir()  # what src/eval.py writes is no run of src/train.py
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps({"ckpt_path": "last.ckpt", "test/error": 0.1}))
    done = run("src/report.py", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: {tmp_path}: no finished runs in it or below it (no metrics.json); "
        "give the sweep dir or run dir that src/train.py wrote"
    ]
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "report.png").exists()


def test_a_target_error_that_is_not_a_fraction_is_refused(tmp_path: Path) -> None:
    done = run("src/report.py", str(tmp_path), "--target-error", "5")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: --target-error=5.0 is not an error rate: give a fraction in [0, 1], e.g. 0.02 for 2%"
    ]


def test_best_is_the_epoch_of_the_lowest_monitor_not_of_the_lowest_test_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run without event files (logger=none) whose test error is lowest at epoch 3, its val error at epoch 2."""
    from descent.report import write_report

    errors = [(0.30, 0.40, 0.35), (0.20, 0.10, 0.25), (0.10, 0.15, 0.05)]  # (train, val, test) by epoch
    history = [
        {"epoch": epoch, "progress/steps": 10.0 * epoch, "time/train_s": 2.0 * epoch}
        | {f"{stage}/error": error for stage, error in zip(("train", "val", "test"), epoch_errors, strict=True)}
        | {f"{stage}/loss": 2 * error for stage, error in zip(("train", "val", "test"), epoch_errors, strict=True)}
        for epoch, epoch_errors in enumerate(errors, start=1)
    ]
    (tmp_path / "run").mkdir()
    result = {"monitor": "val/error", "final": history[-1], "best": history[1], "history": history}
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(result))
    (tmp_path / "failed" / ".hydra").mkdir(parents=True)  # a failed sweep job is left out, and says so
    (tmp_path / "failed" / ".hydra" / "overrides.yaml").write_text("- batch_size=9\n")
    (tmp_path / "failed" / "error.txt").write_text("DescentError: batch_size=9 is wrong\n")
    markdown = write_report(tmp_path, target_error=0.25)
    assert f"{tmp_path / 'failed'}: left out, failed: DescentError: batch_size=9 is wrong" in capsys.readouterr().err
    assert "the lowest val/error" in markdown.splitlines()[2]
    # best val/error 10% at epoch 2, test error there 25% (not the lowest, 5% at epoch 3), final 5%; 2 s an epoch,
    # 30 steps, 25% first reached at epoch 2 (4 s).
    assert table_rows(markdown) == [["`run`", "10.00%", "2", "25.00%", "5.00%", "2.000", "30", "4.000"]]
