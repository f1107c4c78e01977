"""The commands of the README, run as a user runs them: subprocesses of src/train.py and src/eval.py."""

import json
from pathlib import Path

import pytest
from helpers import events, run, scalars, small

pytestmark = pytest.mark.slow


def test_readme_command_trains_and_writes_tensorboard_events(idx_dir: Path, tmp_path: Path) -> None:
    done = run("src/train.py", "optimizer=sgd", "batch_size=64", *small(idx_dir), f"hydra.run.dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    series = scalars(tmp_path)
    for stage in ("train", "val", "test"):
        for kind in ("loss", "error", "acc"):
            expected = [row[f"{stage}/{kind}"] for row in metrics["history"]]
            assert series[f"{stage}/{kind}"] == pytest.approx(expected, rel=1e-6)  # events hold float32
    assert series["gap/loss"] == pytest.approx([row["gap/loss"] for row in metrics["history"]])
    assert series["progress/steps"] == [8, 16]
    assert [event.step for event in events(tmp_path).Scalars("test/error")] == [1, 2]  # the x-axis is the epoch k
    assert "final (epoch 2)" in done.stderr + done.stdout


def test_eval_reproduces_the_test_figures_of_a_checkpoint(idx_dir: Path, tmp_path: Path) -> None:
    trained = run("src/train.py", *small(idx_dir), "logger=none", f"hydra.run.dir={tmp_path / 'train'}")
    assert trained.returncode == 0, trained.stderr
    final = json.loads((tmp_path / "train" / "metrics.json").read_text())["final"]
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    done = run("src/eval.py", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert done.returncode == 0, done.stderr
    figures = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("test/loss", "test/error", "train/loss", "val/error"):
        assert figures[key] == pytest.approx(final[key], rel=1e-6)


def test_sweep_over_optimizer_and_batch_size_leaves_one_run_each(idx_dir: Path, tmp_path: Path) -> None:
    done = run(
        "src/train.py",
        "-m",
        "optimizer=gd,sgd",
        "batch_size=64,128",
        *small(idx_dir),
        f"hydra.sweep.dir={tmp_path}",
    )
    assert done.returncode == 0, done.stderr
    runs = {path.parent.name: path.parent for path in tmp_path.glob("*/metrics.json")}
    swept = {}
    for (
        name,
        run_dir,
    ) in runs.items():  # dirs are named by the job's overrides, e.g. batch_size=64,...,optimizer=gd
        overrides = dict(item.split("=") for item in name.split(","))
        swept[overrides["optimizer"], int(overrides["batch_size"])] = run_dir
    assert sorted(swept) == [("gd", 64), ("gd", 128), ("sgd", 64), ("sgd", 128)]
    for (optimizer, batch_size), run_dir in swept.items():
        assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
        per_epoch = 1 if optimizer == "gd" else -(-500 // batch_size)  # ceil(N / B) for SGD
        assert scalars(run_dir)["progress/steps"] == [per_epoch, 2 * per_epoch]


BAD_INPUTS = [
    (["optimizer=nope"], "error: optimizer=nope is not an option of optimizer: choose one of adam, gd, momentum, sgd"),
    (["logger=nosuch"], "error: logger=nosuch is not an option of logger: choose one of csv, none, tensorboard"),
    (["data=imagenet_typo"], "error: data=imagenet_typo is not an option of data: choose one of fashion_mnist,"),
    (["-m", "model=mlp,cnm"], "error: model=cnm is not an option of model: choose one of cnn, mlp"),
    (
        ["batch_size=0"],
        "batch_size=0 is not allowed: give a positive number of samples per step, or batch_size=full",
    ),
    (["batch_size=-3"], "batch_size=-3 is not allowed"),
    (
        ["batch_size=100000"],
        "batch_size=100000 is larger than the training set (N=500): use at most 500, or batch_size=full",
    ),
    (["chunk_size=0"], "chunk_size=0 is not allowed: give a positive number of samples, or chunk_size=full"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 is not allowed: the learning rate must be a positive number"),
    (["optimizer.lr=0"], "optimizer.lr=0 is not allowed"),
    (["trainer=gpu"], "trainer.accelerator=gpu but PyTorch sees no CUDA GPU here: use trainer=cpu"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_ends_in_one_clear_message_and_a_nonzero_exit(
    idx_dir: Path, tmp_path: Path, overrides: list[str], message: str
) -> None:
    if overrides == ["trainer=gpu"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    done = run("src/train.py", *small(idx_dir), *overrides, f"hydra.run.dir={tmp_path}")
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    if "is not an option of" in message:  # one line, without Hydra's config search path
        assert done.stderr.strip() == done.stderr.strip().splitlines()[0] and done.returncode == 2
    assert not (tmp_path / "checkpoints").exists()


def test_missing_data_offline_says_where_it_looked_and_how_to_get_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run("src/train.py", f"data.data_dir={empty}", "data.download=false", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert lines == [
        f"error: MNIST files not found in {empty}, {empty}/MNIST/raw and data.download=false: put the four IDX "
        "files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, "
        "optionally .gz) in data.data_dir, or run once with network access"
    ]
    assert "Traceback" not in done.stderr
