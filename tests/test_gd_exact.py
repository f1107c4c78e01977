"""Batch gradient descent in chunks is exact: one step equals one step on the whole training set (float64)."""

from pathlib import Path

import pytest
import torch
from helpers import EXACT, NETS, assert_same, trained_step

from descent.training import train


@pytest.mark.parametrize("model", ["mlp", "cnn", pytest.param("resnet", marks=pytest.mark.slow)])  # ResNet: 1-2 s
@pytest.mark.parametrize("chunk_size", [7, 64, 499, "full"])
def test_one_gd_step_in_chunks_equals_one_step_on_all_the_data(
    make_cfg, reference, tmp_path: Path, chunk_size, model
) -> None:
    """N = 500: 7 and 64 do not divide it, so the last chunk is smaller and must weigh less."""
    result = train(make_cfg(*EXACT, f"chunk_size={chunk_size}", *NETS[model]))
    assert result["final"]["progress/steps"] == 1
    assert_same(trained_step(tmp_path / "run"), reference(*NETS[model]))


@pytest.mark.parametrize("chunk_size", [7, "full"])
def test_the_loss_from_config_is_summed_exactly_over_chunks(make_cfg, reference, tmp_path: Path, chunk_size) -> None:
    """model.loss with label smoothing: the chunked step is the step on the smoothed mean loss, not the plain one."""
    smoothed = "model.loss.label_smoothing=0.2"
    train(make_cfg(*EXACT, f"chunk_size={chunk_size}", smoothed))
    got = trained_step(tmp_path / "run")
    assert_same(got, reference(smoothed))
    plain = reference()
    assert not all(torch.allclose(got[name], plain[name], rtol=0, atol=1e-6) for name in plain)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn", "resnet"])
def test_one_gd_step_under_ddp_on_two_processes_equals_one_step_on_all_the_data(
    reference, ddp_runs: dict[str, Path], model: str
) -> None:
    """Each of 2 gloo ranks sums its chunks' losses (chunks of 33); dividing by N/2 and DDP's mean give the global
    mean. The run is ddp_runs.DDP_RUNS[f"gd_{model}"], trained in the suite's one DDP process group."""
    assert_same(trained_step(ddp_runs[f"gd_{model}"]), reference(*NETS[model]))


@pytest.mark.slow
def test_one_gd_step_on_two_torchrun_nodes_equals_one_step_on_all_the_data(
    reference, idx_dir: Path, tmp_path: Path
) -> None:
    """Multi-node from the config alone: torchrun starts one process on each of two "nodes" (this machine, over the
    loopback), trainer.num_nodes=2, the same pinned run dir on both; the GD step is that of one process."""
    import socket
    import subprocess
    import sys

    from helpers import ROOT, environment

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run_dir = tmp_path / "two-nodes"
    torchrun = Path(sys.executable).parent / "torchrun"
    nodes = [
        subprocess.Popen(
            [
                str(torchrun),
                "--nnodes=2",
                f"--node_rank={rank}",
                "--nproc_per_node=1",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                "src/train.py",
                "trainer=cpu",
                "trainer.strategy=ddp",
                "trainer.num_nodes=2",
                *EXACT,
                "chunk_size=33",
                "data.val_size=100",
                "model.net.hidden=[32]",
                f"data.data_dir={idx_dir}",
                "data.download=false",
                f"hydra.run.dir={run_dir}",
            ],
            cwd=ROOT,
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    for node in nodes:
        _, stderr = node.communicate(timeout=300)
        assert node.returncode == 0, stderr
    assert_same(trained_step(run_dir), reference())
