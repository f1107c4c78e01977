"""Bad settings, bad files, divergence and interruption: each ends clearly and loses nothing already written."""

import gzip
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from data_files import write_idx
from helpers import ROOT, digest, run, small, start, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from descent.checkpoints import AtomicCheckpointIO, BackgroundCheckpointIO, check_fits, load
from descent.config import check_config
from descent.data.idx import IdxData, read_idx
from descent.errors import DescentError
from descent.module import Classifier
from descent.nets import MLP
from descent.stepping import Diverged, Interrupted
from descent.training import train

BAD_SETTINGS = [
    ("optimizer=momentum", "optimizer.momentum=1.5", "optimizer.momentum=1.5 is not allowed: give a number in [0, 1)"),
    ("optimizer=momentum", "optimizer.momentum=-0.1", "optimizer.momentum=-0.1 is not allowed"),
    ("optimizer=sgd", "optimizer.weight_decay=-1", "optimizer.weight_decay=-1 is not allowed: give a number >= 0"),
    ("optimizer=adam", "optimizer.lr=abc", "optimizer.lr='abc' is not allowed: the learning rate must be a positive"),
    ("optimizer=adam", "optimizer.betas=[0.9,1.0]", "optimizer.betas=[0.9, 1.0] is not allowed"),
    ("model=mlp", "model.net.hidden=[64,0]", "model.net.hidden=[64, 0] is not allowed: give a list of positive"),
    ("model=mlp", "model.net.hidden=64", "model.net.hidden=64 is not allowed: give a list of positive layer widths"),
    ("model=mlp", "model.net.hidden=[a]", "model.net.hidden=['a'] is not allowed"),
    ("model=mlp", "model.net.activation=gelu", "model.net.activation='gelu' is not one of relu, tanh, sigmoid"),
    ("model=mlp", "model.net.dropout=1", "model.net.dropout=1 is not allowed: give a probability in [0, 1)"),
    ("model=mlp", "max_epochs=0", "max_epochs=0 is not allowed: give a whole number of epochs, at least 1"),
    ("model=mlp", "max_epochs=2.5", "max_epochs=2.5 is not allowed"),
    ("model=mlp", "max_epochs=true", "max_epochs=True is not allowed"),
    ("model=mlp", "data.val_size=0", "data.val_size=0 is not allowed: give a whole number of samples, at least 1"),
    ("model=mlp", "seed=abc", "seed='abc' is not allowed: give a whole number"),
    ("model=mlp", "seed=-1", "seed=-1 is not allowed: give a whole number from 0 to 4294967295"),
    ("model=mlp", "seed=4294967296", "seed=4294967296 is not allowed: give a whole number from 0 to 4294967295"),
    ("model=mlp", "optimizer.lr=inf", "optimizer.lr=inf is not allowed: the learning rate must be a positive number"),
    ("model=mlp", "optimizer.lr=nan", "optimizer.lr=nan is not allowed"),
    ("optimizer=momentum", "optimizer.momentum=nan", "optimizer.momentum=nan is not allowed"),
    ("model=mlp", "optimizer.weight_decay=inf", "optimizer.weight_decay=inf is not allowed"),
    ("model=mlp", "model.net.dropout=nan", "model.net.dropout=nan is not allowed"),
    ("scheduler=exponential", "scheduler.gamma=0", "scheduler.gamma=0 is not allowed"),
    ("model=mlp", "monitor=val/accuracy", "monitor='val/accuracy' is not allowed"),
    ("model=mlp", "monitor=test/acc", "monitor='test/acc' selects on the test set"),
    # Lightning's flags that descent's exact step and per-epoch figures cannot mean as Lightning's docs say.
    (
        "model=mlp",
        "+trainer.accumulate_grad_batches=4",
        "trainer.accumulate_grad_batches=4 is not allowed: a step of "
        "descent is already exact over its chunks; for a step of B samples computed a part at a time give batch_size=B",
    ),
    (
        "model=mlp",
        "+trainer.val_check_interval=0.5",
        "trainer.val_check_interval=0.5 is not allowed: descent evaluates theta^k after whole epochs k",
    ),
    (
        "model=mlp",
        "+trainer.limit_test_batches=0.5",
        "trainer.limit_test_batches=0.5 is not allowed: every figure is over a whole set",
    ),
    (
        "model=mlp",
        "+trainer.enable_checkpointing=false",
        "trainer.enable_checkpointing=false is not allowed: every run keeps last.ckpt and best.ckpt, which "
        "resume=, eval.py and the report read; drop it",
    ),
    (
        "model=mlp",
        "trainer.default_root_dir=/elsewhere",
        "trainer.default_root_dir='/elsewhere' is not allowed: a run writes everything into its run dir, which "
        "hydra.run.dir sets; give hydra.run.dir=/elsewhere instead (for a sweep's jobs, hydra.sweep.dir=/elsewhere)",
    ),
    (
        "model=resnet",
        "+trainer.sync_batchnorm=true",
        "trainer.sync_batchnorm=true is not allowed: under DDP it would replace descent's BatchNorm",
    ),
    (
        "model=mlp",
        "+trainer.barebones=true",
        "trainer.barebones=true is not allowed: it turns off what a descent run is made of (its checkpoints, the "
        "loggers of its figures); for a lighter run give logger=none and trainer.enable_progress_bar=false",
    ),
]


@pytest.mark.parametrize(("group", "override", "message"), BAD_SETTINGS, ids=[o for _, o, _ in BAD_SETTINGS])
def test_bad_settings_are_refused_before_any_data_is_loaded(make_cfg, group: str, override: str, message) -> None:
    cfg = make_cfg(group, override)
    cfg.data.data_dir = "/nonexistent"  # loading data would fail differently: the setting is checked first
    with pytest.raises(DescentError) as raised:
        check_config(cfg)
    assert message in str(raised.value)


@pytest.mark.slow
def test_a_bad_setting_on_the_command_line_is_one_line_and_exit_2_before_data(tmp_path: Path) -> None:
    """Refused before the data and before the training stack loads: Python's own import report (-X importtime, on
    stderr) names no torch, so a mistyped value costs a second, not torch's imports."""
    done = run("-X", "importtime", "src/train.py", "optimizer=momentum", "optimizer.momentum=1.5",
               "data.data_dir=/nonexistent", "data.download=false", f"hydra.run.dir={tmp_path}")  # fmt: skip
    assert done.returncode == 2
    imported = [line.rpartition("|")[2].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    said = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert said == ["error: optimizer.momentum=1.5 is not allowed: give a number in [0, 1), e.g. 0.9"]
    assert "omegaconf" in imported and "torch" not in imported and "lightning" not in imported


def test_a_validation_split_as_large_as_the_training_set_is_refused(make_cfg) -> None:
    with pytest.raises(DescentError, match="data.val_size=600 must be smaller than the 600 training samples"):
        train(make_cfg("data.val_size=600"))


# Bad data files: each names the file and the problem.


def idx_copy(idx_dir: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "idx"
    shutil.copytree(idx_dir, directory)
    return directory


def overwrite(path: Path, offset: int, new: bytes) -> None:
    """Replace bytes of a gzipped file's content, keeping it a valid gzip file."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[offset : offset + len(new)] = new
    path.write_bytes(gzip.compress(bytes(raw)))


def load_idx(directory: Path) -> None:
    IdxData("MNIST", str(directory), download=False, val_size=100).setup()


def test_a_wrong_magic_number_is_named(idx_dir: Path, tmp_path: Path) -> None:
    directory = idx_copy(idx_dir, tmp_path)
    path = directory / "train-images-idx3-ubyte.gz"
    overwrite(path, 2, b"\x0d")  # float data instead of unsigned bytes
    with pytest.raises(DescentError, match=f"{path}: not an IDX file of unsigned bytes \\(magic number 00000d03"):
        load_idx(directory)


def test_dimensions_that_do_not_match_the_file_size_are_named(idx_dir: Path, tmp_path: Path) -> None:
    directory = idx_copy(idx_dir, tmp_path)
    path = directory / "t10k-images-idx3-ubyte.gz"
    overwrite(path, 4, (201).to_bytes(4, "big"))  # one image more than the file holds
    with pytest.raises(DescentError, match=f"{path}: the header declares shape \\[201, 28, 28\\]"):
        load_idx(directory)


def test_a_truncated_gzip_is_named(idx_dir: Path, tmp_path: Path) -> None:
    directory = idx_copy(idx_dir, tmp_path)
    path = directory / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DescentError, match=f"{path}: cannot be read .*download the file again"):
        load_idx(directory)


def test_labels_outside_the_classes_are_named(idx_dir: Path, tmp_path: Path) -> None:
    directory = idx_copy(idx_dir, tmp_path)
    labels = read_idx(directory / "t10k-labels-idx1-ubyte.gz").clone()
    labels[17] = 12
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DescentError, match="t10k-labels-idx1-ubyte.gz: label 12 at index 17 is outside the 10 classes"):
        load_idx(directory)


def test_image_and_label_counts_that_differ_are_named(idx_dir: Path, tmp_path: Path) -> None:
    directory = idx_copy(idx_dir, tmp_path)
    write_idx(directory / "train-labels-idx1-ubyte.gz", read_idx(directory / "train-labels-idx1-ubyte.gz")[:-1])
    with pytest.raises(DescentError, match="got shapes \\[600, 28, 28\\] and \\[599\\]"):
        load_idx(directory)


def test_a_missing_file_is_named(idx_dir: Path, tmp_path: Path) -> None:
    directory = idx_copy(idx_dir, tmp_path)
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DescentError, match="MNIST files not found in .* and data.download=false"):
        load_idx(directory)


VALID = bytes([0, 0, 8, 2, 0, 0, 0, 3, 0, 0, 0, 2]) + bytes(range(6))
"""An IDX file of a 3x2 uint8 array."""


def mutated(flips: bytes, cut: int, extra: bytes) -> bytes:
    """VALID with some bits flipped, then cut short and/or extended."""
    flipped = bytes(byte ^ flip for byte, flip in zip(VALID, flips.ljust(len(VALID), b"\0"), strict=True))
    return (flipped + extra)[:cut]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content=st.one_of(
        st.binary(max_size=64),
        st.builds(mutated, st.binary(max_size=len(VALID)), st.integers(0, 32), st.binary(max_size=8)),
    ),
    gzipped=st.booleans(),
)
def test_the_idx_reader_loads_any_bytes_or_raises_its_own_clear_error(tmp_path: Path, content: bytes, gzipped) -> None:
    path = tmp_path / ("f.gz" if gzipped else "f")
    path.write_bytes(gzip.compress(content) if gzipped and len(content) % 3 else content)  # and .gz that is not gzip
    try:
        array = read_idx(path)
    except DescentError as error:
        assert str(error).startswith(f"{path}: ")
    else:
        assert array.dtype == torch.uint8
        assert 4 + 4 * array.ndim + array.numel() == len(content)  # what the header declares is all there is


# Divergence.


def test_a_diverging_run_stops_at_once_keeps_the_last_good_checkpoint_and_says_so(make_cfg, tmp_path: Path) -> None:
    # The learning rate grows a hundred-thousandfold after epoch 1: epoch 1 is fine, epoch 2 blows up.
    cfg = make_cfg("max_epochs=4", "scheduler=exponential", "scheduler.gamma=100000", "batch_size=50")
    with pytest.raises(Diverged, match=r"training diverged at epoch 2, step \d+ of the epoch .* lower the learning"):
        train(cfg)
    run_dir = tmp_path / "run"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["stopped"]["reason"] == "diverged" and metrics["stopped"]["epoch"] == 2
    assert [row["epoch"] for row in metrics["history"]] == [1]
    last = load(run_dir / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 1  # the end of epoch 1, counted from 1 as every line of descent's
    assert all(torch.isfinite(tensor).all() for tensor in last["state_dict"].values())


@pytest.mark.slow
def test_divergence_on_the_command_line_is_one_line_and_a_nonzero_exit(idx_dir: Path, tmp_path: Path) -> None:
    done = run("src/train.py", *small(idx_dir), "optimizer.lr=1e6", f"hydra.run.dir={tmp_path}")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "training diverged at epoch 1, step" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["stopped"]["reason"] == "diverged"


# Interruption and resuming.

SLOW_EPOCHS = ["data=synthetic", "data.num_train=12000", "data.val_size=500", "batch_size=8", "model.net.hidden=[64]",
               "trainer=cpu", "logger.tensorboard.image_every_n_epochs=0"]  # fmt: skip
"""About a second or two an epoch of thousands of steps: long enough to stop in the middle of one."""


@pytest.mark.slow
@pytest.mark.parametrize(("sent", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_save_a_checkpoint_and_exit_cleanly(tmp_path: Path, sent: int, exit_code: int) -> None:
    process = start(*SLOW_EPOCHS, "max_epochs=50", f"hydra.run.dir={tmp_path}")
    wait_for(tmp_path / "checkpoints" / "last.ckpt", process)
    time.sleep(0.3)
    process.send_signal(sent)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == exit_code, stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("stopped:")]
    assert f"stopped: {signal.Signals(sent).name} before step" in line
    assert "Traceback" not in stderr
    interrupted = load(tmp_path / "checkpoints" / "interrupted.ckpt")  # weights_only=True
    last = load(tmp_path / "checkpoints" / "last.ckpt")
    assert interrupted["global_step"] > last["global_step"]
    assert json.loads((tmp_path / "metrics.json").read_text())["stopped"]["reason"] == "interrupted"


def test_resume_refuses_changed_settings_and_leaves_the_run_untouched(make_cfg, tmp_path: Path) -> None:
    """`python src/train.py resume=<run> ...`: the config is composed from the command line, then resumed_config
    refuses it (src/train.py prints the message as one line and exits 2, as every refusal of the settings)."""
    from descent.resume import resumed_config

    train(make_cfg(run_dir=tmp_path / "run"))
    before = digest(tmp_path / "run")

    def refusal(*typed: str) -> str:
        with pytest.raises(DescentError) as raised:
            resumed_config(make_cfg(*typed, run_dir=tmp_path / "r"), list(typed))
        return str(raised.value)

    assert refusal(f"resume={tmp_path / 'run'}", "optimizer.lr=0.3") == (
        f"resume={tmp_path / 'run'}: optimizer.lr (the run has 0.05, the command line 0.3) cannot change when "
        "a run goes on; only max_epochs, trainer, data.data_dir, data.system_dir, data.download, logger can (start a "
        "new run for other settings, or from these weights with ckpt_path=)"
    )
    assert refusal(f"resume={tmp_path / 'run'}", "max_epochs=2") == (
        f"resume={tmp_path / 'run'}: the run has finished 2 epochs, so max_epochs=2 leaves nothing to do; "
        "give max_epochs larger than 2 to train it longer"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert refusal(f"resume={empty}").startswith(f"resume={empty}: no config.yaml there")
    assert digest(tmp_path / "run") == before


@pytest.mark.slow
def test_the_runs_own_command_with_resume_appended_goes_on(idx_dir: Path, tmp_path: Path) -> None:
    """Up-arrow, append resume=: the overrides repeat the run's own values, which are not changes. The resumed
    epochs log into the run's own train.log, and no other run dir appears (started where logs/ is made)."""
    command = [str(ROOT / "src/train.py"), *small(idx_dir), "data=fashion_mnist", "seed=0", "optimizer=sgd"]
    first = run(*command, "max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert first.returncode == 0, first.stderr
    started_with = (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()
    again = run(*command, "batch_size=64", f"resume={tmp_path / 'run'}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("epoch 1 ") == 1 and log.count("epoch 2 ") == 1 and "final (epoch 2)" in log
    assert not (tmp_path / "logs").exists()
    assert (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text() == started_with


def test_resume_with_more_epochs_goes_on_in_the_same_dir(make_cfg, tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from descent.resume import resumed_config

    train(make_cfg("max_epochs=1"))
    cfg = make_cfg("max_epochs=3", f"resume={tmp_path / 'run'}", run_dir=tmp_path / "elsewhere")
    resumed = resumed_config(cfg, [f"resume={tmp_path / 'run'}", "max_epochs=3"])
    assert resumed.run_dir == str(tmp_path / "run") and resumed.max_epochs == 3
    saved = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert OmegaConf.to_container(resumed.model) == OmegaConf.to_container(saved.model)
    result = train(resumed)
    assert [row["epoch"] for row in result["history"]] == [1, 2, 3]
    assert not (tmp_path / "elsewhere").exists()


# Checkpoints: written atomically, loaded without unpickling code, checked against the model.


def test_a_checkpoint_write_that_dies_halfway_leaves_the_previous_one_whole(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)

    def dies_halfway(obj, file) -> None:
        file.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # as a kill would stop the write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, path)
    assert io.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_a_checkpoint_saved_in_the_background_holds_the_weights_of_when_it_was_asked_for(
    tmp_path: Path, monkeypatch
) -> None:
    """The write waits until the weights have changed in place, as the next epoch's steps change them."""
    import threading

    import descent.checkpoints

    weights_changed = threading.Event()

    def replace_later(path, write) -> None:
        assert weights_changed.wait(timeout=60)
        replace(path, write)

    replace = descent.checkpoints.replace
    monkeypatch.setattr(descent.checkpoints, "replace", replace_later)
    io = BackgroundCheckpointIO()
    weight = torch.ones(3)
    io.save_checkpoint({"state_dict": {"w": weight}, "epoch": 1}, tmp_path / "last.ckpt")
    weight.sub_(5.0)  # an optimizer step
    weights_changed.set()
    io.teardown()  # what `fit` calls at its end: waits for the write
    saved = io.load_checkpoint(tmp_path / "last.ckpt")
    assert saved["epoch"] == 1 and saved["state_dict"]["w"].tolist() == [1.0, 1.0, 1.0]


def test_a_checkpoint_write_that_fails_in_the_background_is_raised_by_the_time_fit_ends(tmp_path: Path) -> None:
    """At the latest by `teardown`; already by the save itself when the thread failed before it returned."""
    (tmp_path / "a file").write_text("not a directory")
    io = BackgroundCheckpointIO()
    with pytest.raises(DescentError, match=r"a file/last.ckpt: cannot be written \(File exists\)"):
        io.save_checkpoint({"state_dict": {}, "epoch": 1}, tmp_path / "a file" / "last.ckpt")
        io.teardown()


class Payload:
    """Anything that is not a tensor or plain data: unpickling it could run code."""


def test_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, path)
    with pytest.raises(DescentError, match=f"{path}: holds objects other than tensors and plain data"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_a_checkpoint_of_another_model_config_names_the_shapes_that_differ(make_cfg, tmp_path: Path) -> None:
    train(make_cfg("max_epochs=1"))
    other = Classifier(MLP((1, 28, 28), 10, hidden=[16]))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(DescentError, match=r"net.0.weight is \[32, 784\] there, \[16, 784\] here"):
        check_fits(ckpt, other)
    with pytest.raises(DescentError, match=r"was written by a different model"):
        train(make_cfg("model.net.hidden=[16]", f"ckpt_path={ckpt}", run_dir=tmp_path / "other"))


PHASES = ["on_train_batch_start", "on_validation_batch_start", "on_train_epoch_end", "on_validation_end"]
"""Where a stop signal may land: before a step, in the evaluation, between the step loop and the evaluation's end."""


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize(("name", "exit_code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_stop_signal_in_any_phase_saves_the_weights_and_marks_the_run(
    make_cfg, tmp_path: Path, phase: str, name: str, exit_code: int
) -> None:
    cfg = make_cfg("max_epochs=3", "logger=none", "+callbacks.signal._target_=helpers.SendSignal",
                   f"+callbacks.signal.signal_name={name}", f"+callbacks.signal.hook={phase}")  # fmt: skip
    with pytest.raises(Interrupted) as raised:
        train(cfg)
    assert raised.value.exit_code == exit_code
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "interrupted.ckpt").is_file()
    stopped = json.loads((run_dir / "metrics.json").read_text())["stopped"]
    assert stopped["reason"] == "interrupted" and stopped["message"].startswith(name)
    assert load(run_dir / "checkpoints" / "interrupted.ckpt")["global_step"] >= 8  # after epoch 1's steps


def damaged_checkpoints(good: Path, directory: Path) -> dict[str, tuple[Path, str]]:
    """Each kind of bad checkpoint file, beside the plain-words reason it must be refused with."""
    truncated, random_bytes = directory / "truncated.ckpt", directory / "random.ckpt"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    random_bytes.write_bytes(bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(0)).tolist()))
    return {
        "truncated": (truncated, "is cut short (the file ends before its index"),
        "random bytes": (random_bytes, "is not a checkpoint (not a file written by torch.save)"),
        "missing": (directory / "missing.ckpt", "no such checkpoint file"),
    }


def test_bad_checkpoints_are_refused_in_plain_words_by_train_and_eval(make_cfg, tmp_path: Path) -> None:
    """`ckpt_path=` of src/train.py (a warm start) and of src/eval.py, each composed as its command line composes it
    (test_eval_refuses_a_bad_checkpoint_in_one_line_and_exit_2: the line the command prints)."""
    from helpers import compose_eval

    from descent.evaluation import evaluate

    train(make_cfg("max_epochs=1", "logger=none", run_dir=tmp_path / "run"))
    checkpoints = tmp_path / "run" / "checkpoints"
    for kind, (path, reason) in damaged_checkpoints(checkpoints / "last.ckpt", checkpoints).items():
        for entry_point in ("train", "eval"):
            with pytest.raises(DescentError) as raised:
                if entry_point == "train":
                    train(make_cfg(f"ckpt_path={path}", run_dir=tmp_path / "again"))
                else:
                    evaluate(compose_eval(f"ckpt_path={path}", f"run_dir={tmp_path / 'eval'}"))
            said = str(raised.value)
            assert reason in said and "\n" not in said, (kind, entry_point, said)
            assert "weights_only" not in said and "miniz" not in said


@pytest.mark.slow
def test_eval_refuses_a_bad_checkpoint_in_one_line_and_exit_2(make_cfg, tmp_path: Path) -> None:
    train(make_cfg("max_epochs=1", "logger=none", run_dir=tmp_path / "run"))
    checkpoints = tmp_path / "run" / "checkpoints"
    path, reason = damaged_checkpoints(checkpoints / "last.ckpt", checkpoints)["truncated"]
    done = run("src/eval.py", f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and reason in line, line


def test_eval_without_a_checkpoint_says_how_to_give_one(tmp_path: Path) -> None:
    from helpers import compose_eval

    from descent.evaluation import evaluate

    with pytest.raises(DescentError) as raised:
        evaluate(compose_eval(f"run_dir={tmp_path}"))
    assert str(raised.value) == (
        "ckpt_path is missing: give the checkpoint to evaluate, e.g. python src/eval.py "
        "ckpt_path=logs/train/runs/<run>/checkpoints/best.ckpt"
    )


def test_a_resumed_run_keeps_every_csv_row_written_before(make_cfg, tmp_path: Path) -> None:
    """Lightning's CSVLogger deletes metrics.csv when a run reopens it; descent's keeps each epoch's row once."""
    import csv

    from descent.resume import resumed_config

    train(make_cfg("max_epochs=2", "logger=csv"))
    cfg = make_cfg("max_epochs=3", "logger=csv", f"resume={tmp_path / 'run'}", run_dir=tmp_path / "elsewhere")
    train(resumed_config(cfg, [f"resume={tmp_path / 'run'}", "max_epochs=3"]))
    with open(tmp_path / "run" / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    per_epoch = [row for row in rows if row.get("test/error")]
    assert [int(float(row["step"])) for row in per_epoch] == [1, 2, 3]  # the epoch axis: each epoch once
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    for row, expected in zip(per_epoch, final, strict=True):
        assert float(row["test/error"]) == pytest.approx(expected["test/error"])


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 2 MiB tmpfs: room for the first epoch's best.ckpt and last.ckpt (0.8 MB each), not for a third file."""
    if os.getuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("logger", ["none", "tensorboard"])
def test_a_disk_that_fills_up_ends_in_one_line_and_keeps_the_earlier_checkpoints(
    idx_dir: Path, tiny_disk: Path, logger: str, make_cfg
) -> None:
    """A checkpoint's write fails (logger=none), or TensorBoard's too: one message naming the run dir, no temporary
    file left, the earlier checkpoints whole. With TensorBoard as the user runs it (exit 2, one line on stderr); the
    checkpoint's case through `train`, which raises the message the command line prints after `error: `."""
    run_dir = tiny_disk / "run"
    overrides = ["model.net.hidden=[256]", "max_epochs=20", f"logger={logger}"]
    if logger == "tensorboard":
        done = run(
            "src/train.py", *small(idx_dir), *overrides, "logger.tensorboard.image_every_n_epochs=0",
            f"hydra.run.dir={run_dir}",
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
        message = errors[0]
    else:
        with pytest.raises(DescentError) as raised:
            train(make_cfg(*overrides, run_dir=run_dir))
        message = str(raised.value)
    assert str(run_dir) in message and "cannot be written" in message
    saved = sorted(path.name for path in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in saved and not [name for name in saved if name.endswith(".tmp")]
    assert load(run_dir / "checkpoints" / "last.ckpt")["epoch"] >= 0  # whole, and loads
