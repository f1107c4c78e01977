"""docs/your_own_measurement.md followed as written: its two files, taken from the page's text, added to a copy of
the project, and a run that measures with them; and descent's base, which restores the module's mode."""

import logging
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, scalars, small
from hydra import compose, initialize_config_dir

from descent.measurement import EpochMeasurement, evaluating
from descent.sweep import write_summary
from descent.training import train

PAGE = ROOT / "docs" / "your_own_measurement.md"


def recipe_files() -> dict[str, str]:
    """The page's fenced blocks whose first line is `# src/...` or `# conf/...`, by that path."""
    if not PAGE.is_file():
        pytest.skip(f"{PAGE.relative_to(ROOT)} is not there: a fork without descent's docs")
    blocks = re.findall(r"```(?:python|yaml)\n# ((?:src|conf)/\S+)\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)
    return {path: body for path, body in blocks}


def test_the_pages_measurement_is_one_file_and_one_yaml_and_reaches_every_output(
    idx_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The page's files added to a copy of conf/ and src/ (src/ importable, as `python src/train.py` there makes
    it), and its run composed from that conf/ and trained in-process: the command line would add only its start-up."""
    files = recipe_files()
    assert sorted(files) == ["conf/callbacks/dead_relus.yaml", "src/dead_relus.py"]
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    shutil.copytree(ROOT / "conf", project / "conf")
    for path, body in files.items():
        (project / path).write_text(body)
    monkeypatch.syspath_prepend(str(project / "src"))
    monkeypatch.delitem(sys.modules, "dead_relus", raising=False)
    run_dir = tmp_path / "run"
    with initialize_config_dir(config_dir=str(project / "conf"), version_base="1.3"):
        cfg = compose("train", [*small(idx_dir), "trainer=cpu", "callbacks=dead_relus", "logger=[csv,tensorboard]",
                                f"run_dir={run_dir}"])  # fmt: skip
    caplog.set_level(logging.INFO)
    history = train(cfg)["history"]
    fractions = [row["relu/dead_fraction"] for row in history]
    assert len(fractions) == 2 and all(0 <= f <= 1 for f in fractions)
    assert f"epoch 2 measured: relu/dead_fraction {fractions[1]:.4g}" in caplog.messages  # the console's line
    assert "relu/dead_fraction" in (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert scalars(run_dir)["relu/dead_fraction"] == pytest.approx(fractions, abs=1e-7)
    write_summary(tmp_path)  # the run as a sweep's one job: its summary has the figure's column
    header = (tmp_path / "summary.csv").read_text().splitlines()[0].split(",")
    assert "final relu/dead_fraction" in header


class Raises(EpochMeasurement):
    def measure(self, trainer, module):  # noqa: ANN001, ANN201
        assert not module.training
        raise RuntimeError("measured nothing")


def test_a_measurement_runs_in_eval_mode_and_its_error_leaves_the_mode_as_it_was(make_cfg) -> None:
    cfg = make_cfg("logger=none", "max_epochs=1", "+callbacks.raises._target_=test_measurement.Raises")
    with pytest.raises(RuntimeError, match="measured nothing"):
        train(cfg)
    net = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError), evaluating(net):
        raise ValueError
    assert net.training
