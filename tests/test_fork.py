"""The template forked as a user forks it: a README of their own (no table of groups, no recipes), a data yaml of
their own whose subset is larger than the tests' stand-in data, the "Adapting descent" recipes' data set and network
(another image shape, 3x12x12 with 4 classes, and a network without `hidden`, with its search space), and their
configs in a dir outside the repository, given to `src/train.py` as `-cd` and to the tests as DESCENT_CONF. The config
tests pass there, composing their options too, the documentation tests skip in one line each, and a run trains on
their data.

The fork holds what a user's clone holds but descent itself, which is the installed one (as in test_adapting.py).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, environment, run, write_idx_set
from recipes import MY_DATA, MY_NETS, MY_NPZ_YAML, SEARCH_SPACE_YAML, SMALL_CNN_YAML, quadrant_images

MINE = """\
# My data: a fixed subset of 2,000 Fashion-MNIST-shaped training images.
defaults:
  - fashion_mnist
  - _self_

train_size: 2000
"""

OWN_README = "# my project\n\nWhat my project does, in my own words: no table of config groups, no recipes.\n"


def fork(root: Path) -> tuple[Path, Path]:
    """The fork's clone (the template's entry points and the recipes' modules, conf/, tests and pyproject.toml, its
    own README) and its config dir outside it, holding `data/mine.yaml` and the recipes' yaml files."""
    clone = root / "clone"
    (clone / "src").mkdir(parents=True)
    for script in ("train.py", "eval.py"):
        shutil.copy(ROOT / "src" / script, clone / "src" / script)
    (clone / "src" / "my_data.py").write_text(MY_DATA)
    (clone / "src" / "my_nets.py").write_text(MY_NETS)
    shutil.copy(ROOT / "pyproject.toml", clone / "pyproject.toml")
    shutil.copytree(ROOT / "conf", clone / "conf")  # hydra.main's config_path; -cd adds the user's dir after it
    shutil.copytree(ROOT / "tests", clone / "tests", ignore=shutil.ignore_patterns("__pycache__", "test_fork.py"))
    (clone / "README.md").write_text(OWN_README)
    configs = root / "configs"  # their own files alone: -cd adds them to conf/'s
    (configs / "data").mkdir(parents=True)
    (configs / "data" / "mine.yaml").write_text(MINE)
    rng = np.random.default_rng(0)
    (x_train, y_train), (x_test, y_test) = (quadrant_images(n, (3, 12, 12), rng) for n in (300, 120))
    np.savez(root / "my_set.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    (configs / "data" / "my_npz.yaml").write_text(MY_NPZ_YAML.replace("data/my_set.npz", str(root / "my_set.npz")))
    (configs / "model").mkdir()
    (configs / "model" / "small_cnn.yaml").write_text(SMALL_CNN_YAML)
    (configs / "search_space").mkdir()
    (configs / "search_space" / "optuna_small_cnn.yaml").write_text(SEARCH_SPACE_YAML)
    return clone, configs


@pytest.mark.slow
def test_a_fork_with_its_own_readme_data_and_config_dir_passes_the_config_tests_and_trains(tmp_path: Path) -> None:
    clone, configs = fork(tmp_path)

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "tests/test_config.py"],
        cwd=clone, env=environment(DESCENT_CONF=str(configs), PYTHONPATH=str(clone / "src")),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:]
    lines = done.stdout.splitlines()
    passed = [line for line in lines if line.startswith("PASSED")]
    assert any("[mine]" in line for line in passed) and any("[my_npz]" in line for line in passed), done.stdout[-2000:]
    assert sum("small_cnn" in line for line in passed) == 2  # its network built for the data, and searched
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
