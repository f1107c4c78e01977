"""Every option of every config group composes and instantiates; the README's table of groups names only files that
exist.

The options are those of conf/ and of a fork's own dir after it on Hydra's search path (`DESCENT_CONF=<dir>`: the
dir it gives `src/train.py` as `-cd`), so a user's own files are tested as the template's are. Where a test swaps the
data a yaml names for its small stand-in files, the yaml's subset (`data.train_size`) is made to fit them."""

import warnings
from pathlib import Path

import lightning
import pytest
import torch
from helpers import CONF_DIRS, ROOT, compose_config, compose_train, conf_file, options, searchpath
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from descent.config import check_config
from descent.data import ImageData
from descent.errors import DescentError
from descent.loggers import build_loggers
from descent.module import Classifier
from descent.training import build


def on_stand_in(cfg: DictConfig) -> DictConfig:
    """The test's small files (make_cfg's) for a data set read from files: never the system's copy, and a subset of
    100 where the yaml asks for one, which the stand-in's 500 training samples may be too few for."""
    if "system_dir" in cfg.data:
        cfg.data.system_dir = None
    if "data_dir" in cfg.data and cfg.data.get("train_size"):
        cfg.data.train_size = 100
    return cfg


def test_groups_have_the_options_the_readme_promises() -> None:
    assert {"mnist", "fashion_mnist", "synthetic"} <= set(options("data"))
    assert {"sgd", "gd", "momentum", "adam"} <= set(options("optimizer"))
    assert {"default", "cpu", "gpu", "mps", "ddp", "ddp_cpu"} <= set(options("trainer"))
    assert {"tensorboard", "csv", "mlflow", "wandb", "none"} <= set(options("logger"))


# These need their own generated files, and are built and trained on them in tests/test_imagenet.py.
STREAMED_DATA = {"imagenet32", "imagenet64", "imagefolder"}


@pytest.mark.parametrize("data", sorted(set(options("data")) - STREAMED_DATA))
def test_data_option_instantiates_and_loads(make_cfg, data: str, tmp_path: Path) -> None:
    cfg = on_stand_in(make_cfg(f"data={data}"))
    module, model = build(cfg)
    assert isinstance(module, ImageData) and isinstance(model, Classifier)
    images, y = module.sets["train"]
    x = images.normalised()
    assert x.shape[1:] == module.input_shape and len(module.input_shape) == 3  # [C, H, W], whatever the data
    assert model(x[:4]).shape == (4, module.num_classes)  # the network was sized by the data it got
    assert int(y.min()) >= 0 and int(y.max()) < module.num_classes
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2  # normalised once, on the train split


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_optimizer_and_scheduler_options_instantiate(make_cfg, optimizer: str, scheduler: str) -> None:
    cfg = make_cfg(f"optimizer={optimizer}", f"scheduler={scheduler}", "data=synthetic")
    check_config(cfg)
    _, model = build(cfg)
    configured = model.configure_optimizers()
    optim = configured["optimizer"] if isinstance(configured, dict) else configured
    assert isinstance(optim, torch.optim.Optimizer)
    assert optim.param_groups[0]["lr"] == cfg.optimizer.lr
    assert (scheduler != "none") == isinstance(configured, dict)
    assert cfg.full_batch == (optimizer in ("gd", "lbfgs"))  # full-batch methods


@pytest.fixture
def in_a_run_s_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working dir holding logs/, as train.py's run dir under logs/ makes it: MLflow's SQLite store goes there, not
    into the repository's logs/ (which a fresh clone does not have yet)."""
    (tmp_path / "logs").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("logger", options("logger"))
def test_logger_options_instantiate(make_cfg, logger: str, in_a_run_s_cwd: Path) -> None:
    """Each option alone (a run's files in its run dir; MLflow's store under logs/), and all at once."""
    cfg = make_cfg(f"logger={logger}")
    built = build_loggers(cfg)
    assert [type(one).__name__ for one in built] == ([] if logger == "none" else [logger_class(cfg.logger[logger])])
    for one in built:
        if logger == "mlflow":
            assert one._tracking_uri == "sqlite:///logs/mlflow.db" and one._run_name == cfg.run_dir
        else:
            assert Path(one.save_dir) == Path(cfg.run_dir)


def logger_class(node) -> str:
    return node._target_.rsplit(".", 1)[-1]


def test_several_loggers_at_once(make_cfg, in_a_run_s_cwd: Path) -> None:
    every = [name for name in options("logger") if name != "none"]
    cfg = make_cfg(f"logger=[{','.join(every)}]")
    assert [type(one).__name__ for one in build_loggers(cfg)] == [logger_class(cfg.logger[name]) for name in every]


HARDWARE = {
    "gpu": torch.cuda.is_available(),
    "ddp": torch.cuda.is_available(),
    "slurm": torch.cuda.is_available(),
    "mps": torch.backends.mps.is_available(),
}


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_options_instantiate_or_say_the_hardware_is_missing(make_cfg, trainer: str) -> None:
    cfg = make_cfg(f"trainer={trainer}")
    if HARDWARE.get(trainer, True):
        check_config(cfg)
        built = instantiate(cfg.trainer)
        assert isinstance(built, lightning.Trainer)
        assert built.max_epochs == cfg.max_epochs
        if trainer in ("default", "cpu", "gpu", "mps"):
            assert built.num_devices == 1  # never DDP unless asked
    else:
        with pytest.raises(DescentError, match=f"trainer.accelerator={cfg.trainer.accelerator} .* use trainer=cpu"):
            check_config(cfg)


@pytest.mark.parametrize("method", options("method"))
def test_method_options_set_optimizer_batch_size_and_rate(make_cfg, method: str) -> None:
    cfg = make_cfg(f"method={method}", "data=synthetic")
    check_config(cfg)
    data, model = build(cfg)
    assert cfg.full_batch == (method in ("gd", "lbfgs"))
    expected_batch = data.num_train if cfg.full_batch else int(method.removeprefix("sgd_b"))
    assert data.samples_per_step == expected_batch
    assert model.configure_optimizers().param_groups[0]["lr"] == cfg.optimizer.lr


def test_gd_vs_sgd_experiment_composes_and_sweeps_known_methods(make_cfg) -> None:
    cfg = make_cfg("experiment=gd_vs_sgd")
    check_config(cfg)
    assert cfg.data._target_ == "descent.data.idx.IdxData"
    hydra_cfg = compose_config("train", "experiment=gd_vs_sgd", return_hydra_config=True).hydra
    swept = hydra_cfg.sweeper.params.method.split(",")
    assert set(swept) <= set(options("method")) and "gd" in swept


SGD_RECIPE = {
    "hidden": [1024, 512],
    "dropout": 0.3,
    "optimizer": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0005},
    "scheduler": "torch.optim.lr_scheduler.CosineAnnealingLR",
    "batch_size": 128,
    "max_epochs": 30,
}
RESULTS_EXPERIMENTS = {
    "fashion_mnist_mlp": {"dataset": "FashionMNIST", **SGD_RECIPE},
    "mnist_mlp": {"dataset": "MNIST", **SGD_RECIPE},
    "fashion_mnist_gd": {
        "dataset": "FashionMNIST",
        "hidden": [1024, 512],
        "dropout": 0.0,
        "optimizer": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
        "scheduler": None,
        "batch_size": "full",
        "max_epochs": 60,
    },
}
"""The settings that "Results against the published tables" (docs/studies.md) states for each row: change both
together."""


@pytest.mark.parametrize("experiment", sorted(RESULTS_EXPERIMENTS))
def test_results_experiments_fix_the_settings_the_readme_states(make_cfg, experiment: str) -> None:
    recipe = RESULTS_EXPERIMENTS[experiment]
    composed = compose_train(f"experiment={experiment}")
    # As the user's command composes it, before the test's small overrides: seed and settings come from the file.
    assert composed.seed == 0
    assert composed.data.dataset == recipe["dataset"]
    assert list(composed.model.net.hidden) == recipe["hidden"]
    assert composed.model.net.activation == "relu" and composed.model.net.dropout == recipe["dropout"]
    assert composed.optimizer._target_ == "torch.optim.SGD"
    assert {key: composed.optimizer[key] for key in recipe["optimizer"]} == recipe["optimizer"]
    if recipe["scheduler"] is None:
        assert composed.scheduler is None
    else:  # decays over the whole run, whatever max_epochs is
        assert composed.scheduler._target_ == recipe["scheduler"] and composed.scheduler.T_max == recipe["max_epochs"]
    assert composed.batch_size == recipe["batch_size"] and composed.max_epochs == recipe["max_epochs"]
    assert composed.full_batch == (recipe["batch_size"] == "full")

    # And it builds on the test's small files, with the real widths (the test's overrides would set model.hidden).
    cfg = on_stand_in(make_cfg(f"experiment={experiment}", f"model.net.hidden={recipe['hidden']}"))
    check_config(cfg)
    data, model = build(cfg)
    assert data.samples_per_step == (data.num_train if recipe["batch_size"] == "full" else recipe["batch_size"])
    assert [layer.out_features for layer in model.net if isinstance(layer, torch.nn.Linear)] == [*recipe["hidden"], 10]
    configured = model.configure_optimizers()
    optimizer = configured if recipe["scheduler"] is None else configured["optimizer"]
    assert optimizer.param_groups[0]["momentum"] == recipe["optimizer"]["momentum"]
    if recipe["scheduler"] is not None:
        assert isinstance(configured["lr_scheduler"], torch.optim.lr_scheduler.CosineAnnealingLR)


def searched_network(model: str) -> dict[str, str]:
    """What a search varies of `model`'s network (conf/search_space/optuna_<model>.yaml, if the network has one),
    each key with the first value a trial may take."""
    path = conf_file(f"search_space/optuna_{model}.yaml")
    if not path.is_file():
        return {}
    params = OmegaConf.load(path).hydra.sweeper.params
    return {key: str(value).partition("choice(")[2].split(",")[0].strip(" )") for key, value in params.items()}


@pytest.mark.parametrize("search", options("hparams_search"))
@pytest.mark.parametrize("model", options("model"))
def test_hparams_search_options_search_keys_that_exist(make_cfg, search: str, model: str) -> None:
    trial = searched_network(model)
    cfg = make_cfg(f"hparams_search={search}", f"model={model}", "data=synthetic")
    check_config(cfg)
    plain = compose_train(f"hparams_search={search}", f"model={model}")
    overrides = [f"hparams_search={search}", f"model={model}", *(f"{k}={v}" for k, v in trial.items())]
    composed = compose_config("train", *overrides, return_hydra_config=True)
    hydra_cfg = composed.hydra
    assert "Optuna" in hydra_cfg.sweeper._target_
    searched = set(hydra_cfg.sweeper.params)
    assert searched == {"optimizer.lr", "batch_size", "optimizer.weight_decay", *trial}
    for key in searched:  # a key missing from the config would fail every trial
        assert OmegaConf.select(cfg, key) is not None
    net = OmegaConf.to_container(composed.model.net, resolve=True)
    if trial and any(str(OmegaConf.select(plain, key)) != value for key, value in trial.items()):
        assert net != OmegaConf.to_container(plain.model.net, resolve=True)  # the trial's values reach the network
    build(cfg)


@pytest.mark.parametrize(
    ("monitor", "metrics"),
    [("val/accuracy", "none"), ("val/macro_f1", "none"), ("valid/error", "none"), ("val/f1", "[macro_f1]")],
)
def test_monitor_must_be_a_figure_with_a_direction(make_cfg, monitor: str, metrics: str) -> None:
    allowed = "train/loss, train/error, train/acc"
    with pytest.raises(DescentError, match=f"monitor='{monitor}' is not allowed: .* {allowed}"):
        check_config(make_cfg(f"monitor={monitor}", f"metrics={metrics}"))


@pytest.mark.parametrize(("monitor", "metrics"), [("test/acc", "none"), ("test/macro_f1", "[macro_f1]")])
def test_a_test_set_figure_is_refused_as_monitor_naming_its_validation_twin(
    make_cfg, monitor: str, metrics: str
) -> None:
    twin = monitor.replace("test/", "val/")
    with pytest.raises(DescentError, match=f"monitor='{monitor}' selects on the test set.*monitor={twin}$"):
        check_config(make_cfg(f"monitor={monitor}", f"metrics={metrics}"))
    check_config(make_cfg(f"monitor={twin}", f"metrics={metrics}"))  # the remedy is accepted


def test_a_metric_whose_class_states_no_direction_cannot_be_monitor(make_cfg) -> None:
    cfg = make_cfg("+metrics.mean_logit._target_=torchmetrics.aggregation.MeanMetric", "monitor=val/mean_logit")
    with pytest.raises(DescentError, match="monitor='val/mean_logit' is not allowed: .*states higher_is_better"):
        check_config(cfg)


def test_image_every_n_epochs_must_be_a_whole_number(make_cfg) -> None:
    with pytest.raises(InstantiationException) as raised:  # Hydra wraps what a constructor raises
        instantiate(make_cfg("logger.tensorboard.image_every_n_epochs=-1").logger.tensorboard)
    assert isinstance(raised.value.__cause__, DescentError)
    assert "logger.tensorboard.image_every_n_epochs=-1 is not allowed" in str(raised.value.__cause__)


@pytest.mark.parametrize("model", options("model"))
def test_model_options_build_their_network_for_the_data_shape(make_cfg, model: str) -> None:
    cfg = make_cfg(f"model={model}", "data=synthetic", "data.image_shape=[1,28,28]")
    check_config(cfg)
    data, built = build(cfg)
    assert isinstance(built, Classifier)
    logits = built(data.sets["test"][0].normalised(slice(0, 5)))
    assert logits.shape == (5, data.num_classes)


def test_a_network_setting_it_does_not_take_is_refused_before_data(make_cfg) -> None:
    cfg = make_cfg("model=cnn", "+model.net.dropout=0.5", "data.data_dir=/nonexistent")
    message = r"model.net: got an unexpected keyword argument 'dropout' \(descent.nets.LeNet takes"
    with pytest.raises(DescentError, match=message):
        check_config(cfg)


def test_a_key_a_config_file_sets_that_its_class_does_not_take_is_refused(make_cfg, tmp_path: Path) -> None:
    """A typo in a yaml of one's own, which the command line's check never sees: one line naming the key, the class
    and its nearest argument (or, with none near, what it takes), before any data is loaded; not a traceback once
    the optimizer is built, nor a setting dropped."""
    own = tmp_path / "own"
    (own / "optimizer").mkdir(parents=True)
    (own / "optimizer" / "mine.yaml").write_text("_target_: torch.optim.SGD\n_partial_: true\nlr: 0.1\nlrr: 0.2\n")
    (own / "callbacks").mkdir()
    (own / "callbacks" / "mine.yaml").write_text(
        "early_stopping:\n  _target_: lightning.pytorch.callbacks.EarlyStopping\n  monitor: val/error\n  quiet: true\n"
    )
    own_dir = searchpath(own)
    refused = {
        "optimizer=mine": "optimizer.lrr is set in a config file, but torch.optim.SGD takes no lrr: did you mean "
        "optimizer.lr?",
        "callbacks=mine": "callbacks.early_stopping.quiet is set in a config file, but "
        "lightning.pytorch.callbacks.EarlyStopping takes no quiet: it takes check_finite, check_on_train_epoch_end,",
    }
    for choice, message in refused.items():
        with pytest.raises(DescentError) as error:
            check_config(make_cfg(own_dir, choice, "data.data_dir=/nonexistent"))
        assert str(error.value).startswith(message)


KWARGS_TAKEN = """\
# @package _global_
trainer:
  strategy:
    _target_: lightning.pytorch.strategies.DDPStrategy
    find_unused_parameters: true
  profiler:
    _target_: lightning.pytorch.profilers.PyTorchProfiler
    profile_memory: true
logger:
  tensorboard:
    flush_secs: 30
metrics:
  f1:
    _target_: torchmetrics.classification.MulticlassF1Score
    sync_on_compute: false
  acc:
    _target_: torchmetrics.Accuracy
    task: multiclass
"""
"""Keys that classes taking **kwargs keep or pass on (a DDP strategy's, a profiler's, a logger's, torchmetrics'),
and a class built by `__new__` (torchmetrics' task wrapper): all of them work, so none may be refused."""


def test_keys_of_classes_that_take_any_are_accepted_from_config_files(make_cfg, tmp_path: Path) -> None:
    own = tmp_path / "own"
    (own / "experiment").mkdir(parents=True)
    (own / "experiment" / "kwargs.yaml").write_text(KWARGS_TAKEN)
    cfg = make_cfg(searchpath(own), "experiment=kwargs", "data.data_dir=/nonexistent")
    assert cfg.trainer.strategy.find_unused_parameters and cfg.metrics.acc.task == "multiclass"
    check_config(cfg)


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (
            "{_target_: lightning.pytorch.plugins.precision.MixedPrecision, precision: bf16-mixed, device: cpu}",
            "trainer.plugins: lightning.pytorch.plugins.precision.MixedPrecision is a precision plugin, and "
            "trainer.precision=32-true sets one too: Lightning takes one of them; give trainer.precision=null to use "
            "the plugin",
        ),
        (
            "[{_target_: lightning.pytorch.plugins.io.TorchCheckpointIO}]",
            "trainer.plugins: lightning.pytorch.plugins.io.TorchCheckpointIO is a CheckpointIO, and descent writes "
            "checkpoints with its own (atomically, in the background); drop it",
        ),
    ],
    ids=["precision", "checkpoint_io"],
)
def test_a_plugin_lightning_would_refuse_beside_descents_is_one_line(make_cfg, plugin: str, message: str) -> None:
    """A precision plugin beside the precision flag, or a second CheckpointIO: Lightning's error, in Hydra's lines,
    after the run dir was made; here one line before any data is loaded."""
    with pytest.raises(DescentError) as error:
        check_config(make_cfg(f"+trainer.plugins={plugin}", "data.data_dir=/nonexistent"))
    assert str(error.value) == message


@pytest.mark.parametrize("callbacks", options("callbacks"))
def test_callbacks_options_instantiate_lightning_callbacks(make_cfg, callbacks: str) -> None:
    from descent.training import build_trainer

    cfg = make_cfg(f"callbacks={callbacks}")
    trainer = build_trainer(cfg, Path(cfg.run_dir))
    names = {type(callback).__name__ for callback in trainer.callbacks}
    expected = {
        "none": set(),
        "early_stopping": {"EarlyStopping"},
        "lr_monitor": {"LearningRateMonitor"},
        "steps_to_target": {"StepsToTarget"},
    }
    assert expected[callbacks] <= names
    if callbacks == "early_stopping":
        (stopping,) = [c for c in trainer.callbacks if type(c).__name__ == "EarlyStopping"]
        assert stopping.monitor == cfg.monitor


@pytest.mark.parametrize("debug", options("debug"))
def test_debug_options_set_lightnings_flags(make_cfg, debug: str) -> None:
    from descent.training import build_trainer

    cfg = make_cfg(f"debug={debug}")
    check_config(cfg)
    trainer = build_trainer(cfg, Path(cfg.run_dir))
    if debug == "fast":
        assert trainer.fast_dev_run is True
    elif debug == "overfit":
        assert trainer.overfit_batches == 10
    else:
        assert type(trainer.profiler).__name__ == "SimpleProfiler"


@pytest.mark.parametrize("augment", ["{crop_padding:2,flip:true}", "true", "{crop_padding:1}"])
def test_data_augment_composes_instantiates_and_trains(make_cfg, augment: str) -> None:
    from descent.training import train

    cfg = make_cfg("model=cnn", f"data.augment={augment}", "max_epochs=1")
    data, _ = build(cfg)
    assert data.augment is not None and data.augment.crop_padding in (1, 2) and data.augment.flip is True
    assert train(cfg)["final"]["progress/steps"] == 8


def test_data_augment_is_off_by_default(make_cfg) -> None:
    data, _ = build(make_cfg())
    assert data.augment is None


def test_the_resnet_experiment_fixes_the_settings_the_readme_states(make_cfg) -> None:
    composed = compose_train("experiment=fashion_mnist_resnet")
    assert composed.data.dataset == "FashionMNIST" and dict(composed.data.augment) == {"crop_padding": 2, "flip": True}
    assert composed.model.net._target_ == "descent.nets.ResNet"
    assert (composed.model.net.depth, composed.model.net.width, composed.model.norm_batch_size) == (8, 32, 32)
    assert {key: composed.optimizer[key] for key in ("lr", "momentum", "weight_decay")} == {
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 0.0005,
    }
    assert composed.scheduler.T_max == composed.max_epochs == 30 and composed.batch_size == 128
    assert composed.trainer.check_val_every_n_epoch == 10 and composed.model.loss.label_smoothing == 0.1
    assert composed.trainer.precision == "bf16-mixed" and composed.chunk_size == 512
    cfg = on_stand_in(make_cfg("experiment=fashion_mnist_resnet"))
    check_config(cfg)
    data, model = build(cfg)
    assert data.augment is not None and len(model.norms) == 7 and data.samples_per_group == 32


GROUPS_TABLE = "| group | options | what it sets |"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documented_groups(pages: list[Path]) -> tuple[Path, dict[str, set[str]]] | None:
    """The first page holding the table of config groups, with each group and the options its row names (None: no
    page has the table, as a README of one's own may not)."""
    for page in pages:
        text = page.read_text() if page.is_file() else ""
        if GROUPS_TABLE in text:
            rows = text[text.index(GROUPS_TABLE) :].split("\n\n")[0].splitlines()[2:]
            cells = [[cell.strip(" `") for cell in row.strip("|").split("|")[:2]] for row in rows]
            return page, {group: {option.strip(" `") for option in names.split(",")} for group, names in cells}
    return None


def configs_in(confs: list[Path]) -> dict[str, dict[str, Path]]:
    """Each group of the config dirs (`hydra/launcher` for a nested one): its options and their files, the first
    dir's where two hold one (as Hydra's search path finds them)."""
    groups: dict[str, dict[str, Path]] = {}
    for conf in reversed(confs):
        for path in conf.rglob("*.yaml"):
            if path.parent != conf:
                groups.setdefault(path.parent.relative_to(conf).as_posix(), {})[path.stem] = path
    return groups


def check_groups_table(page: Path, listed: dict[str, set[str]], confs: list[Path]) -> None:
    """Fails where the table names a group or option with no file in `confs`; a file the table does not name is a
    warning saying which row to add it to (a user's own config is no mistake of the docs)."""
    on_disk = configs_in(confs)
    absent = [f"{group}={option}" for group in listed for option in sorted(listed[group] - set(on_disk.get(group, {})))]
    where = " or ".join(str(conf) for conf in confs)
    assert not absent, f"{page.name}'s table of config groups names options with no file in {where}: {absent}"
    for group, files in sorted(on_disk.items()):
        for option in sorted(set(files) - listed.get(group, set())):
            if group in listed:
                row = f"add `{option}` to its row | `{group}` | ... |"
            else:
                row = f"add a row | `{group}` | `{option}` | what it sets |"
            warnings.warn(f"{files[option]} is not in {page.name}'s table of config groups: {row}", stacklevel=2)


def test_the_readme_lists_every_group_and_option() -> None:
    """The README's table of config groups names only groups and options that exist in the config dir; one that the
    table does not name is a warning."""
    found = documented_groups(DOCS)
    if found is None:
        pytest.skip(f"README.md and docs/ hold no table of config groups ({GROUPS_TABLE}) to check the configs against")
    check_groups_table(*found, CONF_DIRS)


def test_a_config_the_table_does_not_name_is_a_warning_and_a_name_without_a_file_a_failure(tmp_path: Path) -> None:
    table = tmp_path / "README.md"
    table.write_text(f"# mine\n\n{GROUPS_TABLE}\n| --- | --- | --- |\n| `data` | `mnist` | the data |\n\nmore\n")
    conf = tmp_path / "conf"
    for path in ("data/mnist.yaml", "data/mine.yaml", "hydra/launcher/mine.yaml", "train.yaml"):
        (conf / path).parent.mkdir(parents=True, exist_ok=True)
        (conf / path).write_text("{}\n")
    found = documented_groups([tmp_path / "absent.md", table])
    assert found == (table, {"data": {"mnist"}})
    with pytest.warns(UserWarning) as warned:
        check_groups_table(*found, [conf])
    assert [str(warning.message) for warning in warned] == [
        f"{conf}/data/mine.yaml is not in README.md's table of config groups: add `mine` to its row | `data` | ... |",
        f"{conf}/hydra/launcher/mine.yaml is not in README.md's table of config groups: add a row "
        "| `hydra/launcher` | `mine` | what it sets |",
    ]
    (conf / "data" / "mnist.yaml").unlink()
    with pytest.raises(AssertionError, match=r"names options with no file in .*\['data=mnist'\]"):
        check_groups_table(*found, [conf])
    assert documented_groups([tmp_path / "absent.md"]) is None


def test_a_loss_file_without_its_package_header_is_refused(make_cfg) -> None:
    """A conf/loss/ file lacking `# @package model.loss` lands at the top level: training on the default loss
    instead would be silent, so the run stops."""
    with pytest.raises(DescentError, match=r"loss: the chosen conf/loss/ file landed at the top level.*@package"):
        check_config(make_cfg("+loss._target_=my_losses.focal_loss"))


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_passes_the_checks_and_builds(make_cfg, experiment: str) -> None:
    cfg = on_stand_in(make_cfg(f"experiment={experiment}"))
    check_config(cfg)
    data, model = build(cfg)
    assert data.num_train == (cfg.data.get("train_size") or 500)
    model.configure_optimizers()


def test_the_gradient_descent_studies_measure_what_the_readme_says(make_cfg) -> None:
    eos = compose_train("experiment=edge_of_stability")
    assert eos.full_batch and eos.curvature.enabled and eos.data.train_size == 5000
    assert eos.model.net.activation == "tanh" and eos.trainer.check_val_every_n_epoch == 25
    flow = compose_train("experiment=gradient_flow")
    assert flow.gradient_flow.enabled and len(flow.model.net.hidden) == 5  # six weight layers with the logits
