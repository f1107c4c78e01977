"""ImageNet-scale data on small generated files through the real loading code; DDP's shares; multirun with DDP."""

import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from data_files import write_image_folder
from helpers import ROOT, compose_config, compose_train, run
from omegaconf import DictConfig

from descent.data import Plan
from descent.data.npz_cache import release_files
from descent.errors import DescentError
from descent.training import build, train

VAL_SIZE = 100
TINY = ["trainer=cpu", "model.net.hidden=[32]", "max_epochs=2", "logger=none", f"data.val_size={VAL_SIZE}"]


TRAIN, TEST, CLASSES = 600, 200, 10  # as the imagenet32_dir fixture (conftest.py) writes them


def compose_cfg(*overrides: str, data_dir: Path, run_dir: Path) -> DictConfig:
    return compose_train("data=imagenet32", *TINY, f"data.data_dir={data_dir}", f"run_dir={run_dir}", *overrides)


def copy_of(directory: Path, tmp_path: Path) -> Path:
    """The release files without a cache, so that a test sees the conversion."""
    target = tmp_path / "data"
    target.mkdir()
    for path in directory.glob("*.npz"):
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_sgd_trains_on_imagenet32_and_evaluates_every_set(imagenet32_dir: Path, tmp_path: Path) -> None:
    result = train(compose_cfg("optimizer=sgd", "batch_size=64", data_dir=imagenet32_dir, run_dir=tmp_path))
    first, last = result["history"]
    assert last["progress/steps"] == 2 * -(-(TRAIN - VAL_SIZE) // 64)
    assert last["progress/samples"] == 2 * (TRAIN - VAL_SIZE)
    assert last["train/loss"] < first["train/loss"] < np.log(CLASSES)
    assert last["test/error"] < 0.5  # learnable: a prototype per class


@pytest.mark.parametrize(("optimizer", "steps"), [("sgd", -(-(TRAIN - VAL_SIZE) // 64)), ("gd", 1)])
def test_an_epoch_says_how_many_steps_it_takes(imagenet32_dir: Path, tmp_path: Path, optimizer: str, steps) -> None:
    """The model reads the loss at the epoch's last step by this count (every 32 steps off the CPU)."""
    overrides = (f"optimizer={optimizer}", "batch_size=64", "chunk_size=64")
    data, _ = build(compose_cfg(*overrides, data_dir=imagenet32_dir, run_dir=tmp_path))
    epoch = data.train_dataloader()
    assert len(epoch) == steps == len(list(epoch))


def test_gd_on_imagenet32_takes_one_exact_step_per_epoch_in_chunks(imagenet32_dir: Path, tmp_path: Path) -> None:
    result = train(compose_cfg("optimizer=gd", "chunk_size=64", data_dir=imagenet32_dir, run_dir=tmp_path))
    assert [row["progress/steps"] for row in result["history"]] == [1, 2]
    assert result["history"][1]["train/loss"] < result["history"][0]["train/loss"]


def test_gd_step_from_the_memmap_equals_one_step_on_all_the_data(imagenet32_dir: Path, tmp_path: Path) -> None:
    """The chunks of a GD epoch, gathered from the cache and normalised on the device, are the whole split."""
    data, _ = build(compose_cfg("optimizer=gd", "chunk_size=64", data_dir=imagenet32_dir, run_dir=tmp_path))
    (chunks,) = list(data.train_dataloader())  # one step
    assert len(chunks) == -(-(TRAIN - VAL_SIZE) // 64)
    assert {c.loss_divisor for c in chunks} == {TRAIN - VAL_SIZE}
    x = torch.cat([c.x for c in chunks])
    raw = np.concatenate([np.load(path)["data"] for path in release_files(imagenet32_dir)[0]])
    train_rows = torch.randperm(TRAIN, generator=torch.Generator().manual_seed(0))[VAL_SIZE:]  # split_seed=0
    header = data.sets["train"][0].cache.header
    expected = torch.from_numpy(raw[train_rows]).float().reshape(-1, 3, 1024) - torch.tensor(header["mean"])[:, None]
    expected /= torch.tensor(header["std"])[:, None]
    torch.testing.assert_close(x, expected.reshape(-1, 3, 32, 32))
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


def test_each_rank_draws_its_own_share_and_together_every_sample_once(imagenet32_dir: Path, tmp_path: Path) -> None:
    data, _ = build(compose_cfg("batch_size=50", data_dir=imagenet32_dir, run_dir=tmp_path))
    _, y = data.sets["train"]
    seen = Counter()
    for rank in range(2):
        for step in Plan(len(y), 50, 64, seed=0, rank=rank, world_size=2):
            for index, _ in step:
                seen.update(y[index].tolist())
    assert seen == Counter(y.tolist())


def test_the_cache_is_written_once_and_reused(imagenet32_dir: Path, tmp_path: Path) -> None:
    data_dir = copy_of(imagenet32_dir, tmp_path)
    build(compose_cfg(data_dir=data_dir, run_dir=tmp_path / "a"))
    cache = data_dir / "cache" / "imagenet32"
    written = {path.name: path.stat().st_mtime_ns for path in cache.iterdir()}
    assert {"header.json", "train_x.u8", "train_y.i16", "test_x.u8", "test_y.i16"} <= set(written)
    assert not list(cache.glob("*.tmp"))
    assert (cache / "train_x.u8").stat().st_size == TRAIN * 3072
    build(compose_cfg(data_dir=data_dir, run_dir=tmp_path / "b"))
    assert {path.name: path.stat().st_mtime_ns for path in cache.iterdir()} == written


def test_a_cache_without_its_header_is_converted_again(imagenet32_dir: Path, tmp_path: Path) -> None:
    """The header is written last: a conversion killed before it never looks complete."""
    data_dir = copy_of(imagenet32_dir, tmp_path)
    build(compose_cfg(data_dir=data_dir, run_dir=tmp_path / "a"))
    header = data_dir / "cache" / "imagenet32" / "header.json"
    header.unlink()
    (data_dir / "cache" / "imagenet32" / "train_x.u8").write_bytes(b"half")
    data, _ = build(compose_cfg(data_dir=data_dir, run_dir=tmp_path / "b"))
    assert header.is_file() and data.num_train == TRAIN - VAL_SIZE


def test_the_data_module_pickles_without_its_images(imagenet32_dir: Path, tmp_path: Path) -> None:
    """ddp_spawn and submitit pickle it: the memory map is reopened on the other side, never copied."""
    data, _ = build(compose_cfg(data_dir=imagenet32_dir, run_dir=tmp_path))
    next(iter(data.train_dataloader()))  # maps the file
    copy = pickle.loads(pickle.dumps(data))
    assert len(pickle.dumps(data)) < TRAIN * 3072 / 4
    first = [next(images.read([slice(0, 5)])) for images in (copy.sets["test"][0], data.sets["test"][0])]
    torch.testing.assert_close(*first)


def test_a_pickled_release_file_is_refused_with_the_conversion(tmp_path: Path) -> None:
    with open(tmp_path / "train_data_batch_1", "wb") as file:  # the original release's format
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2]}, file)
    with pytest.raises(DescentError, match=r"train_data_batch_1: is in Python's pickle format.*numpy.savez\(F"):
        build(compose_cfg(data_dir=tmp_path, run_dir=tmp_path / "run"))


def test_a_pickle_named_npz_is_refused_without_being_unpickled(imagenet32_dir: Path, tmp_path: Path) -> None:
    data_dir = copy_of(imagenet32_dir, tmp_path)
    with open(data_dir / "val_data.npz", "wb") as file:
        pickle.dump({"data": 0}, file)
    with pytest.raises(DescentError, match=r"val_data.npz: is in Python's pickle format; descent never unpickles"):
        build(compose_cfg(data_dir=data_dir, run_dir=tmp_path / "run"))


def test_an_npz_of_object_arrays_is_refused(imagenet32_dir: Path, tmp_path: Path) -> None:
    data_dir = copy_of(imagenet32_dir, tmp_path)
    np.savez(data_dir / "val_data.npz", data=np.array([None, 1], dtype=object), labels=np.array([1, 2]))
    with pytest.raises(DescentError, match=r"val_data.npz: is in Python's pickle format"):
        build(compose_cfg(data_dir=data_dir, run_dir=tmp_path / "run"))


def test_an_npz_with_other_keys_is_refused_naming_them(imagenet32_dir: Path, tmp_path: Path) -> None:
    data_dir = copy_of(imagenet32_dir, tmp_path)
    np.savez(data_dir / "val_data.npz", x=np.zeros((2, 3072), np.uint8), y=np.array([1, 2]))
    with pytest.raises(
        DescentError, match=r"val_data.npz: holds the arrays \['x', 'y'\], expected \['data', 'labels'\]"
    ):
        build(compose_cfg(data_dir=data_dir, run_dir=tmp_path / "run"))


def test_imagenet64_files_at_32_say_which_size_they_hold(imagenet32_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DescentError, match=r"expected uint8 \[N, 12288\] for 64x64 RGB images"):
        build(compose_cfg("data=imagenet64", data_dir=copy_of(imagenet32_dir, tmp_path), run_dir=tmp_path / "r"))


def test_missing_files_name_the_directory(tmp_path: Path) -> None:
    with pytest.raises(DescentError, match=f"data.data_dir={tmp_path}: no train_data_batch_<k>.npz found"):
        build(compose_cfg(data_dir=tmp_path, run_dir=tmp_path / "run"))


@pytest.mark.parametrize("optimizer", ["sgd", "gd"])
def test_the_issue_commands_train_and_evaluate(imagenet32_dir: Path, tmp_path: Path, optimizer: str) -> None:
    """`data=imagenet32 optimizer=... batch_size=256`, composed as the command line composes it."""
    train(compose_cfg(f"optimizer={optimizer}", "batch_size=256", data_dir=imagenet32_dir, run_dir=tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["final"]["progress/steps"] == 2 * (1 if optimizer == "gd" else 2)
    assert metrics["final"]["test/loss"] < np.log(CLASSES)


def recorded_epochs(record_dir: Path) -> dict[int, dict[int, list[int]]]:
    """epoch -> rank -> the training samples that rank drew, in order."""
    epochs: dict[int, dict[int, list[int]]] = {}
    for path in record_dir.glob("rank*.txt"):
        rank = int(path.stem.removeprefix("rank"))
        for line in path.read_text().splitlines():
            epoch, *samples = map(int, line.split())
            epochs.setdefault(epoch, {}).setdefault(rank, []).extend(samples)
    return epochs


@pytest.mark.slow
@pytest.mark.parametrize("data", ["idx", "imagenet32"])
def test_ddp_cpu_ranks_see_every_training_sample_once_per_epoch(data: str, ddp_runs: dict[str, Path]) -> None:
    """Two gloo ranks, B=64 (steps split 32/32, the last one uneven): the recorded draws of both ranks
    (ddp_runs.DDP_RUNS["draws_idx"] and ["draws_imagenet32"]: 2 epochs, logger=none)."""
    run_dir = ddp_runs[f"draws_{data}"]
    n_train = (600 if data == "idx" else TRAIN) - VAL_SIZE
    epochs = recorded_epochs(run_dir.parent / f"draws_{data}_record")
    assert sorted(epochs) == [0, 1]
    for ranks in epochs.values():
        assert sorted(ranks) == [0, 1]
        assert sorted(ranks[0] + ranks[1]) == list(range(n_train))  # every sample, once, across the ranks
        assert abs(len(ranks[0]) - len(ranks[1])) <= 8  # one contiguous share of each step per rank
    assert epochs[0][0] != epochs[1][0]  # a fresh permutation each epoch
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["final"]["progress/samples"] == 2 * n_train  # reduced over the ranks
    # Rank 0 alone writes: one checkpoint of each kind, one metrics file, no second version from rank 1.
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


@pytest.mark.slow
def test_a_two_job_multirun_with_ddp_cpu_leaves_exactly_two_run_dirs(idx_dir: Path, tmp_path: Path) -> None:
    done = run(
        str(ROOT / "src" / "train.py"), "-m", "trainer=ddp_cpu", "seed=0,1", f"data.data_dir={idx_dir}",
        "data.download=false", *TINY[1:], "max_epochs=1", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    sweeps = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps
    jobs = sorted(path for path in sweeps[0].iterdir() if path.is_dir())
    assert [path.name.split("seed:")[1].split("+")[0] for path in jobs] == ["0", "1"]
    for job in jobs:
        assert (job / "metrics.json").is_file() and (job / "train_ddp_process_1.log").is_file()
    assert not (tmp_path / "logs" / "train" / "runs").exists()  # rank 1 ran in the job's dir, not a dir of its own


@pytest.fixture(scope="session")
def folder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageNet-style folder: 3 classes, 12 training and 4 validation PNGs (24x24) each."""
    directory = tmp_path_factory.mktemp("folder")
    write_image_folder(directory, 12, 4, 24, 3)
    return directory


def folder_cfg(*overrides: str, data_dir: Path, run_dir: Path) -> DictConfig:
    return compose_cfg(
        "data=imagefolder", "data.image_size=16", "data.num_workers=0", "data.val_size=6", *overrides,
        data_dir=data_dir, run_dir=run_dir,
    )  # fmt: skip


@pytest.mark.parametrize("optimizer", ["sgd", "gd"])
def test_an_image_folder_trains_with_sgd_and_gd(folder_dir: Path, tmp_path: Path, optimizer: str) -> None:
    cfg = folder_cfg(f"optimizer={optimizer}", "batch_size=8", "chunk_size=8", data_dir=folder_dir, run_dir=tmp_path)
    data, model = build(cfg)
    assert data.input_shape == (3, 16, 16) and model.net[0].in_features == 3 * 16 * 16
    assert data.class_names == ["class_000", "class_001", "class_002"]
    steps = list(data.train_dataloader())
    assert sum(len(chunk.y) for step in steps for chunk in step) == 36 - 6
    assert all(chunk.x.shape[1:] == (3, 16, 16) for step in steps for chunk in step)
    assert len(steps) == len(data.train_dataloader()) == (1 if optimizer == "gd" else 4)
    result = train(cfg)
    assert [row["progress/samples"] for row in result["history"]] == [30, 60]
    assert result["history"][1]["train/loss"] < result["history"][0]["train/loss"]


def test_an_empty_image_folder_is_refused_naming_it(folder_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "train" / "class_a").mkdir(parents=True)
    (tmp_path / "val").mkdir()
    with pytest.raises(DescentError, match=f"{tmp_path / 'train'}: no images found"):
        build(folder_cfg(data_dir=tmp_path, run_dir=tmp_path / "run"))


def test_an_image_folder_without_val_is_refused_naming_it(folder_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "train").symlink_to(folder_dir / "train")
    with pytest.raises(DescentError, match=f"data.data_dir={tmp_path}: no val/ folder"):
        build(folder_cfg(data_dir=tmp_path, run_dir=tmp_path / "run"))


def test_the_slurm_launcher_composes_from_the_trainer_it_starts() -> None:
    cfg = compose_config(
        "train", "hydra/launcher=slurm", "trainer=slurm", "trainer.num_nodes=2", return_hydra_config=True
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert launcher.max_num_timeout == 3
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.plugins[0].auto_requeue is False
