"""Backpropagation by hand (descent.backprop) equals autograd: gradients in float64, then whole training runs."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import EXACT, assert_same, compose_train, refusal, trained_step
from torch import nn

from descent.backprop import ACTIVATION_DERIVATIVES, backpropagate
from descent.errors import DescentError
from descent.module import Classifier
from descent.nets import ACTIVATIONS, MLP
from descent.training import train

RELATIVE = 1e-10


def autograd_gradients(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor, divisor: float) -> list[torch.Tensor]:
    net.zero_grad(set_to_none=True)
    (F.cross_entropy(net(x), y, reduction="sum") / divisor).backward()
    gradients = [param.grad.clone() for param in net.parameters()]
    net.zero_grad(set_to_none=True)
    return gradients


def assert_gradients_equal(net: nn.Sequential, expected: list[torch.Tensor]) -> float:
    """Every parameter's .grad within RELATIVE of autograd's, relative to the largest entry; returns the worst."""
    worst = 0.0
    for (name, param), grad in zip(net.named_parameters(), expected, strict=True):
        assert param.grad is not None and param.grad.dtype == torch.float64, name
        relative = ((param.grad - grad).abs().max() / grad.abs().max()).item()
        assert relative <= RELATIVE, f"{name}: relative difference {relative:.1e}"
        worst = max(worst, relative)
    return worst


def problem(hidden: list[int], activation: str, dropout: float = 0.0, n: int = 37) -> tuple:
    """A float64 MLP (20 inputs, 6 classes) at its initialisation, with a random chunk of n samples."""
    generator = torch.Generator().manual_seed(len(hidden) * 100 + sum(hidden))
    torch.manual_seed(0)
    net = MLP((20,), 6, hidden, activation, dropout).double()
    x = torch.randn(n, 20, generator=generator, dtype=torch.float64)
    y = torch.randint(6, (n,), generator=generator)
    return net, x, y


def test_every_activation_of_the_model_has_its_derivative() -> None:
    assert set(ACTIVATION_DERIVATIVES) == set(ACTIVATIONS.values())


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("hidden", [[], [7], [16, 9], [32, 16, 8], [3, 50]], ids=str)
def test_manual_gradients_equal_autograd_in_float64(hidden: list[int], activation: str) -> None:
    net, x, y = problem(hidden, activation)
    expected = autograd_gradients(net, x, y, divisor=11.0)
    loss_sum = backpropagate(net, x, y, loss_divisor=11.0)
    assert_gradients_equal(net, expected)
    assert loss_sum.item() == pytest.approx(F.cross_entropy(net(x), y, reduction="sum").item(), rel=1e-12)
    assert not loss_sum.requires_grad


def test_chunks_add_up_to_the_gradient_of_the_whole_step() -> None:
    """backpropagate adds to .grad, as autograd does: 3 uneven chunks each divided by N give the mean's gradient."""
    net, x, y = problem([16, 9], "tanh", n=40)
    expected = autograd_gradients(net, x, y, divisor=40.0)
    for lo, hi in ((0, 7), (7, 33), (33, 40)):
        backpropagate(net, x[lo:hi], y[lo:hi], loss_divisor=40.0)
    assert_gradients_equal(net, expected)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_dropout_in_training_keeps_its_mask_for_the_backward_pass(activation: str) -> None:
    """On the CPU the mask is drawn as F.dropout draws it, so the same seed drops the same units."""
    net, x, y = problem([32, 16], activation, dropout=0.5)
    net.train()
    torch.manual_seed(7)
    expected = autograd_gradients(net, x, y, divisor=1.0)
    torch.manual_seed(7)
    backpropagate(net, x, y, loss_divisor=1.0)
    assert_gradients_equal(net, expected)
    net.eval()  # no dropout: the gradient is the deterministic one
    expected = autograd_gradients(net, x, y, divisor=1.0)
    backpropagate(net, x, y, loss_divisor=1.0)
    assert_gradients_equal(net, expected)


def test_a_layer_without_a_backward_pass_is_refused_by_name() -> None:
    net = nn.Sequential(nn.Linear(4, 5), nn.GELU(), nn.Linear(5, 3))
    with pytest.raises(DescentError, match="no backward pass for a GELU layer .*use model.backprop=autograd"):
        backpropagate(net, torch.randn(2, 4), torch.tensor([0, 2]), loss_divisor=2.0)


def test_an_unknown_backprop_is_refused() -> None:
    with pytest.raises(DescentError, match="^model.backprop='nope' is not one of autograd, manual$"):
        Classifier(MLP((784,), 10), backprop="nope")


def test_manual_backprop_refuses_a_network_that_is_not_an_mlp() -> None:
    from descent.nets import LeNet

    with pytest.raises(DescentError, match="model.backprop=manual supports only MLPs .* not LeNet: use model.backprop"):
        Classifier(LeNet((1, 28, 28), 10), backprop="manual")


def test_manual_backprop_with_the_cnn_on_the_command_line_is_one_line_before_data(tmp_path: Path) -> None:
    """Composed as `python src/train.py model=cnn model.backprop=manual` composes it (its message is what the
    command prints after `error: `, as every refusal: test_robustness.py runs one)."""
    cfg = compose_train("model=cnn", "model.backprop=manual", "data.data_dir=/nonexistent", f"run_dir={tmp_path}")
    said = refusal(lambda: train(cfg))
    assert said.startswith("model.backprop=manual supports only MLPs") and "\n" not in said


TRAININGS = {
    "gd": ["optimizer=gd"],
    "gd in chunks of 99": ["optimizer=gd", "chunk_size=99"],
    "sgd": ["optimizer=sgd", "batch_size=64"],
    "sgd with dropout": ["optimizer=sgd", "batch_size=100", "model.net.dropout=0.5"],
}


@pytest.mark.parametrize("overrides", TRAININGS.values(), ids=TRAININGS.keys())
def test_two_epochs_give_the_same_losses_with_either_backprop(make_cfg, tmp_path: Path, overrides: list[str]) -> None:
    common = [*overrides, "max_epochs=2", "trainer.precision=64-true", "logger=none"]
    runs = {
        backprop: train(make_cfg(*common, f"model.backprop={backprop}", run_dir=tmp_path / backprop))["history"]
        for backprop in ("autograd", "manual")
    }
    assert len(runs["manual"]) == 2
    for manual, autograd in zip(runs["manual"], runs["autograd"], strict=True):
        for key in ("train/loss", "val/loss", "test/loss", "train/error", "progress/steps"):
            assert manual[key] == pytest.approx(autograd[key], rel=1e-6, abs=1e-12), key
    assert runs["manual"][-1]["train/loss"] < runs["manual"][0]["train/loss"]


def test_one_manual_gd_step_in_chunks_equals_one_autograd_step_on_all_the_data(
    make_cfg, reference, tmp_path: Path
) -> None:
    """N = 500 in chunks of 7: the exact-GD accumulation holds to 1e-10 with the hand-written backward pass."""
    train(make_cfg(*EXACT, "chunk_size=7", "model.backprop=manual"))
    assert_same(trained_step(tmp_path / "run"), reference())


@pytest.mark.slow
def test_the_issue_command_runs_and_matches_autograd(tmp_path: Path) -> None:
    """`python src/train.py model.backprop=manual optimizer=gd data=synthetic max_epochs=2`, in float32, composed
    as its command line composes it (on the CPU)."""
    histories = {}
    for backprop in ("manual", "autograd"):
        run_dir = tmp_path / backprop
        cfg = compose_train(
            f"model.backprop={backprop}", "optimizer=gd", "data=synthetic", "max_epochs=2", "trainer=cpu",
            f"run_dir={run_dir}",
        )  # fmt: skip
        histories[backprop] = train(cfg)["history"]
    for manual, autograd in zip(histories["manual"], histories["autograd"], strict=True):
        for key in ("train/loss", "val/loss", "test/loss"):
            assert manual[key] == pytest.approx(autograd[key], rel=1e-6), key


def test_an_unknown_backprop_on_the_command_line_ends_in_one_line(tmp_path: Path) -> None:
    cfg = compose_train("model.backprop=nope", "data=synthetic", f"run_dir={tmp_path}")
    assert refusal(lambda: train(cfg)) == "model.backprop='nope' is not one of autograd, manual"


@pytest.mark.slow
def test_one_manual_gd_step_under_ddp_on_two_processes_equals_one_step_on_all_the_data(
    reference, ddp_runs: dict[str, Path]
) -> None:
    """DDP's hooks see no autograd backward here: the module averages the ranks' gradients itself (chunks of 33;
    ddp_runs.DDP_RUNS["gd_manual_backprop"])."""
    assert_same(trained_step(ddp_runs["gd_manual_backprop"]), reference())
