"""Batch gradient descent in chunks is exact: one step equals one step on the whole training set (float64)."""

import subprocess
from pathlib import Path

import lightning
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, python

from descent.training import build, train

LR = 0.5
EXACT = ["optimizer=gd", f"optimizer.lr={LR}", "max_epochs=1", "trainer.precision=64-true", "logger=none"]


def reference_step(make_cfg) -> dict[str, torch.Tensor]:
    """theta^1 = theta^0 - lr * grad of the mean loss over all N samples, by autograd on the concatenated data."""
    cfg = make_cfg(*EXACT)
    lightning.seed_everything(cfg.seed, verbose=False)
    data, model = build(cfg)
    net = model.net.double()
    x, y = data.sets["train"]
    loss = F.cross_entropy(net(x.double()), y)
    loss.backward()
    return {f"net.{name}": (p - LR * p.grad).detach() for name, p in net.named_parameters()}


def trained_step(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name].dtype == torch.float64
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("chunk_size", [7, 64, 499, "full"])
def test_one_gd_step_in_chunks_equals_one_step_on_all_the_data(make_cfg, tmp_path: Path, chunk_size) -> None:
    """N = 500: 7 and 64 do not divide it, so the last chunk is smaller and must weigh less."""
    result = train(make_cfg(*EXACT, f"chunk_size={chunk_size}"))
    assert result["final"]["progress/steps"] == 1
    assert_same(trained_step(tmp_path / "run"), reference_step(make_cfg))


@pytest.mark.slow
def test_one_gd_step_under_ddp_on_two_processes_equals_one_step_on_all_the_data(
    make_cfg, idx_dir: Path, tmp_path: Path
) -> None:
    """Each of 2 gloo ranks sums its chunks' losses; dividing by N/2 and DDP's mean give the global mean."""
    run_dir = tmp_path / "ddp"
    done = subprocess.run(
        [python(), "src/train.py", "trainer=ddp_cpu", *EXACT, "chunk_size=33", "data.val_size=100",
         "model.hidden=[32]", f"data.data_dir={idx_dir}", "data.download=false", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_same(trained_step(run_dir), reference_step(make_cfg))
