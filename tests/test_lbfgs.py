"""Full-batch L-BFGS: its closure is the exact chunked loss and gradient, and it solves a convex problem."""

from pathlib import Path

import lightning
import pytest
import torch
import torch.nn.functional as F
from helpers import trained_step

from descent.training import build, train

LBFGS = ["optimizer=lbfgs", "trainer.precision=64-true", "logger=none", "max_epochs=1"]


@pytest.mark.parametrize("chunk_size", [7, "full"])
def test_one_lbfgs_iteration_in_chunks_equals_one_on_all_the_data(make_cfg, tmp_path: Path, chunk_size) -> None:
    """N = 500 in chunks of 7: every evaluation of the closure, line search included, is the full-batch one."""
    result = train(make_cfg(*LBFGS, f"chunk_size={chunk_size}"))
    cfg = make_cfg(*LBFGS)
    lightning.seed_everything(cfg.seed, verbose=False)
    data, model = build(cfg)
    net = model.net.double()
    images, y = data.sets["train"]
    optimizer = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=1, max_eval=25, history_size=10,
                                  line_search_fn="strong_wolfe")  # fmt: skip
    evaluations = 0

    def closure() -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        optimizer.zero_grad()
        loss = F.cross_entropy(net(images.normalised().double()), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    got = trained_step(tmp_path / "run")
    for name, parameter in net.named_parameters():
        torch.testing.assert_close(got[f"net.{name}"], parameter.detach(), rtol=0, atol=1e-10)
    assert result["final"]["progress/passes"] == evaluations > 1  # the line search evaluated more than once


def test_lbfgs_drives_the_gradient_of_a_convex_problem_to_zero(make_cfg, tmp_path: Path) -> None:
    """Multinomial logistic regression (no hidden layer) on 16 noisy features: strictly convex, one minimum."""
    cfg = make_cfg(*LBFGS, "max_epochs=40", "data=synthetic", "data.image_shape=[1,4,4]", "data.noise=3",
                   "data.num_train=800", "data.num_test=100", "data.val_size=100", "model.net.hidden=[]")  # fmt: skip
    train(cfg)
    data, model = build(cfg)
    model.load_state_dict(torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    net = model.net.double()
    images, y = data.sets["train"]
    loss = F.cross_entropy(net(images.normalised().double()), y)
    gradient = torch.autograd.grad(loss, list(net.parameters()))
    norm = torch.cat([g.flatten() for g in gradient]).norm()
    assert float(norm) < 1e-5, float(norm)
