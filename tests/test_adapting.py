"""The "Adapting descent" recipes (docs/adapting.md), followed as written.

Each test adds the files its recipe names, word for word, to `src/` and `conf/` of a copy of the repository's
entry point and configs under tmp_path (the repository itself is left alone), then trains with them as the recipe
says: `python src/train.py ...` there, or the same config composed in-process.
"""

import importlib
import itertools
import json
import logging
import math
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import CONF, ROOT, environment, refusal, run, scalars
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from recipes import (
    BIG_YAML,
    MY_BIG_DATA,
    MY_DATA,
    MY_NETS,
    MY_NPZ_YAML,
    SEARCH_SPACE_YAML,
    SMALL_CNN_YAML,
    quadrant_images,
)

from descent.config import check_config
from descent.data.idx import read_idx
from descent.nets import MLP
from descent.training import train

# What the tests share.


def user_copy(root: Path, files: dict[str, str]) -> Path:
    """conf/ and src/train.py copied under `root`, with the recipe's files added: src/train.py there reads that
    conf/ and imports the recipe's modules from that src/ (descent itself is the installed one)."""
    shutil.copytree(CONF, root / "conf")
    (root / "src").mkdir()
    shutil.copy(ROOT / "src" / "train.py", root / "src" / "train.py")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def in_process(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """root/src importable, as `python src/train.py` there makes it, for a run composed and trained in-process: the
    command line adds nothing to these recipes (test_another_network_is_a_class_and_a_model_yaml runs it)."""
    monkeypatch.syspath_prepend(str(root / "src"))
    for path in (root / "src").glob("my_*.py"):
        monkeypatch.delitem(sys.modules, path.stem, raising=False)  # another test's copy of the module
    return root


def compose_in(root: Path, *overrides: str, hydra: bool = False) -> DictConfig:
    """root/conf/train.yaml composed as src/train.py there would, with the recipe's modules importable."""
    with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


def on_idx(idx_dir: Path) -> list[str]:
    """The small IDX files instead of MNIST; any network (helpers.small also sets the MLP's width)."""
    return [f"data.data_dir={idx_dir}", "data.download=false", "data.val_size=100"]


def groupby_kind(reads: list[tuple[str, list[int]]]) -> list[tuple[str, list[list[int]]]]:
    """Consecutive reads of one kind, grouped: (kind, the rows of each read)."""
    return [(kind, [rows for _, rows in group]) for kind, group in itertools.groupby(reads, key=lambda read: read[0])]


def carved(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, val_size: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Training, validation and test sets as the README says descent serves them, made here independently: the
    validation set is the first val_size of a permutation seeded by split_seed (0), and every set is normalised by
    the mean and standard deviation of the training part."""
    x_train, x_test = (x.float() if x.ndim == 4 else x.float()[:, None] for x in (x_train, x_test))
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))
    train, val = order[val_size:], order[:val_size]
    mean, std = x_train[train].mean(), x_train[train].std()
    return {
        "train": ((x_train[train] - mean) / std, y_train[train].long()),
        "val": ((x_train[val] - mean) / std, y_train[val].long()),
        "test": ((x_test - mean) / std, y_test.long()),
    }


def mlp_of(run_dir: Path, input_shape: tuple[int, ...], num_classes: int, hidden: list[int]) -> MLP:
    """The MLP of the run's last checkpoint, built and loaded here."""
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    net = MLP(input_shape, num_classes, hidden=hidden)
    net.load_state_dict({name.removeprefix("net."): value for name, value in state.items()})
    return net.eval()


# 1. Another network


@pytest.mark.slow
def test_another_network_is_a_class_and_a_model_yaml(tmp_path: Path, idx_dir: Path, monkeypatch) -> None:
    root = user_copy(tmp_path, {"src/my_nets.py": MY_NETS, "conf/model/small_cnn.yaml": SMALL_CNN_YAML})
    recipe = ["src/train.py", "model=small_cnn", *on_idx(idx_dir)]
    env = environment(threads=1)
    done = run(*recipe, "model.net.channels=8", "max_epochs=3", f"hydra.run.dir={tmp_path / 'run'}", cwd=root, env=env)
    assert done.returncode == 0, done.stderr

    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    losses = [row["train/loss"] for row in history]
    assert len(losses) == 3 and losses[-1] < losses[0] and losses[-1] < math.log(10)  # below chance, and falling
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["net.features.0.weight"].shape == (8, 1, 3, 3)  # the recipe's CNN, at the width asked for
    assert state["net.logits.weight"].shape == (10, 8 * 7 * 7)

    # Its `check` refuses a bad setting before any data is looked for (the data dir does not exist), in the one line
    # the command line prints after `error: ` (as test_robustness's bad settings show).
    cfg = compose_in(in_process(root, monkeypatch), *recipe[1:], "model.net.channels=0", "data.data_dir=/nonexistent")
    assert (
        refusal(lambda: check_config(cfg)) == "model.net.channels=0 is not allowed: give a positive number of filters"
    )


def test_a_network_s_search_space_is_found_by_the_model_name(tmp_path: Path) -> None:
    files = {"conf/model/small_cnn.yaml": SMALL_CNN_YAML, "conf/search_space/optuna_small_cnn.yaml": SEARCH_SPACE_YAML}
    cfg = compose_in(user_copy(tmp_path, files), "model=small_cnn", "hparams_search=optuna", hydra=True)
    params = cfg.hydra.sweeper.params
    assert params["model.net.channels"] == "choice(8, 16, 32)"
    assert {"optimizer.lr", "batch_size", "optimizer.weight_decay"} <= set(params)  # conf/hparams_search/optuna.yaml


# 2. An in-memory data set


def test_an_in_memory_data_set_is_a_load_method_and_a_data_yaml(tmp_path: Path, monkeypatch) -> None:
    root = in_process(
        user_copy(tmp_path, {"src/my_data.py": MY_DATA, "conf/data/my_npz.yaml": MY_NPZ_YAML}), monkeypatch
    )
    rng = np.random.default_rng(0)
    (x_train, y_train), (x_test, y_test) = (quadrant_images(n, (3, 12, 12), rng) for n in (300, 120))
    np.savez(tmp_path / "my_set.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)

    run_dir = tmp_path / "run"
    overrides = ["data=my_npz", f"data.path={tmp_path / 'my_set.npz'}", "data.val_size=60", "optimizer=gd",
                 "optimizer.lr=0.5", "model.net.hidden=[32]", "max_epochs=2"]  # fmt: skip
    train(compose_in(root, *overrides, "trainer=cpu", f"run_dir={run_dir}"))

    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [row["progress/steps"] for row in history] == [1, 2]  # optimizer=gd: one step an epoch
    assert [row["progress/samples"] for row in history] == [240, 480]  # each over N = 300 - 60 samples
    # The last epoch's figures, from the checkpoint's network on the sets carved and normalised independently.
    sets = carved(*(torch.from_numpy(array) for array in (x_train, y_train, x_test, y_test)), val_size=60)
    net = mlp_of(run_dir, (3, 12, 12), 4, [32])
    with torch.no_grad():
        for name, (x, y) in sets.items():
            logits = net(x)
            assert history[-1][f"{name}/loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
            assert history[-1][f"{name}/error"] == int((logits.argmax(1) != y).sum()) / len(y)
    assert history[-1]["train/loss"] < math.log(4)  # it learned something from the file


# 3. A data set too big for memory


@pytest.fixture
def big_data_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[tuple[str, int, list[int]]]]:
    """The recipe's files, and the rows its images read: (what read, that set's length, rows), a chunk each.

    What reads is `train` when gradients are on (a training step), `eval` otherwise (the evaluations)."""
    user_copy(tmp_path, {"src/my_big_data.py": MY_BIG_DATA, "conf/data/big.yaml": BIG_YAML})
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.delitem(sys.modules, "my_big_data", raising=False)
    recipe = importlib.import_module("my_big_data")
    reads: list[tuple[str, int, list[int]]] = []

    class RecordedImages(recipe.MemmapImages):
        def read(self, indices):
            def noted(indices):
                for index in indices:
                    rows = self.rows[index if isinstance(index, slice) else index.cpu().numpy()]
                    kind = "train" if torch.is_grad_enabled() else "eval"
                    reads.append((kind, len(self) if "train" in self.path.name else -1, rows.tolist()))
                    yield index

            return super().read(noted(indices))

    monkeypatch.setattr(recipe, "MemmapImages", RecordedImages)  # what the recipe's load and subset build
    return tmp_path, reads


@pytest.mark.parametrize(("optimizer", "steps_per_epoch"), [("sgd", math.ceil(500 / 64)), ("gd", 1)])
def test_a_data_set_too_big_for_memory_is_read_on_demand(
    big_data_recipe: tuple[Path, list[tuple[str, int, list[int]]]], optimizer: str, steps_per_epoch: int
) -> None:
    root, reads = big_data_recipe
    data_dir = root / "big"
    data_dir.mkdir()
    rng = np.random.default_rng(1)
    for split, n in (("train", 600), ("test", 200)):
        images, labels = quadrant_images(n, (3, 8, 8), rng)
        images.tofile(data_dir / f"{split}_x.u8")
        np.save(data_dir / f"{split}_y.npy", labels)
    cfg = compose_in(
        root,
        "trainer=cpu",
        "data=big",
        f"data.data_dir={data_dir}",
        "data.image_shape=[3,8,8]",
        "data.val_size=100",
        f"optimizer={optimizer}",
        "batch_size=64",
        "optimizer.lr=0.2",
        "model.net.hidden=[32]",
        "max_epochs=3",
        f"run_dir={root / 'run'}",
    )
    result = train(cfg)

    history = result["history"]
    assert [row["progress/steps"] for row in history] == [steps_per_epoch * k for k in (1, 2, 3)]
    assert history[-1]["train/loss"] < history[0]["train/loss"] < math.log(4)
    # The training set's 500 rows: read once by every evaluation, and once by the training steps of every epoch
    # (an epoch's training reads are those between two evaluations).
    train_reads = [(kind, rows) for kind, length, rows in reads if length == 500]
    evaluated = Counter(row for kind, rows in train_reads if kind == "eval" for row in rows)
    assert len(evaluated) == 500 and set(evaluated.values()) == {3}
    epochs = [[row for rows in group for row in rows] for kind, group in groupby_kind(train_reads) if kind == "train"]
    assert len(epochs) == 3
    for rows in epochs:
        assert sorted(rows) == sorted(evaluated)
    if optimizer == "sgd":  # a fresh order each epoch
        assert epochs[0] != epochs[1] != epochs[2]
    # The validation rows are the other 100 of the file's 600.
    val_rows = {row for kind, length, rows in reads if length == 100 for row in rows}
    assert val_rows | set(evaluated) == set(range(600)) and not val_rows & set(evaluated)


# 4. A new metric


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def doc_section(title: str) -> str | None:
    """The text under the heading `title` (any level) in the README or a docs/ page, up to the next heading; a `#`
    line inside a code block is no heading. None where no page has it, as a README of one's own may not."""
    for page in DOCS:
        lines, fenced, section = page.read_text().splitlines() if page.is_file() else [], False, None
        for line in lines:
            fenced ^= line.startswith("```")
            heading = not fenced and re.match(r"#{1,6} ", line)
            if heading and section is not None:
                return "\n".join(section)
            if heading and line.lstrip("#").strip() == title:
                section = []
            elif section is not None:
                section.append(line)
        if section is not None:
            return "\n".join(section)
    return None


def readme_files(title: str) -> dict[str, str]:
    """The files a recipe prints: each fenced block whose first line is `# src/...` or `# conf/...`."""
    text = doc_section(title)
    if text is None:
        pytest.skip(f"README.md and docs/ have no section {title!r}: no recipe to follow")
    files = {}
    for block in text.split("```")[1::2]:
        body = block.split("\n", 1)[1]
        for line in body.splitlines()[:2]:  # the path, or a Hydra header and then the path
            if line.startswith(("# src/", "# conf/")):
                files[line[2:].split()[0]] = body
    return files


def test_a_readme_of_one_s_own_skips_the_recipes_it_does_not_hold(tmp_path: Path, monkeypatch) -> None:
    """A fork's README without the recipes: their tests skip in one line, and a `# ...` line in a code block is no
    heading that ends a section."""
    own = tmp_path / "README.md"
    own.write_text("# mine\n\n## Another loss\n\n```python\n# src/my_losses.py\nx = 1\n```\n\n# Next\n")
    monkeypatch.setattr(sys.modules[__name__], "DOCS", [tmp_path / "absent.md", own])
    assert readme_files("Another loss") == {"src/my_losses.py": "# src/my_losses.py\nx = 1\n"}
    with pytest.raises(pytest.skip.Exception, match="^README.md and docs/ have no section 'A new metric'"):
        readme_files("A new metric")


def last_logits(run_dir: Path, idx_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every set's logits at the last checkpoint's MLP 784-32-10, computed here, and its labels."""
    x_train, x_test = (read_idx(idx_dir / f"{prefix}-images-idx3-ubyte.gz") for prefix in ("train", "t10k"))
    y_train, y_test = (read_idx(idx_dir / f"{prefix}-labels-idx1-ubyte.gz") for prefix in ("train", "t10k"))
    net = mlp_of(run_dir, (1, 28, 28), 10, [32])
    with torch.no_grad():
        sets = carved(x_train, y_train, x_test, y_test, val_size=100)
        return {name: (net(x.float()).double(), y) for name, (x, y) in sets.items()}


def test_a_new_metric_is_a_yaml_or_a_metric_class_of_your_own(
    tmp_path: Path, idx_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    files = readme_files("A new metric")
    assert set(files) == {"conf/metrics/weighted_f1.yaml", "src/my_metrics.py", "conf/metrics/top2_error.yaml"}
    root = in_process(user_copy(tmp_path, files), monkeypatch)
    run_dir = tmp_path / "run"
    caplog.set_level(logging.INFO)
    slowly = ["model.net.hidden=[32]", "max_epochs=3", "optimizer.lr=0.002"]  # errors and top-2 errors above 0
    train(compose_in(root, "metrics=[weighted_f1,top2_error]", "monitor=val/weighted_f1", *on_idx(idx_dir), *slowly,
                     "trainer=cpu", f"run_dir={run_dir}"))  # fmt: skip
    result = json.loads((run_dir / "metrics.json").read_text())
    history = result["history"]
    assert result["mode"] == "max" and result["best"] == max(history, key=lambda row: row["val/weighted_f1"])
    logged = scalars(run_dir)
    for name in ("train", "val", "test"):
        for metric in ("weighted_f1", "top2_error"):
            per_epoch = [row[f"{name}/{metric}"] for row in history]
            assert logged[f"{name}/{metric}"] == pytest.approx(per_epoch, rel=1e-6)  # events hold float32
    # The last epoch's figures, recomputed from last.ckpt: a sample is a top-2 error when two classes score higher.
    from torchmetrics.functional.classification import multiclass_f1_score

    for name, (logits, y) in last_logits(run_dir, idx_dir).items():
        higher = (logits > logits.gather(1, y[:, None])).sum(1)
        expected = int((higher >= 2).sum()) / len(y)
        assert history[-1][f"{name}/top2_error"] == pytest.approx(expected, abs=1e-6)  # computed in float32
        assert 0 < expected < history[-1][f"{name}/error"]  # a figure of its own, not the top-1 error
        weighted = float(multiclass_f1_score(logits, y, 10, average="weighted"))
        assert history[-1][f"{name}/weighted_f1"] == pytest.approx(weighted, abs=1e-6)
    assert any("val weighted_f1" in message for message in caplog.messages)  # the console's table


@pytest.mark.slow
def test_another_loss_is_a_function_and_a_loss_yaml(tmp_path: Path, idx_dir: Path, monkeypatch) -> None:
    """The README's focal loss: the figures are its mean over each set, and one GD step in chunks of 7 equals the
    step in one chunk (float64), so the chunk sums hold for it."""
    files = readme_files("Another loss")
    assert set(files) == {"src/my_losses.py", "conf/loss/focal.yaml"}
    root = in_process(user_copy(tmp_path, files), monkeypatch)
    common = ["loss=focal", "optimizer=gd", *on_idx(idx_dir), "model.net.hidden=[32]", "trainer=cpu"]
    for chunk in ("7", "full"):
        train(compose_in(root, *common, "max_epochs=1", f"chunk_size={chunk}", "trainer.precision=64-true",
                         "logger=none", f"run_dir={tmp_path / chunk}"))  # fmt: skip
    chunked, whole = (torch.load(tmp_path / c / "checkpoints" / "last.ckpt")["state_dict"] for c in ("7", "full"))
    for name, value in whole.items():
        torch.testing.assert_close(chunked[name], value, rtol=0, atol=1e-10, msg=name)

    final = train(compose_in(root, *common, "max_epochs=2", f"run_dir={tmp_path / 'run'}"))["final"]
    for name, (logits, y) in last_logits(tmp_path / "run", idx_dir).items():
        log_p = F.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
        focal = float((-((1 - log_p.exp()) ** 2.0) * log_p).mean())
        assert final[f"{name}/loss"] == pytest.approx(focal, rel=1e-5)
        assert final[f"{name}/loss"] < float(F.cross_entropy(logits, y))  # the focal loss, not cross-entropy


def test_another_logger_is_a_class_and_a_logger_yaml(tmp_path: Path, idx_dir: Path, monkeypatch) -> None:
    files = readme_files("Another logger")
    assert set(files) == {"src/my_loggers.py", "conf/logger/jsonl.yaml"}
    root = in_process(user_copy(tmp_path, files), monkeypatch)
    run_dir = tmp_path / "run"
    history = train(compose_in(root, "logger=[tensorboard,jsonl]", *on_idx(idx_dir), "model.net.hidden=[32]",
                               "max_epochs=3", "trainer=cpu", f"run_dir={run_dir}"))["history"]  # fmt: skip
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    per_epoch = [line for line in lines if "val/loss" in line]
    assert [line["step"] for line in per_epoch] == [1, 2, 3]  # the epoch k
    for key in ("train/loss", "val/error", "test/acc", "progress/lr"):
        assert [line[key] for line in per_epoch] == pytest.approx([row[key] for row in history], rel=1e-6)
    assert scalars(run_dir)["val/loss"] == pytest.approx([row["val/loss"] for row in history], rel=1e-6)


# 5. Your files pass the suite


# tests/test_fork.py adds recipes 1 and 2 to a fork's own config dir and runs tests/test_config.py there: every
# config test that composes their options passes.
