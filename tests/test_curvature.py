"""The sharpness (top Hessian eigenvalues by Lanczos on exact Hessian-vector products) against the exact Hessian of
a small network by torch.func.hessian in float64, the same in chunks and on two DDP processes; the per-layer
gradient flow against autograd's full-batch gradient."""

import json
from pathlib import Path

import lightning
import pytest
import torch
import torch.nn.functional as F
from ddp_runs import CURVATURE_DATA
from helpers import compose_train_small
from torch.func import functional_call, hessian

from descent.training import build, train

SMALL = CURVATURE_DATA
"""An MLP 16-3-10 (91 parameters) on 250 training samples, in float64: small enough for the exact Hessian (defined
in ddp_runs.py, whose DDP run measures it on two ranks)."""
CURVATURE = ["curvature.enabled=true", "curvature.eigenvalues=2", "curvature.iterations=40"]


def exact_hessian_eigenvalues(make_cfg, run_dir: Path, *overrides: str) -> torch.Tensor:
    """The eigenvalues, highest first, of the Hessian of the mean training loss at last.ckpt's weights."""
    cfg = make_cfg(*SMALL, *overrides)
    lightning.seed_everything(cfg.seed, verbose=False)
    data, model = build(cfg)
    net = model.net.double()
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    net.load_state_dict({key.removeprefix("net."): value for key, value in state.items()})
    net.eval()
    images, y = data.sets["train"]
    x = images.normalised().double()
    names = [name for name, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params = dict(
            zip(
                names,
                (
                    piece.view(shape)
                    for piece, shape in zip(theta.split([s.numel() for s in shapes]), shapes, strict=True)
                ),
                strict=True,
            )
        )
        return F.cross_entropy(functional_call(net, params, (x,)), y)  # fmt: skip

    return torch.linalg.eigvalsh(hessian(loss)(flat)).flip(0)


@pytest.mark.parametrize("iterations", [91, 30])
def test_sharpness_equals_the_exact_hessians_top_eigenvalues(make_cfg, tmp_path: Path, iterations: int) -> None:
    """91 Lanczos steps span the whole space: every eigenvalue is exact; 30 already give the top three to 1e-8."""
    curvature = ["curvature.enabled=true", "curvature.eigenvalues=3", f"curvature.iterations={iterations}"]
    final = train(make_cfg(*SMALL, *curvature, "chunk_size=64"))["final"]
    exact = exact_hessian_eigenvalues(make_cfg, tmp_path / "run")
    measured = [final["curvature/sharpness"], final["curvature/eig_2"], final["curvature/eig_3"]]
    assert measured == pytest.approx(exact[:3].tolist(), rel=1e-8)
    assert exact[0] > exact[1] > 0  # a top eigenvalue set apart: the test is of the top, not of a tie
    assert final["curvature/2_over_lr"] == 2 / 0.5


@pytest.fixture(scope="module")
def whole(idx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The history of the run that measures the sharpness in one chunk: what chunks and ranks must give."""
    run_dir = tmp_path_factory.mktemp("whole")
    cfg = compose_train_small(*SMALL, *CURVATURE, "chunk_size=full", idx_dir=idx_dir, run_dir=run_dir)
    return train(cfg)["history"]


def test_sharpness_in_chunks_equals_one_chunk(make_cfg, whole: list[dict]) -> None:
    chunked = train(make_cfg(*SMALL, *CURVATURE, "chunk_size=7"))["history"]
    for key in ("curvature/sharpness", "curvature/eig_2"):
        assert len(whole) == 2 and whole[0][key] != whole[1][key]  # measured at each epoch's own weights
        assert [row[key] for row in chunked] == pytest.approx([row[key] for row in whole], rel=1e-9)


@pytest.mark.slow
def test_sharpness_on_two_ddp_processes_equals_one_chunk(whole: list[dict], ddp_runs: dict[str, Path]) -> None:
    """Chunks of 33 on each rank: ddp_runs.DDP_RUNS["curvature"], SMALL and CURVATURE."""
    ddp = json.loads((ddp_runs["curvature"] / "metrics.json").read_text())["history"]
    for key in ("curvature/sharpness", "curvature/eig_2"):
        assert len(whole) == 2 and whole[0][key] != whole[1][key]
        assert [row[key] for row in ddp] == pytest.approx([row[key] for row in whole], rel=1e-9)


def test_gradient_flow_is_each_layers_full_batch_gradient_and_weight_norm(make_cfg, tmp_path: Path) -> None:
    final = train(make_cfg(*SMALL, "gradient_flow.enabled=true", "chunk_size=7", "model.net.hidden=[6,5]"))["final"]
    cfg = make_cfg(*SMALL, "model.net.hidden=[6,5]")
    lightning.seed_everything(cfg.seed, verbose=False)
    data, model = build(cfg)
    net = model.net.double()
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    net.load_state_dict({key.removeprefix("net."): value for key, value in state.items()})
    images, y = data.sets["train"]
    F.cross_entropy(net(images.normalised().double()), y).backward()
    weights = [layer.weight for layer in net if isinstance(layer, torch.nn.Linear)]
    assert [w.shape[1] for w in weights] == [16, 6, 5]  # depth 1 is the layer at the input
    for depth, weight in enumerate(weights, start=1):
        assert final[f"flow/grad_norm/{depth}"] == pytest.approx(float(weight.grad.norm()), rel=1e-9)
        assert final[f"flow/weight_norm/{depth}"] == pytest.approx(float(weight.detach().norm()), rel=1e-12)
        ratio = final[f"flow/grad_norm/{depth}"] / final[f"flow/weight_norm/{depth}"]
        assert final[f"flow/ratio/{depth}"] == pytest.approx(ratio)
    assert f"flow/grad_norm/{len(weights) + 1}" not in final


def test_tensorboard_charts_sharpness_beside_2_over_lr_and_the_norm_against_depth(make_cfg, tmp_path: Path) -> None:
    from helpers import events, scalars

    measured = ["curvature.enabled=true", "gradient_flow.enabled=true", "logger=tensorboard"]
    history = train(make_cfg(*[o for o in SMALL if o != "logger=none"], *measured))["history"]
    logged = scalars(tmp_path / "run")
    for key in ("curvature/sharpness", "curvature/2_over_lr", "flow/grad_norm/1", "flow/ratio/2"):
        assert logged[key] == pytest.approx([row[key] for row in history], rel=1e-6)
    pictures = events(tmp_path / "run", images=0).Images("gradient norm against depth")
    assert [picture.step for picture in pictures] == [1, 2]


def test_the_report_draws_sharpness_against_2_over_lr_and_the_norm_against_depth(make_cfg, tmp_path: Path) -> None:
    from descent.report import write_report

    for lr in (0.5, 2.0):
        measured = ["curvature.enabled=true", "gradient_flow.enabled=true", f"optimizer.lr={lr}", "max_epochs=3"]
        train(make_cfg(*SMALL, *measured, run_dir=tmp_path / "sweep" / f"lr:{lr}"))
    markdown = write_report(tmp_path / "sweep")
    assert (tmp_path / "sweep" / "curvature.png").is_file() and (tmp_path / "sweep" / "gradient_flow.png").is_file()
    table = markdown[markdown.index("## Sharpness against 2 / lr") : markdown.index("![sharpness")]
    rows = {line.split("|")[1].strip(" `"): line for line in table.splitlines() if line.startswith("| `lr:")}
    for lr in (0.5, 2.0):
        history = json.loads((tmp_path / "sweep" / f"lr:{lr}" / "metrics.json").read_text())["history"]
        sharpness = [row["curvature/sharpness"] for row in history]
        first = next((str(int(row["progress/steps"])) for row in history if row["curvature/sharpness"] >= 2 / lr), None)
        cells = [cell.strip() for cell in rows[f"lr:{lr}"].split("|")[2:-1]]
        expected = [f"{lr:g}", f"{2 / lr:.1f}", f"{sharpness[0]:.2f}", f"{max(sharpness):.2f}", f"{sharpness[-1]:.2f}"]
        assert cells[:6] == [*expected, first or "not reached"]
    assert "## Gradient norm by layer" in markdown
