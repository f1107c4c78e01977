"""Batch gradient descent in chunks is exact: one step equals one step on the whole training set (float64)."""

from pathlib import Path

import pytest
from helpers import EXACT, assert_same, reference_step, run, trained_step

from descent.training import train


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("chunk_size", [7, 64, 499, "full"])
def test_one_gd_step_in_chunks_equals_one_step_on_all_the_data(make_cfg, tmp_path: Path, chunk_size, model) -> None:
    """N = 500: 7 and 64 do not divide it, so the last chunk is smaller and must weigh less."""
    result = train(make_cfg(*EXACT, f"chunk_size={chunk_size}", f"model={model}"))
    assert result["final"]["progress/steps"] == 1
    assert_same(trained_step(tmp_path / "run"), reference_step(make_cfg, f"model={model}"))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_one_gd_step_under_ddp_on_two_processes_equals_one_step_on_all_the_data(
    make_cfg, idx_dir: Path, tmp_path: Path, model: str
) -> None:
    """Each of 2 gloo ranks sums its chunks' losses; dividing by N/2 and DDP's mean give the global mean."""
    run_dir = tmp_path / "ddp"
    done = run(
        "src/train.py", "trainer=ddp_cpu", *EXACT, "chunk_size=33", "data.val_size=100", f"model={model}",
        "model.net.hidden=[32]", f"data.data_dir={idx_dir}", "data.download=false", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_same(trained_step(run_dir), reference_step(make_cfg, f"model={model}"))
