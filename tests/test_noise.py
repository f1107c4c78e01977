"""The gradient noise (descent.noise): exact where per-sample gradients are known, the same under DDP, opt-in."""

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import scalars
from omegaconf import DictConfig
from torch import Tensor
from torch.func import functional_call, grad, vmap

from descent import results
from descent.errors import DescentError
from descent.noise import draws
from descent.sweep import write_summary
from descent.training import build, train

N = 500  # the idx_dir fixture's 600 training images less data.val_size=100
B, M = 200, 100  # noise.batch_size and noise.samples of the exactness test: (N - B) / (N - 1) is 0.6, far from 1
EXACT_NOISE = [
    "model.net.hidden=[]",  # multinomial logistic regression: per-sample gradients by torch.func, in float64
    "trainer.precision=64-true",
    "max_epochs=1",
    "logger=none",
    "chunk_size=64",  # the full gradient in 8 chunks, each minibatch's in 4, the last of both smaller
    "noise.enabled=true",
    f"noise.batch_size={B}",
    f"noise.samples={M}",
]


def per_sample_gradients(cfg: DictConfig, run_dir: Path) -> Tensor:
    """[N, P]: the gradient of each training sample's loss at the run's last weights, flattened as descent.noise
    flattens the parameters, by vmap over the module's own loss of one sample."""
    data, model = build(cfg)
    model.double().load_state_dict(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    net = model.net.eval()
    params = {name: p.detach() for name, p in net.named_parameters()}

    def loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return model.loss(functional_call(net, p, (x[None],)), y[None])

    images, labels = data.sets["train"]
    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, images.normalised().double(), labels)
    return torch.cat([grads[name].flatten(1) for name in params], dim=1)


def simulated_spread(deviations: Tensor, batch_size: int, draws_count: int, seed: int = 0) -> Tensor:
    """|g - G|^2 of `draws_count` minibatches drawn without replacement, from the per-sample deviations x_j - G:
    through their Gram matrix, |mean over S of d_j|^2 = 1_S^T K 1_S / b^2."""
    gram = deviations @ deviations.T
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.zeros(draws_count, len(deviations), dtype=torch.float64)
    for row in chosen:
        row[torch.randperm(len(deviations), generator=generator)[:batch_size]] = 1.0
    return ((chosen @ gram) * chosen).sum(1) / batch_size**2


def test_the_estimates_agree_with_exact_per_sample_gradients_within_their_sampling_error(
    make_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    cfg = make_cfg(*EXACT_NOISE)
    final = train(cfg)["final"]
    x = per_sample_gradients(cfg, tmp_path / "run")
    assert x.shape == (N, 7850)  # 784 inputs x 10 classes, and 10 biases
    full = x.mean(0)
    trace = (x - full).square().sum(1).mean().item()  # tr of the population covariance (1/N) sum (x_j - G)(.)^T
    squared_norm = full.square().sum().item()
    assert final["noise/grad_norm"] == pytest.approx(math.sqrt(squared_norm), rel=1e-10)  # G is exact

    # One draw's estimate Y = b (N - 1) / (N - B) |g - G|^2: its mean is tr(Sigma), its spread sets the bound.
    correction = B * (N - 1) / (N - B)
    single = correction * simulated_spread(x - full, B, 4000)
    bound = 5 * single.std().item() / math.sqrt(M)  # five standard errors of a mean of M draws
    assert abs(single.mean().item() - trace) < 5 * single.std().item() / math.sqrt(4000)  # the correction is right
    estimate = final["noise/trace_cov"]
    assert abs(estimate - trace) < bound, (estimate, trace, bound)
    # Sampling with replacement's factor b, without the finite-population correction, misses by far more.
    without_correction = estimate * (N - B) / (N - 1)
    assert abs(without_correction - trace) > bound, (without_correction, trace, bound)
    assert abs(final["noise/B_simple"] - trace / squared_norm) < bound / squared_norm
    assert final["noise/B_simple"] == pytest.approx(estimate / final["noise/grad_norm"] ** 2, rel=1e-12)
    print(
        f"|G| {math.sqrt(squared_norm):.6g} vs {final['noise/grad_norm']:.6g}; tr(Sigma) {trace:.6g} vs {estimate:.6g} "
        f"(bound {bound:.3g}, without correction {without_correction:.6g}); B_simple {trace / squared_norm:.6g} vs "
        f"{final['noise/B_simple']:.6g}"
    )


def test_draws_are_fresh_each_epoch_and_the_same_again_for_the_same_seed_and_epoch() -> None:
    """What a resumed run relies on; ranks do not enter at all."""
    first = draws(seed=3, epoch=1, n=N, batch_size=50, samples=4)
    assert all(torch.equal(a, b) for a, b in zip(first, draws(3, 1, N, 50, 4), strict=True))
    assert not torch.equal(first[0], draws(3, 2, N, 50, 4)[0])
    assert not torch.equal(first[0], draws(4, 1, N, 50, 4)[0])
    for rows in first:  # each a draw without replacement from the N
        assert len(rows.unique()) == 50 and rows.min() >= 0 and rows.max() < N
    assert not torch.equal(first[0], first[1])


def test_a_minibatch_as_large_as_the_training_set_is_refused(make_cfg: Callable[..., DictConfig]) -> None:
    with pytest.raises(DescentError, match=f"noise.batch_size={N} must be smaller than the N={N} training samples"):
        train(make_cfg("noise.enabled=true", f"noise.batch_size={N}", "logger=none"))


@pytest.mark.slow
def test_two_ddp_ranks_measure_what_one_process_does(
    make_cfg: Callable[..., DictConfig], ddp_runs: dict[str, Path]
) -> None:
    """B = 45 over chunks of 33 on 2 ranks: shares of 22 and 23, the second cut in two; the draws are the same
    (ddp_runs.DDP_RUNS["noise"], the same overrides in one process)."""
    from ddp_runs import DDP_RUNS

    alone = train(make_cfg(*DDP_RUNS["noise"]))["history"]
    ranks = json.loads((ddp_runs["noise"] / "metrics.json").read_text())["history"]
    assert len(ranks) == len(alone) == 2
    for one, two in zip(alone, ranks, strict=True):
        for key in results.NOISE:
            assert two[key] == pytest.approx(one[key], rel=1e-9), key


def train_into(make_cfg: Callable[..., DictConfig], run_dir: Path, *overrides: str) -> dict:
    """A run as a sweep job: its overrides saved where Hydra saves them, for the summary to read."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
    train(make_cfg(*overrides, run_dir=run_dir))
    return json.loads((run_dir / "metrics.json").read_text())


def test_off_by_default_and_on_in_metrics_json_tensorboard_and_the_sweep_summary(
    make_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    off = train_into(make_cfg, tmp_path / "off" / "job", "seed=0")
    assert not any(key.startswith("noise/") for row in off["history"] for key in row)
    write_summary(tmp_path / "off")
    assert "noise/" not in (tmp_path / "off" / "summary.csv").read_text()
    assert "noise/" not in (tmp_path / "off" / "summary.md").read_text()

    on = train_into(make_cfg, tmp_path / "on" / "job", "seed=0", "noise.enabled=true")
    assert len(on["history"]) == 2
    for row in on["history"]:
        assert all(math.isfinite(row[key]) and row[key] > 0 for key in results.NOISE)
    for row_off, row_on in zip(off["history"], on["history"], strict=True):  # measuring changes nothing of training
        assert {k: v for k, v in row_on.items() if not k.startswith(("noise/", "time/"))} == {
            k: v for k, v in row_off.items() if not k.startswith("time/")
        }
    logged = scalars(tmp_path / "on" / "job")
    for key in results.NOISE:
        assert logged[key] == pytest.approx([row[key] for row in on["history"]], rel=1e-6)

    (tmp_path / "off" / "job").rename(tmp_path / "on" / "plain")  # a run without the figures, in the same sweep
    write_summary(tmp_path / "on")
    with open(tmp_path / "on" / "summary.csv", newline="") as file:
        rows = {row["run"]: row for row in csv.DictReader(file) if row["row"] == "run"}
    for key in results.NOISE:
        assert float(rows["job"][f"final {key}"]) == on["final"][key]
        assert rows["plain"][f"final {key}"] == "nan"
    markdown = (tmp_path / "on" / "summary.md").read_text().splitlines()
    assert any("| final noise/grad_norm | final noise/trace_cov | final noise/B_simple |" in line for line in markdown)
    (job_line,) = [line for line in markdown if line.startswith("| `job` |")]
    (plain_line,) = [line for line in markdown if line.startswith("| `plain` |")]
    assert job_line.endswith(f"| {on['final']['noise/B_simple']:.4g} |")
    assert plain_line.endswith("| n/a | n/a | n/a |")
