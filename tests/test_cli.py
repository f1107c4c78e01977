"""The commands of the README, run as a user runs them: subprocesses of src/train.py and src/eval.py where the
command line itself is tested (exit codes, one-line errors, Hydra's sweeps and logging); composed and called in this
process (`train(cfg)`, `evaluate(cfg)`, `check_arguments`) where a subprocess would add only its start-up."""

import json
import logging
import subprocess
from pathlib import Path

import pytest
from helpers import ROOT, compose_eval, compose_train, compose_train_small, events, refusal, run, scalars, small

from descent.command_line import check_arguments
from descent.evaluation import evaluate
from descent.resume import resumed_config
from descent.training import train


@pytest.mark.slow
def test_readme_command_trains_writes_tensorboard_events_and_says_each_thing_once(
    idx_dir: Path, tmp_path: Path
) -> None:
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

    # The console: each thing once, nothing of Lightning's start-up.
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    said = [line.split("] - ", 1)[-1] for line in lines]  # without Hydra's timestamp and logger name
    for absent in ("GPU available", "TPU available", "litlogger", "Tip:", "limit_train_batches", "Warning"):
        assert not [line for line in said if absent in line], absent
    assert len(said) == len(set(said)), "a line said twice"
    assert [line.split()[0] for line in said if line.startswith("epoch ")] == ["epoch", "epoch"]  # one a epoch
    assert "Epoch 1/2" not in done.stdout + done.stderr  # no progress bar: the output is not a terminal
    assert said[0].startswith("MNIST: 600 training and 200 test images") or "FashionMNIST: 600" in said[0]
    assert any(line.startswith("memory on cpu:") for line in said)
    assert "final (epoch 2)" in done.stderr + done.stdout
    firsts = [(line.split() or [""])[0] for line in said[-6:]]
    assert firsts == ["ended", "", "train", "final", "best", "run"]  # why it ended, the table, where it all is
    assert (
        said[-6] == "ended after max_epochs=2"
        and said[-1] == f"run dir {tmp_path}: metrics.json, checkpoints/, train.log"
    )


@pytest.mark.slow
def test_eval_reproduces_the_test_figures_of_a_checkpoint_in_its_precision(
    idx_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A float64 run (trained in this process) evaluated by src/eval.py in float64 (its figures to the last digits),
    and nothing but its one line said; in another precision when asked (in this process), which it says."""
    cfg = compose_train_small(
        *small(idx_dir), "logger=none", "trainer.precision=64-true", idx_dir=idx_dir, run_dir=tmp_path / "train"
    )
    final = train(cfg)["final"]
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    done = run("src/eval.py", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert done.returncode == 0, done.stderr
    figures = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("test/loss", "test/error", "train/loss", "val/error"):
        assert figures[key] == pytest.approx(final[key], rel=1e-12, abs=1e-15)
    assert done.stderr == ""  # no warnings of Lightning's about callbacks or checkpoint dirs
    said = [line.split(" - ", 1)[1] for line in done.stdout.splitlines()]
    assert said[-1].startswith(f"{ckpt}: test loss") and not any("precision" in line for line in said)
    caplog.set_level(logging.INFO)
    evaluate(compose_eval(f"ckpt_path={ckpt}", "trainer.precision=32-true", f"run_dir={tmp_path / 'e32'}"))
    assert "evaluating in trainer.precision=32-true; the run trained in 64-true" in caplog.messages


@pytest.mark.slow
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
    for name, run_dir in runs.items():  # dirs are named by the job's overrides: batch_size:64+...+optimizer:gd
        overrides = dict(item.split(":") for item in name.split("+"))
        swept[overrides["optimizer"], int(overrides["batch_size"])] = run_dir
    assert sorted(swept) == [("gd", 64), ("gd", 128), ("sgd", 64), ("sgd", 128)]
    for (optimizer, batch_size), run_dir in swept.items():
        assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
        per_epoch = 1 if optimizer == "gd" else -(-500 // batch_size)  # ceil(N / B) for SGD
        assert scalars(run_dir)["progress/steps"] == [per_epoch, 2 * per_epoch]
    said = done.stdout + done.stderr
    assert f"sweep dir {tmp_path}: a run dir per job" in said and f"sweep dir {tmp_path}: summary.md" in said


@pytest.mark.slow
def test_a_sweep_job_dir_works_verbatim_as_ckpt_path_and_resume(idx_dir: Path, tmp_path: Path) -> None:
    """Paths as `ls` shows them, typed back unquoted: no `=`, `,`, brackets or quotes in a job dir's name. One real
    sweep over a list-valued and a float-valued setting; each job dir is then typed back as the command line takes
    it (checked by the entry points' own argument check, parsed by Hydra's override grammar as src/eval.py and
    src/train.py parse it) and evaluated and resumed in this process."""
    sweep = tmp_path / "sweep"
    swept = ["model.net.hidden=[16,8],[24]", "optimizer.lr=0.06,0.03"]
    done = run("src/train.py", "-m", *swept, *small(idx_dir)[:-2], "max_epochs=1", f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr
    jobs = sorted(path.parent for path in sweep.glob("*/metrics.json"))
    assert len(jobs) == 4
    for job in jobs:
        assert not set(job.name) & set("=,[]'\" ${}*?"), job.name
        typed = [f"ckpt_path={job}/checkpoints/best.ckpt"]
        check_arguments(typed, ROOT / "src" / "eval.py", "../conf", "eval")
        evaluate(compose_eval(*typed, f"run_dir={tmp_path / 'eval'}"))
        typed = [f"resume={job}", "max_epochs=2"]
        check_arguments(typed, ROOT / "src" / "train.py", "../conf", "train")
        train(resumed_config(compose_train(*typed, f"run_dir={tmp_path / 'resume'}"), typed))
        assert [row["epoch"] for row in json.loads((job / "metrics.json").read_text())["history"]] == [1, 2]
    shell = subprocess.run(f"ls -d {jobs[0]}", shell=True, capture_output=True, text=True)  # no quoting needed
    assert shell.stdout.strip() == str(jobs[0])


BAD_INPUTS = [
    (
        ["optimizer=nope"],
        "error: optimizer=nope is not an option of optimizer: choose one of adam, gd, lbfgs, momentum, sgd",
    ),
    (
        ["logger=nosuch"],
        "error: logger=nosuch is not an option of logger: choose one of csv, mlflow, none, tensorboard, wandb",
    ),
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
    (["data.augment={crop_padding:-1}"], "error: data.augment.crop_padding=-1 is not allowed"),
    (["data.augment={crop_padding:30}"], "error: data.augment.crop_padding=30 must be smaller than the images'"),
    (["model.loss.reduction=mean"], "error: model.loss.reduction='mean': descent sums the loss over each chunk"),
    (
        [
            "model.loss._target_=torch.nn.functional.cross_entropy",
            "++model.loss._partial_=true",
            "~model.loss.reduction",
        ],
        "does not return the sum over the chunk's samples",
    ),
    (
        ["+metrics.confusion._target_=torchmetrics.classification.MulticlassConfusionMatrix"],
        "error: metrics.confusion: torchmetrics.classification.MulticlassConfusionMatrix gives a tensor of shape "
        "[10, 10]; descent logs a number or one per class",
    ),
    (
        ["metrics=per_class_acc", "monitor=val/per_class_acc"],
        "error: monitor=val/per_class_acc: metrics.per_class_acc gives one figure per class",
    ),
    (
        ["model.backprop=manual", "model.loss.label_smoothing=0.1"],
        "error: model.backprop=manual writes out the gradient of plain cross-entropy",
    ),
]


def refused(argv: list[str], run_dir: Path) -> str:
    """The message src/train.py prints for `argv`: its argument check's (before Hydra composes), else the composed
    run's (train(cfg) checks the settings, then loads the data and builds the model)."""

    def command_line() -> None:
        check_arguments(argv, ROOT / "src" / "train.py", "../conf", "train")
        assert "-m" not in argv, "a sweep's bad choice is refused by the argument check"
        train(compose_train(*argv, f"run_dir={run_dir}"))

    return refusal(command_line)


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_ends_in_one_clear_message_before_any_checkpoint(
    idx_dir: Path, tmp_path: Path, overrides: list[str], message: str
) -> None:
    """In this process: the message and the place it is raised. What the command line makes of any such error (one
    line on stderr, no traceback, exit 2) is tested once for each kind of refusal: the argument check's
    (test_a_choice_that_is_no_option_is_one_line_and_exit_2 here, test_command_line.py), the settings check's
    (test_robustness.py), one in training (test_robustness.py's divergence, test_sweep.py's failed job)."""
    if overrides == ["trainer=gpu"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    said = refused([*small(idx_dir), *overrides], tmp_path / "run")
    assert message.removeprefix("error: ") in said
    if "is not an option of" in message:  # one line, without Hydra's config search path
        assert "\n" not in said
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_a_choice_that_is_no_option_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = run("src/train.py", "-m", "model=mlp,cnm", f"hydra.sweep.dir={tmp_path}")
    (line,) = done.stderr.strip().splitlines()  # one line, without Hydra's config search path
    assert done.returncode == 2
    assert line.startswith("error: model=cnm is not an option of model: choose one of cnn, mlp")


def test_missing_data_offline_says_where_it_looked_and_how_to_get_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    debian = ", or install Debian's dataset-fashion-mnist package (make data)"
    for data, extra in (("mnist", ""), ("fashion_mnist", debian)):
        name = "MNIST" if data == "mnist" else "FashionMNIST"
        said = refused(
            [f"data={data}", f"data.data_dir={empty}", "data.download=false", "data.system_dir=null"], tmp_path / "run"
        )
        assert said == (
            f"{name} files not found in {empty}, {empty}/{name}/raw and data.download=false: put the four "
            "IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
            f"t10k-labels-idx1-ubyte, optionally .gz) in data.data_dir, or run once with network access{extra}"
        )


def test_make_data_installs_fashion_mnist_with_apt_as_root_or_says_the_command(tmp_path: Path) -> None:
    """`make train` runs `make data` first; here with a stand-in for apt-get that records what it was asked."""
    import os

    def make_data(**variables: str) -> str:
        settings = [f"{key}={value}" for key, value in variables.items()]
        done = subprocess.run(["make", "-s", "data", *settings], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    installed = tmp_path / "installed"
    installed.mkdir()
    (installed / "train-images-idx3-ubyte.gz").write_bytes(b"")
    assert make_data(FASHION_MNIST_DIR=str(installed)) == "Fashion-MNIST is there"
    missing = str(tmp_path / "missing")
    no_apt = make_data(FASHION_MNIST_DIR=missing, APT_GET="no-such-apt-get")
    assert no_apt.startswith("Fashion-MNIST is not installed: run 'sudo apt-get install dataset-fashion-mnist'")
    if os.getuid() == 0:
        asked = tmp_path / "asked"
        apt = tmp_path / "apt-get"
        apt.write_text(f'#!/bin/sh\necho "$@" >> {asked}\n')
        apt.chmod(0o755)
        assert make_data(FASHION_MNIST_DIR=missing, APT_GET=str(apt)) == "installing Debian's dataset-fashion-mnist"
        assert asked.read_text().splitlines() == ["install -y -qq dataset-fashion-mnist"]
