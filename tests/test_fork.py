"""The template forked as a user forks it: a README of their own (no table of groups, no recipes), a data yaml of
their own whose subset is larger than the tests' stand-in data, and their configs in a dir outside the repository,
given to `src/train.py` as `-cd` and to the tests as DESCENT_CONF. The config tests pass there, the documentation
tests skip in one line each, and a run trains on their data.

The fork holds what a user's clone holds but descent itself, which is the installed one (as in test_adapting.py).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, environment, run, write_idx_set

MINE = """\
# My data: a fixed subset of 2,000 Fashion-MNIST-shaped training images.
defaults:
  - fashion_mnist
  - _self_

train_size: 2000
"""

OWN_README = "# my project\n\nWhat my project does, in my own words: no table of config groups, no recipes.\n"


def fork(root: Path) -> tuple[Path, Path]:
    """The fork's clone (the template's entry points, conf/, tests and pyproject.toml, its own README) and its
    config dir outside it, holding `data/mine.yaml` alone."""
    clone = root / "clone"
    (clone / "src").mkdir(parents=True)
    for script in ("train.py", "eval.py"):
        shutil.copy(ROOT / "src" / script, clone / "src" / script)
    shutil.copy(ROOT / "pyproject.toml", clone / "pyproject.toml")
    shutil.copytree(ROOT / "conf", clone / "conf")  # hydra.main's config_path; -cd adds the user's dir after it
    shutil.copytree(ROOT / "tests", clone / "tests", ignore=shutil.ignore_patterns("__pycache__", "test_fork.py"))
    (clone / "README.md").write_text(OWN_README)
    configs = root / "configs"  # their own files alone: -cd adds them to conf/'s
    (configs / "data").mkdir(parents=True)
    (configs / "data" / "mine.yaml").write_text(MINE)
    return clone, configs


@pytest.mark.slow
def test_a_fork_with_its_own_readme_data_and_config_dir_passes_the_config_tests_and_trains(tmp_path: Path) -> None:
    clone, configs = fork(tmp_path)

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "tests/test_config.py"],
        cwd=clone, env=environment(DESCENT_CONF=str(configs)), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("PASSED") and "[mine]" in line for line in lines), done.stdout[-2000:]
    skipped = [line for line in lines if line.startswith("SKIPPED")]
    assert len(skipped) == 1 and "hold no table of config groups" in skipped[0], skipped
    assert "Error" not in done.stdout.split("short test summary info")[-1]  # no bare ValueError, no failure

    # A run on the fork's own data yaml, from the outside config dir, on files large enough for its subset.
    data_dir = write_idx_set(tmp_path / "data", num_train=2200, num_test=200)
    run_dir = tmp_path / "run"
    trained = run(
        "src/train.py", "-cd", str(configs), "data=mine", f"data.data_dir={data_dir}", "data.download=false",
        "data.system_dir=null", "data.val_size=100", "model.net.hidden=[32]", "max_epochs=1", "logger=none",
        f"hydra.run.dir={run_dir}", cwd=clone, env=environment(threads=1),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [row["progress/samples"] for row in history] == [2000]  # mine.yaml's subset, not the 2,100 there
    assert history[0]["train/loss"] < 2.3  # it learned from the files (chance is ln 10 = 2.30)
