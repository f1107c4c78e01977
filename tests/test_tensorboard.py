"""What TensorBoard shows of a run, read back with TensorBoard's own reader."""

import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers import events as read_events
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from descent.tensorboard import confusion_matrix
from descent.training import train


def test_hparams_tab_lists_the_settings_with_real_final_and_best_figures(make_cfg, tmp_path: Path) -> None:
    result = train(make_cfg("optimizer=momentum", "batch_size=50", "seed=3"))
    events = read_events(tmp_path / "run")
    plugin = {
        tag: plugin_data_pb2.HParamsPluginData.FromString(content)
        for tag, content in events.PluginTagToContent("hparams").items()
    }
    session = next(data.session_start_info for tag, data in plugin.items() if tag.endswith("session_start_info"))
    assert session.hparams["optimizer"].string_value == "sgd"
    assert session.hparams["momentum"].number_value == pytest.approx(0.9)
    assert session.hparams["batch_size"].number_value == 50
    assert session.hparams["net"].string_value == "MLP"
    assert session.hparams["net.hidden"].string_value == "[32]"
    assert session.hparams["net.activation"].string_value == "relu"
    assert session.hparams["seed"].number_value == 3
    assert session.hparams["data"].string_value == "FashionMNIST"  # the default, on the test's own files
    experiment = next(data.experiment for tag, data in plugin.items() if tag.endswith("experiment"))
    metric_tags = {info.name.tag for info in experiment.metric_infos}
    assert "hp_metric" not in metric_tags
    for label in ("final", "best"):
        for key in ("test/error", "test/loss", "train/loss", "gap/error"):
            tag = f"hparams/{label}_{key.replace('/', '_')}"
            assert tag in metric_tags
            assert events.Scalars(tag)[-1].value == pytest.approx(result[label][key], rel=1e-6)


def custom_charts(run_dir: Path) -> dict[str, dict[str, list[str]]]:
    """The CUSTOM SCALARS layout a run wrote: each section's charts and their tags."""
    events = read_events(run_dir)
    (tag,) = events.PluginTagToContent("custom_scalars")
    layout = layout_pb2.Layout.FromString(events.Tensors(tag)[0].tensor_proto.string_val[0])
    return {
        category.title: {chart.title: list(chart.multiline.tag) for chart in category.chart}
        for category in layout.category
    }


def test_custom_scalars_put_train_and_test_in_one_chart(make_cfg, tmp_path: Path) -> None:
    """And nothing else in a run that measures neither curvature nor gradient flow: no section of empty charts."""
    train(make_cfg("max_epochs=1"))
    assert custom_charts(tmp_path / "run") == {
        "train against test": {
            "loss": ["train/loss", "val/loss", "test/loss"],
            "error": ["train/error", "val/error", "test/error"],
        }
    }


SHARPNESS_CHART = {"sharpness against 2 / lr": ["curvature/sharpness", "curvature/2_over_lr"]}
FLOW_CHART = {"gradient norm of each layer": ["flow/grad_norm/.*"]}


@pytest.mark.parametrize(
    ("measured", "expected"),
    [
        (["curvature.enabled=true", "curvature.iterations=3"], SHARPNESS_CHART),
        (["gradient_flow.enabled=true"], FLOW_CHART),
        (["curvature.enabled=true", "curvature.iterations=3", "gradient_flow.enabled=true"],
         SHARPNESS_CHART | FLOW_CHART),
    ],
    ids=["curvature", "gradient_flow", "both"],
)  # fmt: skip
def test_custom_scalars_chart_curvature_and_gradient_flow_only_when_measured(
    make_cfg, tmp_path: Path, measured: list[str], expected: dict[str, list[str]]
) -> None:
    train(make_cfg("max_epochs=1", *measured))
    charts = custom_charts(tmp_path / "run")
    assert list(charts) == ["train against test", "curvature and gradient flow"]
    assert charts["curvature and gradient flow"] == expected
    logged = read_events(tmp_path / "run").Tags()["scalars"]
    for tags in expected.values():  # every chart shown matches tags the run wrote
        assert all(any(re.fullmatch(tag, name) for name in logged) for tag in tags)


def test_misclassified_images_every_n_epochs_and_a_confusion_matrix_at_the_end(make_cfg, tmp_path: Path) -> None:
    train(make_cfg("max_epochs=3", "logger.tensorboard.image_every_n_epochs=2"))
    events = read_events(tmp_path / "run", images=0)
    grids = events.Images("misclassified test images")
    assert [image.step for image in grids] == [2, 3]  # every 2 epochs, and the last
    (matrix,) = events.Images("confusion matrix (test)")
    assert matrix.step == 3
    for image in [*grids, matrix]:
        assert image.encoded_image_string.startswith(b"\x89PNG") and image.width > 200 and image.height > 200
    assert "histograms" not in events.Tags() or events.Tags()["histograms"] == []


def test_no_images_when_switched_off(make_cfg, tmp_path: Path) -> None:
    train(make_cfg("max_epochs=1", "logger.tensorboard.image_every_n_epochs=0"))
    assert read_events(tmp_path / "run").Tags()["images"] == ["confusion matrix (test)"]


def test_weight_and_gradient_histograms_per_layer_when_asked(make_cfg, tmp_path: Path) -> None:
    train(make_cfg("logger.tensorboard.histograms=true", "model.net.hidden=[16,8]"))
    histograms = read_events(tmp_path / "run").Tags()["histograms"]
    for kind in ("weights", "gradients"):
        for layer in ("0", "2", "4"):  # the Linear layers of nn.Sequential
            for name in ("weight", "bias"):
                assert f"{kind}/{layer}.{name}" in histograms
    events = read_events(tmp_path / "run", histograms=0)
    gradients = events.Histograms("gradients/0.weight")
    assert [event.step for event in gradients] == [1, 2]
    # A real gradient: spread over many values, not a constant, and changing between epochs.
    assert all(event.histogram_value.max > event.histogram_value.min for event in gradients)
    assert gradients[0].histogram_value.sum_squares != gradients[1].histogram_value.sum_squares


def test_confusion_matrix_counts_true_by_predicted() -> None:
    true = torch.tensor([0, 0, 1, 2, 2, 2])
    predicted = torch.tensor([0, 1, 1, 2, 0, 2])
    assert confusion_matrix(predicted, true, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_the_tensorboard_server_serves_the_runs_and_their_scalars(make_cfg, tmp_path: Path) -> None:
    result = train(make_cfg())
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "tensorboard"),
            "--logdir",
            str(tmp_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/data"
    try:
        deadline = time.monotonic() + 90
        runs: list[str] = []
        while "run" not in runs:  # the server reads the event files in the background after it starts
            assert time.monotonic() < deadline, "tensorboard listed no run within 90 s"
            time.sleep(0.5)
            try:
                runs = json.load(urllib.request.urlopen(f"{base}/runs", timeout=5))
            except OSError:
                continue
        query = urllib.parse.urlencode({"run": "run", "tag": "test/loss"})
        points = json.load(urllib.request.urlopen(f"{base}/plugin/scalars/scalars?{query}", timeout=10))
        assert [step for _, step, _ in points] == [1, 2]
        assert [value for _, _, value in points] == pytest.approx(
            [row["test/loss"] for row in result["history"]], rel=1e-6
        )
        tags = json.load(urllib.request.urlopen(f"{base}/plugin/scalars/tags", timeout=10))
        assert {"train/loss", "test/loss", "train/error", "test/error", "progress/lr"} <= set(tags["run"])
    finally:
        server.terminate()
        server.wait(timeout=30)
