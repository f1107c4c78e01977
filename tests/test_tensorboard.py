"""What TensorBoard shows of a run, read back with TensorBoard's own reader."""

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from descent.training import train


def read(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return events


def test_hparams_tab_lists_the_settings_with_real_final_and_best_figures(make_cfg, tmp_path: Path) -> None:
    result = train(make_cfg("optimizer=momentum", "batch_size=50", "seed=3"))
    events = read(tmp_path / "run")
    plugin = {
        tag: plugin_data_pb2.HParamsPluginData.FromString(content)
        for tag, content in events.PluginTagToContent("hparams").items()
    }
    session = next(data.session_start_info for tag, data in plugin.items() if tag.endswith("session_start_info"))
    assert session.hparams["optimizer"].string_value == "sgd"
    assert session.hparams["momentum"].number_value == pytest.approx(0.9)
    assert session.hparams["batch_size"].number_value == 50
    assert session.hparams["hidden"].string_value == "[32]"
    assert session.hparams["seed"].number_value == 3
    assert session.hparams["data"].string_value == "MNIST"
    experiment = next(data.experiment for tag, data in plugin.items() if tag.endswith("experiment"))
    metric_tags = {info.name.tag for info in experiment.metric_infos}
    assert "hp_metric" not in metric_tags
    for label in ("final", "best"):
        for key in ("test/error", "test/loss", "train/loss", "gap/error"):
            tag = f"hparams/{label}_{key.replace('/', '_')}"
            assert tag in metric_tags
            assert events.Scalars(tag)[-1].value == pytest.approx(result[label][key], rel=1e-6)


def test_custom_scalars_put_train_and_test_in_one_chart(make_cfg, tmp_path: Path) -> None:
    train(make_cfg("max_epochs=1"))
    events = read(tmp_path / "run")
    (tag,) = events.PluginTagToContent("custom_scalars")
    layout = layout_pb2.Layout.FromString(events.Tensors(tag)[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert charts == {
        "loss": ["train/loss", "val/loss", "test/loss"],
        "error": ["train/error", "val/error", "test/error"],
    }
