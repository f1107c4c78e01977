"""`src/report.py` on a real sweep of src/train.py: its table against the event files and metrics.json, its figure."""

import json
import shutil
import struct
from itertools import pairwise
from pathlib import Path

import pytest
from helpers import points as events
from helpers import run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(idx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real runs, GD and SGD at B=64, three epochs each; lr=0.05 so that the two end at different errors."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
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
    return sweep_dir


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of the table's body rows (those naming a run in backticks)."""
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines() if "| `" in line]


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def run_dirs(sweep_dir: Path) -> dict[str, Path]:
    """The sweep's run dirs by the override that tells them apart: {"optimizer=gd": ..., "optimizer=sgd": ...}."""
    dirs = [path.parent for path in sweep_dir.glob("*/metrics.json")]
    return {next(item for item in path.name.split(",") if item.startswith("optimizer=")): path for path in dirs}


def expected_row(run_dir: Path, target_error: float) -> list[str]:
    """The row the report must print for `run_dir`, from its event files, checked against its metrics.json."""
    series = events(run_dir)
    test_error = series["test/error"]
    epochs = [epoch for epoch, _ in test_error]
    assert epochs == [1, 2, 3]
    best_test = min(value for _, value in test_error)
    best_val_epoch = min(series["val/error"], key=lambda point: point[1])[0]  # the first epoch of the minimum
    train_s = [value for _, value in series["time/train_s"]]
    increments = [later - earlier for earlier, later in pairwise([0.0, *train_s])]
    reached = [epoch for epoch, value in test_error if value <= target_error]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert test_error[-1][1] == pytest.approx(metrics["final"]["test/error"], rel=1e-6)  # events hold float32
    assert best_val_epoch == metrics["best"]["epoch"]
    assert series["progress/steps"][-1][1] == metrics["final"]["progress/steps"]
    return [
        percent(test_error[-1][1]),
        percent(best_test),
        str(best_val_epoch),
        f"{sum(increments) / len(increments):.3f}",
        str(int(series["progress/steps"][-1][1])),
        f"{train_s[epochs.index(reached[0])]:.3f}" if reached else "not reached",
    ]


def is_png(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file; fails if it is not one."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_report_tables_each_run_with_the_figures_of_its_event_files(sweep: Path) -> None:
    done = run("src/report.py", str(sweep))
    assert done.returncode == 0, done.stderr
    markdown = (sweep / "report.md").read_text()
    assert table_rows(markdown) and table_rows(done.stdout) == table_rows(markdown)
    dirs = run_dirs(sweep)
    best = {name: min(value for _, value in events(path)["test/error"]) for name, path in dirs.items()}
    target = max(best.values())  # the default: every run reaches it
    assert f"s to {percent(target)} test error" in markdown
    rows = {row[0]: row[1:] for row in table_rows(markdown)}
    assert sorted(rows) == ["`optimizer=gd`", "`optimizer=sgd`"]  # the overrides all runs share are left out
    for name, run_dir in dirs.items():
        assert rows[f"`{name}`"] == expected_row(run_dir, target)
    assert [row[0].strip("`") for row in table_rows(markdown)] == sorted(best, key=lambda name: (best[name], name))
    width, height = is_png(sweep / "report.png")
    assert width >= 1000 and height >= 600
    assert (sweep / "report.png").stat().st_size > 30_000  # curves, labels and legend, not an empty canvas


def test_a_target_error_that_some_run_misses_says_not_reached(sweep: Path, tmp_path: Path) -> None:
    shutil.copytree(sweep, tmp_path, dirs_exist_ok=True)
    dirs = run_dirs(tmp_path)
    best = {name: min(value for _, value in events(path)["test/error"]) for name, path in dirs.items()}
    assert best["optimizer=gd"] > best["optimizer=sgd"], "lr=0.05 should leave three GD steps behind SGD"
    target = best["optimizer=sgd"]
    from descent.report import write_report  # here: matplotlib takes seconds to import, even for deselected tests

    rows = {row[0]: row[1:] for row in table_rows(write_report(tmp_path, target))}
    assert rows["`optimizer=gd`"][-1] == "not reached"
    for name, run_dir in dirs.items():
        assert rows[f"`{name}`"] == expected_row(run_dir, target)


def test_a_single_run_dir_and_a_dir_above_the_sweep_are_reports_too(sweep: Path, tmp_path: Path) -> None:
    from descent.report import write_report

    single = tmp_path / "single"
    shutil.copytree(run_dirs(sweep)["optimizer=sgd"], single)
    rows = table_rows(write_report(single))
    assert [row[0] for row in rows] == ["`single`"]
    assert rows[0][1:] == expected_row(single, min(value for _, value in events(single)["test/error"]))
    above = tmp_path / "above"
    shutil.copytree(sweep, above / "sweep")
    rows = table_rows(write_report(above))
    assert sorted(row[0] for row in rows) == ["`optimizer=gd`", "`optimizer=sgd`"]
    assert (above / "report.png").is_file() and (above / "report.md").is_file()


def test_a_dir_without_runs_ends_in_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()  # a dir, but no event files in it or below it
    done = run("src/report.py", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: {tmp_path}: no runs with per-epoch TensorBoard events in it or below it; "
        "give the sweep dir or run dir that src/train.py wrote with logger=tensorboard"
    ]
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "report.png").exists()


def test_a_target_error_that_is_not_a_fraction_is_refused(tmp_path: Path) -> None:
    done = run("src/report.py", str(tmp_path), "--target-error", "5")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: --target-error=5.0 is not an error rate: give a fraction in [0, 1], e.g. 0.02 for 2%"
    ]
