"""BatchNorm under chunks and ranks: fixed normalisation groups, statistics recomputed before every evaluation, and
a refusal, before training, of any other layer that mixes the samples of a batch. The exact GD step of a ResNet in
chunks and under DDP is in test_gd_exact.py."""

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import NETS, refusal
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from torch import Tensor, nn

from descent.batchnorm import GhostBatchNorm, ghost_batch_norm, mixing_module
from descent.errors import DescentError
from descent.nets import ResNet
from descent.training import build, train

FLOAT64 = ["trainer.precision=64-true", "logger=none"]


class BatchNormMLP(nn.Sequential):
    """A user's own network, as the README's recipe adds it: Linear, BatchNorm1d, ReLU, ..., logits."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (32,)) -> None:
        widths = [int(torch.tensor(input_shape).prod()), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in zip(widths, widths[1:], strict=False):
            layers += [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU()]
        super().__init__(*layers, nn.Linear(widths[-1], num_classes))


class CentredOnTheBatch(nn.Module):
    """Subtracts the batch's mean: a layer that mixes samples, not a BatchNorm."""

    def forward(self, x: Tensor) -> Tensor:
        return x - x.mean(0)


class MixingMLP(nn.Sequential):
    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        n = int(torch.tensor(input_shape).prod())
        super().__init__(nn.Flatten(), nn.Linear(n, 16), CentredOnTheBatch(), nn.ReLU(), nn.Linear(16, num_classes))


class UntrackedBatchNorm(nn.Sequential):
    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        n = int(torch.tensor(input_shape).prod())
        layers = [nn.Flatten(), nn.Linear(n, 16), nn.BatchNorm1d(16, track_running_stats=False)]
        super().__init__(*layers, nn.Linear(16, num_classes))


def test_ghost_batch_norm_normalises_each_group_by_its_own_statistics() -> None:
    """Groups of 4 consecutive samples, the last one smaller (10 = 4 + 4 + 2); eval mode uses running statistics."""
    generator = torch.Generator().manual_seed(0)
    plain = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        plain.weight.uniform_(0.5, 2, generator=generator)
        plain.bias.uniform_(-1, 1, generator=generator)
    net = nn.Sequential(plain)
    keys = set(net.state_dict())
    (ghost,) = ghost_batch_norm(net, 4)
    assert isinstance(net[0], GhostBatchNorm) and set(net.state_dict()) == keys
    assert ghost.weight is plain.weight  # the same parameters: an optimizer built before or after sees them
    x = torch.randn(10, 3, 5, 5, dtype=torch.float64, generator=generator)
    expected = torch.cat(
        [F.batch_norm(x[i : i + 4], None, None, plain.weight, plain.bias, True) for i in range(0, 10, 4)]
    )
    torch.testing.assert_close(net(x), expected, rtol=0, atol=1e-12)
    net.eval()
    torch.testing.assert_close(net(x), F.batch_norm(x, ghost.running_mean, ghost.running_var, plain.weight, plain.bias))


def test_the_probe_names_a_module_that_mixes_samples_and_passes_batch_norm() -> None:
    resnet = ResNet((1, 28, 28), 10, depth=8, width=4)
    ghost_batch_norm(resnet, 32)
    before = {name: value.clone() for name, value in resnet.state_dict().items()}
    assert mixing_module(resnet, (1, 28, 28), training=True) is None
    assert mixing_module(resnet, (1, 28, 28), training=False) is None
    assert all(torch.equal(value, before[name]) for name, value in resnet.state_dict().items())
    assert mixing_module(MixingMLP((1, 28, 28), 10), (1, 28, 28), training=True) == "model.net.2 (CentredOnTheBatch)"
    plain_resnet = ResNet((1, 28, 28), 10, depth=8, width=4)  # nn.BatchNorm2d, not yet grouped: it mixes
    assert mixing_module(plain_resnet, (1, 28, 28), training=True) == "model.net.blocks.0.bn1 (BatchNorm2d)"


def final_figures(result: dict) -> dict[str, float]:
    return {key: value for key, value in result["final"].items() if key.split("/")[0] in ("train", "val", "test")}


@pytest.mark.parametrize("net", [pytest.param("resnet", marks=pytest.mark.slow), "user"])  # resnet: 4 float64 epochs
def test_sgd_figures_do_not_depend_on_chunk_size(make_cfg, tmp_path: Path, net: str) -> None:
    """SGD with B=128 (4 groups of 32 a step; the last step of 116 has 3 groups and 20 samples): an epoch in chunks
    of 7 (one group each), 64, 499 and the whole step gives the same weights, statistics and figures (float64)."""
    results, weights = [], []
    for chunk_size in (7, 64, 499, "full"):
        run_dir = tmp_path / f"chunks-{chunk_size}"
        overrides = [*FLOAT64, "max_epochs=1", "batch_size=128", f"chunk_size={chunk_size}"]
        cfg = make_cfg(*overrides, *NETS["resnet" if net == "resnet" else "mlp"], run_dir=run_dir)
        if net == "user":
            cfg.model.net = {"_target_": "test_batchnorm.BatchNormMLP", "hidden": [32, 16]}
        results.append(final_figures(train(cfg)))
        weights.append(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    assert any("running_var" in name for name in weights[0])
    for result, state in zip(results[1:], weights[1:], strict=True):
        for key, value in results[0].items():
            assert result[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        for name, value in weights[0].items():
            torch.testing.assert_close(state[name], value, rtol=0, atol=1e-10, msg=name)


def stem_output_at_last_checkpoint(cfg: DictConfig, run_dir: Path) -> tuple[dict[str, Tensor], Tensor]:
    """last.ckpt's state, and the output of its ResNet's stem (the first BatchNorm's input) over every training
    sample, in float64."""
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    data, model = build(cfg)
    images, _ = data.sets["train"]
    stem = model.net.stem.double()
    stem.weight.data = state["net.stem.weight"].double()
    with torch.no_grad():
        return state, stem(images.normalised().double())


def test_statistics_are_those_of_the_whole_training_set_at_the_evaluated_weights(make_cfg, tmp_path: Path) -> None:
    """The first BatchNorm's input is the stem's output: its recomputed running mean and variance are the mean and
    unbiased variance of that output over every training sample, with the weights of the evaluated epoch."""
    cfg = make_cfg(*FLOAT64, *NETS["resnet"], "max_epochs=2", "chunk_size=64")
    train(cfg)
    state, out = stem_output_at_last_checkpoint(cfg, tmp_path / "run")
    torch.testing.assert_close(state["net.blocks.0.bn1.running_mean"], out.mean((0, 2, 3)), rtol=0, atol=1e-10)
    var = out.transpose(0, 1).flatten(1).var(1)
    torch.testing.assert_close(state["net.blocks.0.bn1.running_var"], var, rtol=1e-9, atol=1e-10)


def test_under_bfloat16_autocast_the_statistics_are_those_of_the_training_set_to_its_precision(
    make_cfg, tmp_path: Path
) -> None:
    """experiment=fashion_mnist_resnet trains under trainer.precision=bf16-mixed: the stem's output is bfloat16
    there (about 3 significant digits), and the recomputed statistics still match float64's to that precision."""
    cfg = make_cfg("logger=none", "trainer.precision=bf16-mixed", *NETS["resnet"], "max_epochs=2", "chunk_size=64")
    result = train(cfg)
    assert result["history"][1]["train/loss"] < result["history"][0]["train/loss"]
    state, out = stem_output_at_last_checkpoint(cfg, tmp_path / "run")
    var = out.transpose(0, 1).flatten(1).var(1)
    mean_error = (state["net.blocks.0.bn1.running_mean"].double() - out.mean((0, 2, 3))).abs() / var.sqrt()
    assert mean_error.max() < 1e-2, mean_error
    torch.testing.assert_close(state["net.blocks.0.bn1.running_var"].double(), var, rtol=2e-2, atol=0)


@pytest.mark.parametrize("optimizer", ["sgd", "gd", "lbfgs"])
def test_the_resnet_trains_with_sgd_gd_and_lbfgs(make_cfg, optimizer: str) -> None:
    """Two epochs on the small learnable set: the training loss falls, every figure is finite."""
    lr = {"sgd": ["optimizer.lr=0.05", "batch_size=32"], "gd": ["optimizer.lr=0.5"], "lbfgs": []}[optimizer]
    result = train(make_cfg("logger=none", *NETS["resnet"], f"optimizer={optimizer}", *lr, "max_epochs=2"))
    losses = [row["train/loss"] for row in result["history"]]
    assert losses[1] < losses[0], losses


@pytest.mark.slow
def test_figures_under_ddp_on_two_processes_equal_one_process(make_cfg, ddp_runs: dict[str, Path]) -> None:
    """Two gloo ranks, chunks of 33 (one group of 32 each; ddp_runs.DDP_RUNS["batchnorm"]): the same figures as one
    process in one chunk."""
    from ddp_runs import DDP_RUNS

    one = final_figures(train(make_cfg(*DDP_RUNS["batchnorm"], "chunk_size=full")))
    two = final_figures(json.loads((ddp_runs["batchnorm"] / "metrics.json").read_text()))
    for key, value in one.items():
        assert two[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_a_layer_that_mixes_samples_is_refused_in_one_line_before_training(make_cfg, tmp_path: Path) -> None:
    """`model.net._target_=test_batchnorm.MixingMLP ~model.net.hidden ...` composed as src/train.py composes it (its
    message is what the command prints after `error: `, as every refusal: test_robustness.py runs one)."""
    cfg = make_cfg("model.net._target_=test_batchnorm.MixingMLP", "~model.net.hidden", "~model.net.activation",
                   "~model.net.dropout", "chunk_size=64")  # fmt: skip
    said = refusal(lambda: train(cfg))
    assert "\n" not in said
    assert (
        said.startswith("model.net.2 (CentredOnTheBatch) mixes the samples")
        and "chunk_size=500 on one device" in said  # the 500 training samples: the largest set
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_remedy_of_the_refusal_works_when_followed_on_a_subset_smaller_than_the_test_set(make_cfg) -> None:
    """100 training samples, 200 test images: one pass needs chunks of 200, which the message says and which
    are then not cut down to the training set's size."""
    cfg = make_cfg("logger=none", "max_epochs=1", "optimizer=gd", "data.train_size=100", "chunk_size=64")
    cfg.model.net = {"_target_": "test_batchnorm.MixingMLP"}
    with pytest.raises(DescentError) as refused:
        train(cfg)
    remedy = re.search(r"chunk_size=(\d+) on one device", str(refused.value))
    assert remedy is not None and remedy.group(1) == "200", str(refused.value)
    cfg.chunk_size = int(remedy.group(1))
    assert len(train(cfg)["history"]) == 1


def test_the_same_layer_is_accepted_when_every_step_and_set_is_one_forward_pass(make_cfg) -> None:
    cfg = make_cfg("logger=none", "max_epochs=1", "optimizer=gd", "chunk_size=full")
    cfg.model.net = {"_target_": "test_batchnorm.MixingMLP"}
    assert train(cfg)["history"]


def test_batch_norm_without_running_statistics_is_refused(make_cfg) -> None:
    cfg = make_cfg("logger=none")
    cfg.model.net = {"_target_": "test_batchnorm.UntrackedBatchNorm"}
    with pytest.raises(InstantiationException) as raised:  # src/train.py prints its cause in one line
        build(cfg)
    assert isinstance(raised.value.__cause__, DescentError)
    assert str(raised.value.__cause__).startswith("model.net.2 is a BatchNorm with track_running_stats=False")
