"""What the tests share, written once: small real data files, the command-line runner, the event-file reader.

Every run a test starts is pinned to the CPU (`CUDA_VISIBLE_DEVICES` empty for subprocesses, `trainer=cpu` or
`ddp_cpu` for composed configs), so the suite means the same on a machine with a GPU.
"""

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import lightning
import pytest
import torch
import torch.nn.functional as F
from data_files import write_idx
from filelock import FileLock
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from descent.errors import DescentError
from descent.training import build

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
OWN_CONF = Path(os.environ["DESCENT_CONF"]) if os.environ.get("DESCENT_CONF") else None
"""A fork's own config dir (`DESCENT_CONF=<dir> make test`), added to Hydra's search path after conf/ as
`src/train.py -cd <dir>` adds it: its files add options to conf/'s groups (a file of the same name as one of conf/'s
is shadowed by conf/'s, as on the command line)."""
CONF_DIRS = [CONF, OWN_CONF] if OWN_CONF else [CONF]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}


# Exact full-batch GD: what one chunked step must equal.

LR = 0.5
EXACT = ["optimizer=gd", f"optimizer.lr={LR}", "max_epochs=1", "trainer.precision=64-true", "logger=none"]
NETS = {"mlp": ["model=mlp"], "cnn": ["model=cnn"], "resnet": ["model=resnet", "model.net.width=4"]}
"""The shipped networks, as the exactness tests train them: the ResNet with 4 channels in its first stage instead of
16 (its BatchNorm groups and residual sums are the same, its float64 steps a fifth of the time)."""


def reference_step(make_cfg: Callable[..., DictConfig], *overrides: str) -> dict[str, torch.Tensor]:
    """theta^1 = theta^0 - lr * grad of the mean loss over all N samples, by autograd on the concatenated data."""
    cfg = make_cfg(*EXACT, *overrides)
    lightning.seed_everything(cfg.seed, verbose=False)
    data, model = build(cfg)
    net = model.net.double()
    images, y = data.sets["train"]
    smoothing = cfg.model.loss.get("label_smoothing", 0.0)
    loss = F.cross_entropy(net(images.normalised().double()), y, label_smoothing=smoothing)
    loss.backward()
    return {f"net.{name}": (p - LR * p.grad).detach() for name, p in net.named_parameters()}


def trained_step(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    buffers = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm's: not a step's result
    assert {name for name in got if not name.endswith(buffers)} == expected.keys()
    for name, value in expected.items():
        assert got[name].dtype == torch.float64
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-10, msg=name)


def learnable_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """28x28 uint8 images whose class is a bright horizontal band, under noise: an MLP learns it in an epoch."""
    labels = torch.randint(10, (n,), generator=generator)
    images = torch.randint(0, 96, (n, 28, 28), generator=generator)
    for row in range(2):
        images[torch.arange(n), 4 + 2 * labels + row, :] += 150
    return images.clamp(max=255).to(torch.uint8), labels.to(torch.uint8)


def write_idx_set(directory: Path, num_train: int = 600, num_test: int = 200, seed: int = 1) -> Path:
    """MNIST's four files, gzipped, of learnable images."""
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        images, labels = learnable_images(n, generator)
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


SMALL = ["trainer=cpu", "data.val_size=100", "max_epochs=2"]
"""Overrides that make a composed run take a second: the structure is the real one, only smaller (and a network
with hidden layers gets one of 32, unless the test says otherwise: `make_cfg`)."""


def compose_config(name: str, *overrides: str, return_hydra_config: bool = False) -> DictConfig:
    """`name` (train, eval) composed as the command line would: from conf/, with a fork's own dir after it on
    Hydra's search path, where `-cd` puts it."""
    given = any(override.startswith("hydra.searchpath=") for override in overrides)  # `searchpath` includes it
    layered = [f"hydra.searchpath=[file://{OWN_CONF}]"] if OWN_CONF and not given else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=[*layered, *overrides], return_hydra_config=return_hydra_config)


def searchpath(*dirs: Path) -> str:
    """`hydra.searchpath=` with config dirs of a test's own and, in a fork's tests, the fork's dir after them."""
    return "hydra.searchpath=[" + ",".join(f"file://{d}" for d in [*dirs, *([OWN_CONF] if OWN_CONF else [])]) + "]"


def compose_train(*overrides: str) -> DictConfig:
    """conf/train.yaml composed as the command line would."""
    return compose_config("train", *overrides)


def compose_eval(*overrides: str) -> DictConfig:
    """conf/eval.yaml composed as the command line would, on the CPU."""
    return compose_config("eval", "trainer.accelerator=cpu", *overrides)


def options(group: str) -> list[str]:
    """The options of a config group: its files in CONF_DIRS."""
    return sorted({path.stem for conf in CONF_DIRS for path in (conf / group).glob("*.yaml")})


def conf_file(relative: str) -> Path:
    """A config file as Hydra finds it: in the fork's own dir, else in conf/."""
    return next((conf / relative for conf in CONF_DIRS if (conf / relative).is_file()), CONF / relative)


def compose_train_small(*overrides: str, idx_dir: Path, run_dir: Path) -> DictConfig:
    """`compose_train` with SMALL, writing into run_dir, on the small IDX files unless `data.data_dir=` is given,
    and with hidden layers of 32 unless `model.net.hidden=` is given: what `make_cfg` and the DDP run compose."""
    cfg = compose_train(*SMALL, f"run_dir={run_dir}", *overrides)
    if "hidden" in cfg.model.net and not any(o.startswith("model.net.hidden=") for o in overrides):
        cfg.model.net.hidden = [32]
    if "data_dir" in cfg.data and not any(o.startswith("data.data_dir=") for o in overrides):
        cfg.data.data_dir, cfg.data.download = str(idx_dir), False  # never the network, never the user's data/
    return cfg


def refusal(action: Callable[[], object]) -> str:
    """The DescentError that `action` raises, as src/train.py and src/eval.py print it after `error: ` (a class's own
    check reaches them as the cause of Hydra's InstantiationException)."""
    try:
        action()
    except DescentError as error:
        return str(error)
    except InstantiationException as error:
        if not isinstance(error.__cause__, DescentError):
            raise
        return str(error.__cause__)
    raise AssertionError("not refused")


def small(idx_dir: Path) -> list[str]:
    """Appended to a README command: the tiny test files instead of real data, and a small network."""
    return [
        f"data.data_dir={idx_dir}",
        "data.download=false",
        "data.val_size=100",
        "model.net.hidden=[32]",
        "max_epochs=2",
    ]


def once_per_session(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], object]) -> Path:
    """The dir `make(dir)` fills, made once per pytest session: under `pytest -n` (make test) by the first worker to
    ask, while the others wait for it and then read what it made."""
    shared = factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        shared = shared.parent  # this session's dir, above each worker's own
    made, marker = shared / name, shared / f"{name}.made"
    with FileLock(shared / f"{name}.lock"):
        if not marker.is_file():
            shutil.rmtree(made, ignore_errors=True)  # what a worker that failed to make it left
            made.mkdir()
            make(made)
            marker.touch()
    return made


def environment(threads: int | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, **CPU_ONLY, **extra}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """`python <args>` as a user types it (src/train.py ..., src/eval.py ...), on the CPU; output captured."""
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env or environment()
    )


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """src/train.py in the background, on one thread: its steps are tiny, and two threads that wait on each other at
    every operation make them a hundred times slower while other processes share the two cores. `env`: variables
    added to the environment."""
    return subprocess.Popen(
        [sys.executable, "src/train.py", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(threads=1, **(env or {})),
    )


def finish(process: subprocess.Popen) -> str:
    """Wait for the process and return its stderr; it must have succeeded."""
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    return stderr


def wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def digest(directory: Path) -> dict[str, str]:
    """Every file under `directory` by its SHA-256: to check that nothing was changed."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in directory.rglob("*")
        if p.is_file()
    }


def events(run_dir: Path, **size_guidance: int) -> EventAccumulator:
    """TensorBoard's own reader over the event files in `run_dir` (0 in size_guidance: keep every point)."""
    accumulator = EventAccumulator(str(run_dir), size_guidance=size_guidance or None)
    accumulator.Reload()
    return accumulator


def points(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every scalar tag."""
    accumulator = events(run_dir, scalars=0)
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def scalars(run_dir: Path) -> dict[str, list[float]]:
    """The values of every scalar tag, in step order."""
    return {tag: [value for _, value in series] for tag, series in points(run_dir).items()}


class StopInEpoch(lightning.Callback):
    """Sets `trainer.should_stop` after the first step of epoch `epoch` (counted from 1), as a user's own callback
    may (`+callbacks.stop._target_=helpers.StopInEpoch +callbacks.stop.epoch=2`)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer: lightning.Trainer, *args: object) -> None:
        if trainer.current_epoch + 1 == self.epoch:
            trainer.should_stop = True


class SendSignal(lightning.Callback):
    """Sends this process `signal_name` from Lightning hook `hook` in epoch `epoch` (0-based), once: a stop signal
    driven into a chosen phase of a real run, deterministically (`+callbacks.signal._target_=helpers.SendSignal`)."""

    def __init__(
        self,
        signal_name: str | Sequence[str],
        hook: str,
        epoch: int = 1,
        batch: int | None = None,
        once_marker: str | None = None,
    ) -> None:
        """`once_marker`: a file that counts the signals sent: each is sent once in all, over a sweep's jobs and the
        runs that go on from them. Several names (`[SIGTERM,SIGINT]`, with `once_marker`) are sent in turn, at
        most one by each process: a run stopped by the first and going on is stopped again by the second."""
        self.names = [signal_name] if isinstance(signal_name, str) else list(signal_name)
        self.hook, self.epoch, self.batch, self.sent = hook, epoch, batch, False
        self.once_marker = Path(once_marker) if once_marker else None
        setattr(self, hook, self._send)

    def _send(self, trainer: lightning.Trainer, *args: object, **kwargs: object) -> None:
        """At the hook's first call in `epoch`, or its call for batch `batch` (a batch hook's batch_idx)."""
        place = 3 if self.hook.endswith("batch_end") else 2  # (module, [outputs,] batch, batch_idx, ...)
        batch_idx = args[place] if len(args) > place else kwargs.get("batch_idx")
        if self.batch is not None and batch_idx != self.batch:
            return
        marker = self.once_marker
        sent_before = int(marker.read_text()) if marker is not None and marker.exists() else 0
        if self.sent or sent_before == len(self.names) or trainer.current_epoch != self.epoch:
            return
        self.sent = True
        if marker is not None:
            marker.write_text(str(sent_before + 1))
        os.kill(os.getpid(), getattr(signal, self.names[sent_before]))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(command: list[str], ready_url: str) -> Iterator[None]:
    """A web server (`mlflow ui`, `optuna-dashboard`) for the block, once `ready_url` answers 200. In its own
    process group, so that the workers it starts (gunicorn's) go with it."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(ready_url, timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def rendered(page: str, profile: Path) -> str:
    """The page's DOM once headless Chromium (Debian's; .ci/run installs it) has run its scripts: what a browser
    shows, not only the served HTML. Skips the test where Chromium is not installed."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    shown = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", page],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-2000:]
    return shown.stdout
