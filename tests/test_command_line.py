"""Keys on the command line (descent.command_line): a mistyped key, with `+` or without, is one line naming the
nearest key and a command that works, before torch loads; a class's own argument and `data.train_size` are taken.

Most cases call the check in this process; the subprocesses show what only they can (exit code, stderr, imports).
"""

import importlib
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT, compose_config, run

from descent.command_line import check_arguments
from descent.errors import DescentError
from descent.multirun import check_one_run

TRAIN = ROOT / "src" / "train.py"


@pytest.fixture(autouse=True)
def at_the_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Commands are printed relative to the working dir, as a user at the repository's root types them; modules a
    test writes are found afresh."""
    monkeypatch.chdir(ROOT)
    importlib.invalidate_caches()
    yield


def refusal(*argv: str) -> str:
    with pytest.raises(DescentError) as refused:
        check_arguments(list(argv), TRAIN, config_path="../conf", config_name="train")
    return str(refused.value)


def accept(*argv: str) -> None:
    check_arguments(list(argv), TRAIN, config_path="../conf", config_name="train")


REFUSED = [
    (["+max_epoch=1"], "max_epoch is not a setting: did you mean max_epochs? (python src/train.py max_epochs=1)"),
    (
        ["+optimzer.lr=0.1"],
        "optimzer.lr is not a setting: did you mean optimizer.lr? (python src/train.py optimizer.lr=0.1)",
    ),
    (
        ["+model.net.dropuot=0.1"],
        "model.net.dropuot is not a setting of descent.nets.MLP: did you mean model.net.dropout? "
        "(python src/train.py model.net.dropout=0.1)",
    ),
    (
        ["model=cnn", "+model.net.dropout=0.5"],
        "model.net.dropout is not a setting of descent.nets.LeNet, which takes channels, hidden: drop it "
        "(python src/train.py model=cnn)",
    ),
    (
        ["+trainer.gradient_clip_vall=1"],
        "trainer.gradient_clip_vall is not a setting of lightning.pytorch.Trainer: did you mean "
        "trainer.gradient_clip_val? (python src/train.py trainer.gradient_clip_val=1)",
    ),
    (  # an argument its yaml does not list, without the + Hydra needs to add it
        ["optimizer=momentum", "optimizer.nesterov=true"],
        "optimizer.nesterov is not in the config yet: add it with + "
        "(python src/train.py optimizer=momentum +optimizer.nesterov=true)",
    ),
    (  # listed by some of a sweep's configs: Hydra would refuse the sweep in a dozen lines
        ["-m", "optimizer=sgd,momentum", "optimizer.momentum=0.5"],
        "optimizer.momentum is in some of the sweep's configs only: give it with ++, which sets or adds it "
        "(python src/train.py -m optimizer=sgd,momentum ++optimizer.momentum=0.5)",
    ),
    (  # a setting of one job of a sweep, of no class in another: Hydra would refuse the sweep in a dozen lines
        ["-m", "optimizer=momentum,adam", "optimizer.momentum=0.9"],
        "optimizer.momentum is not a setting of torch.optim.Adam (the sweep's job with optimizer=adam): drop it, or "
        "sweep the jobs that take it apart (python src/train.py -m optimizer=momentum,adam)",
    ),
    (  # ++ sets or adds a key in every job: one whose class does not take it would fail after the others trained
        ["-m", "model=mlp,cnn", "++model.net.dropout=0.1"],
        "model.net.dropout is not a setting of descent.nets.LeNet (the sweep's job with model=cnn): drop it, or "
        "sweep the jobs that take it apart (python src/train.py -m model=mlp,cnn)",
    ),
    (  # an argument of one job's class and of no other's, added with +
        ["-m", "optimizer=momentum,adam", "+optimizer.nesterov=true"],
        "optimizer.nesterov is not a setting of torch.optim.Adam (the sweep's job with optimizer=adam): drop it, or "
        "sweep the jobs that take it apart (python src/train.py -m optimizer=momentum,adam)",
    ),
    (  # the same in a sweep too large to compose every combination of: the first job whose class does not take it
        ["-m", "optimizer=gd,sgd,adam,momentum", "model=mlp,cnn,resnet", "batch_size=32,64", "+optimizer.amsgrad=true"],
        "optimizer.amsgrad is not a setting of torch.optim.SGD (the sweep's job with optimizer=gd model=mlp): "
        "drop it, or sweep the jobs that take it apart (python src/train.py -m "
        "optimizer=gd,sgd,adam,momentum model=mlp,cnn,resnet batch_size=32,64)",
    ),
    (  # Hydra reads optimizer.lr as nodes of params, and refuses a sweep of its own settings: the key itself works
        ["-m", "hparams_search=optuna", "hydra.sweeper.params.optimizer.lr=interval(0.01,0.1)"],
        "hydra.sweeper.params.optimizer.lr is not a search dimension Hydra takes on the command line: give it as "
        "optimizer.lr= (python src/train.py -m hparams_search=optuna 'optimizer.lr=interval(0.01,0.1)')",
    ),
    (
        ["-m", "hparams_search=optuna", "+hydra.sweeper.params.seed=choice(1,2)"],
        "hydra.sweeper.params.seed is not a search dimension Hydra takes on the command line: give it as seed= "
        "(python src/train.py -m hparams_search=optuna 'seed=choice(1,2)')",
    ),
    (  # an argument its yaml does not list keeps its +
        ["optimizer=adam", "+optimizer.amsgrd=true"],
        "optimizer.amsgrd is not a setting of torch.optim.Adam: did you mean optimizer.amsgrad? "
        "(python src/train.py optimizer=adam +optimizer.amsgrad=true)",
    ),
    (
        ["+optimzer.momentum=0.9"],
        "optimzer.momentum is not a setting: did you mean optimizer.momentum? "
        "(python src/train.py +optimizer.momentum=0.9)",
    ),
    (
        ["-m", "optimizer=gd,sgd", "batch_size=32,64", "+optimizer.momentumm=0.9"],
        "optimizer.momentumm is not a setting of torch.optim.SGD: did you mean optimizer.momentum? "
        "(python src/train.py -m optimizer=gd,sgd batch_size=32,64 +optimizer.momentum=0.9)",
    ),
    (
        ["~noise.enabld"],
        "noise.enabld is not a setting: did you mean noise.enabled? (python src/train.py '~noise.enabled')",
    ),
    (["+max_epochs=1"], "max_epochs is a setting already: give it without + (python src/train.py max_epochs=1)"),
    (
        ["+data.train_size=500"],
        "data.train_size is a setting already: give it without + (python src/train.py data.train_size=500)",
    ),
    (
        ["+data.batch_size=32"],
        "data.batch_size is set by descent from batch_size: give batch_size instead "
        "(python src/train.py batch_size=32)",
    ),
    (
        ["+foo=1", "seed=1"],
        "foo is not a setting (python src/train.py --cfg job lists them): drop it (python src/train.py seed=1)",
    ),
    (
        ["optimizer=nope"],
        "optimizer=nope is not an option of optimizer: choose one of adam, gd, lbfgs, momentum, sgd (the files in "
        "conf/optimizer/)",
    ),
    (["-m", "model=mlp,cnm"], "model=cnm is not an option of model: choose one of cnn, mlp, resnet"),
    (["callbacks=[early_stopping,nope]"], "callbacks=nope is not an option of callbacks: choose one of"),
    (
        ["-m", "hparams_search=optuna", "hydra/sweeper/pruner=medain"],
        "hydra/sweeper/pruner=medain is not an option of hydra/sweeper/pruner: choose one of hyperband, median, none,",
    ),
    (["-m", "--cfg", "job", "optimizer=sgd"], "-m and --cfg cannot be given together: Hydra does one of them"),
    (
        ["-m", "hparams_search=optuna", "hydra.sweeper.n_trail=5"],
        "hydra.sweeper.n_trail is not a setting of hydra_plugins.descent_sweepers.OptunaSweeper: did you mean "
        "hydra.sweeper.n_trials? (python src/train.py -m hparams_search=optuna hydra.sweeper.n_trials=5)",
    ),
    (
        ["-m", "hydra/launcher=submitit_local", "+hydra.launcher.cpus_per_tsk=2"],
        "hydra.launcher.cpus_per_tsk is not a setting of hydra_plugins.hydra_submitit_launcher.submitit_launcher."
        "LocalLauncher: did you mean hydra.launcher.cpus_per_task?",
    ),
    (
        ["-m", "hydra/launcher=submitit_locl"],
        "hydra/launcher=submitit_locl is not an option of hydra/launcher: choose one of basic, slurm, submitit_local,",
    ),
]


def test_several_values_without_m_are_one_line_that_adds_it() -> None:
    """Hydra's four lines weigh a list, a string and a sweep; a group's choice is no list."""
    assert refusal("optimizer=gd,sgd", "seed=1") == (
        "optimizer=gd,sgd is several values: add -m to run a job for each (python src/train.py -m optimizer=gd,sgd "
        "seed=1)"
    )
    assert refusal("model.net.hidden=64,32") == (
        "model.net.hidden=64,32 is several values: add -m to run a job for each (python src/train.py -m "
        "model.net.hidden=64,32), or, for a list, model.net.hidden=[64,32]"
    )
    assert refusal("seed=range(3)") == (
        "seed=range(3) is several values: add -m to run a job for each (python src/train.py -m 'seed=range(3)')"
    )
    assert refusal("--cfg", "job", "batch_size=32,64").startswith(
        "batch_size=32,64 is several values, and --cfg shows one run's: give one value"
    )
    assert refusal("-m", "optimizer=gd,sgd", "--help") == (  # Hydra's help composes one run: its traceback
        "optimizer=gd,sgd is several values, and --help shows one run's: give one value"
    )
    accept("model.net.hidden=[64,32]")
    accept("-m", "model.net.hidden=64,32", "seed=range(3)")


def test_hydra_mode_multirun_is_taken_as_m(tmp_path: Path) -> None:
    """Hydra's other way to ask for a sweep: `hydra.mode=MULTIRUN` on the command line, or in a config of one's own
    (an experiment that is always a sweep)."""
    accept("hydra.mode=MULTIRUN", "optimizer=gd,sgd", "seed=1,2")
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "seeds.yaml").write_text("# @package _global_\nhydra:\n  mode: MULTIRUN\n")
    accept("-cd", str(tmp_path), "experiment=seeds", "seed=1,2,3")
    assert refusal("hydra.mode=RUN", "seed=1,2").startswith("seed=1,2 is several values: add -m")


@pytest.mark.parametrize(("argv", "message"), REFUSED, ids=[" ".join(argv) for argv, _ in REFUSED])
def test_an_unknown_key_is_refused_naming_the_nearest_one(argv: list[str], message: str) -> None:
    assert refusal(*argv).startswith(message)


ACCEPTED = [
    ["data.train_size=500"],
    ["data=synthetic", "data.train_size=500", "data.num_train=600"],
    ["experiment=edge_of_stability", "data.train_size=100"],
    ["+trainer.max_time=00:02:00:00", "trainer.max_epochs=3"],
    ["optimizer=adam", "+optimizer.amsgrad=true"],
    ["data.augment={crop_padding:2}", "+data.augment.flip=false"],  # inside a value: descent.data.augment checks it
    [
        "+callbacks.signal._target_=helpers.SendSignal",
        "+callbacks.signal.signal_name=SIGINT",
        "+callbacks.signal.hook=on_train_start",
    ],
    [
        "+metrics.confusion._target_=torchmetrics.classification.MulticlassConfusionMatrix",
        "+metrics.confusion.normalize=true",
    ],
    ["model.loss._target_=torch.nn.functional.cross_entropy", "++model.loss._partial_=true", "~model.loss.reduction"],
    ["-m", "optimizer=gd,sgd,adam,momentum", "model=mlp,cnn,resnet", "batch_size=32,64", "+optimizer.maximize=false"],
    ["hydra.run.dir=/tmp/elsewhere", "+hydra.job.env_set.SEED=1"],
    ["-m", "hparams_search=optuna", "hydra/sweeper/pruner=median", "hydra/launcher=submitit_local"],
    [  # the search's and the launcher's own settings; its dimensions
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=5",
        "hydra.sweeper.sampler.seed=3",
        "optimizer.lr=interval(0.01,0.1)",  # a dimension of the search, in place of its space's
        "seed=choice(1,2)",
        "hydra.sweeper.params.hidden_width='choice(128,256)'",  # a one-word key of the space, a quoted value
        "hydra/launcher=submitit_local",
        "hydra.launcher.cpus_per_task=2",
    ],
    ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "+hydra.launcher.additional_parameters.account=me"],
    ["hydra/job_logging=disabled"],  # Hydra's own options of its own groups
    ["--cfg", "job", "optimizer=sgd"],
    ["--help", "+max_epoch=1"],  # help is printed whatever follows
]


@pytest.mark.parametrize("argv", ACCEPTED, ids=[" ".join(argv) for argv in ACCEPTED])
def test_settings_and_a_class_s_own_arguments_are_accepted(argv: list[str]) -> None:
    accept(*argv)


def test_a_network_s_own_argument_is_accepted_and_its_typo_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's network class taking an argument no yaml lists: `+model.net.<it>` is the one place for `+`."""
    (tmp_path / "tiny_nets.py").write_text(
        textwrap.dedent(
            """
            from descent.nets import MLP

            class GatedMLP(MLP):
                def __init__(self, *args, gate_bias: float = 0.0, **kwargs):
                    super().__init__(*args, **kwargs)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    net = "model.net._target_=tiny_nets.GatedMLP"
    accept(net, "+model.net.gate_bias=0.5", "model.net.dropout=0.1")  # its own, and MLP's through **kwargs
    assert refusal(net, "+model.net.gate_bais=0.5") == (
        "model.net.gate_bais is not a setting of tiny_nets.GatedMLP: did you mean model.net.gate_bias? "
        "(python src/train.py model.net._target_=tiny_nets.GatedMLP +model.net.gate_bias=0.5)"
    )


def test_a_config_dir_of_your_own_is_checked_as_hydra_reads_it(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tiny.yaml").write_text("_target_: descent.data.synthetic.SyntheticData\nnum_train: 300\n")
    accept("-cd", str(tmp_path), "data=tiny", "data.num_train=200", "+data.noise=0.5")
    message = refusal("-cd", str(tmp_path), "data=tiny", "+data.num_trian=200")
    assert message.startswith("data.num_trian is not a setting of descent.data.synthetic.SyntheticData: did you mean")
    assert message.endswith(f"(python src/train.py -cd {tmp_path} data=tiny data.num_train=200)")


def test_data_train_size_needs_no_plus_and_trains_on_that_many(make_cfg) -> None:
    from descent.training import build

    data, _ = build(make_cfg("data.train_size=100"))
    assert len(data.sets["train"][1]) == 100


SUBPROCESSES = [
    (
        ["src/train.py", "max_epoch=1"],
        "max_epoch is not a setting: did you mean max_epochs? (python src/train.py max_epochs=1)",
    ),
    (  # --cfg job: before the check, this printed the config (and without it trained 10 epochs)
        ["src/train.py", "--cfg", "job", "+max_epoch=1"],
        "max_epoch is not a setting: did you mean max_epochs? (python src/train.py --cfg job max_epochs=1)",
    ),
    (
        ["src/train.py", "--cfg", "job", "+optimzer.lr=0.1"],
        "optimzer.lr is not a setting: did you mean optimizer.lr? (python src/train.py --cfg job optimizer.lr=0.1)",
    ),
    (
        ["src/eval.py", "ckpt_paht=x.ckpt"],
        "ckpt_paht is not a setting: did you mean ckpt_path? (python src/eval.py ckpt_path=x.ckpt)",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "line"), SUBPROCESSES, ids=[" ".join(argv) for argv, _ in SUBPROCESSES])
def test_the_entry_points_refuse_a_mistyped_key_in_one_line_with_exit_code_2(argv: list[str], line: str) -> None:
    done = run(*argv)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"error: {line}"


@pytest.mark.slow
def test_train_py_takes_data_train_size_and_a_network_argument_without_plus_where_listed() -> None:
    done = run("src/train.py", "--cfg", "job", "data.train_size=500", "model=cnn", "+trainer.max_time=00:01:00:00")
    assert done.returncode == 0, done.stderr
    assert "train_size: 500" in done.stdout and "max_time: 00:01:00:00" in done.stdout


@pytest.mark.slow
def test_the_check_reads_classes_without_importing_torch() -> None:
    """The arguments of torch's, Lightning's and descent's classes are read from their source: a typo costs a
    fraction of a second, not torch's seconds of imports."""
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from descent.command_line import check_arguments
        from descent.errors import DescentError

        script = Path({str(TRAIN)!r})
        accepted = ["optimizer=adam", "optimizer.lr=0.1", "data.train_size=5"]
        check_arguments(accepted, script, "../conf", "train")
        try:
            check_arguments(["+max_epoch=1", "data.train_size=5"], script, "../conf", "train")
        except DescentError:
            pass
        else:
            raise SystemExit("not refused")
        loaded = sorted(name for name in ("torch", "lightning", "torchmetrics") if name in sys.modules)
        raise SystemExit(f"loaded {{loaded}}" if loaded else 0)
        """
    )
    done = run("-c", code)
    assert done.returncode == 0, done.stderr + done.stdout


def one_run_refusal(*overrides: str, typed: list[str] | None = None) -> str | None:
    """What `check_one_run` says of the run Hydra composes without -m from `overrides` (None: nothing)."""
    hydra_cfg = compose_config("train", *overrides, return_hydra_config=True).hydra
    try:
        check_one_run(hydra_cfg, list(overrides) if typed is None else typed, TRAIN)
    except DescentError as refused:
        return str(refused)
    return None


def test_a_search_a_declared_sweep_or_a_launcher_without_m_is_refused_not_run_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without -m Hydra runs one job and never calls the sweeper or launcher: a search, an experiment's sweep or a
    SLURM launcher would silently have been one local run."""
    assert one_run_refusal("hparams_search=optuna", "max_epochs=1") == (
        "hparams_search=optuna is a search of several trials, which Hydra runs only with -m: add it "
        "(python src/train.py -m hparams_search=optuna max_epochs=1)"
    )
    assert one_run_refusal("hydra/sweeper=optuna").startswith("hydra/sweeper=optuna is a search of several trials")
    assert one_run_refusal("experiment=gd_vs_sgd") == (
        "this config sweeps method=gd,lbfgs,sgd_b16,sgd_b64,sgd_b256,sgd_b1024 (hydra.sweeper.params, from "
        "experiment=gd_vs_sgd), which Hydra runs only with -m: add it to run a job for each "
        "(python src/train.py -m experiment=gd_vs_sgd), or give method=<one value> for one run"
    )
    assert one_run_refusal("hydra/launcher=slurm") == (
        "hydra/launcher=slurm launches a sweep's jobs, which Hydra does only with -m: add it to launch this run as "
        "a sweep of one job (python src/train.py -m hydra/launcher=slurm)"
    )
    # One run, as asked: the defaults, one arm of the study, and a sweep's job under -m.
    assert one_run_refusal() is None
    assert one_run_refusal("experiment=gd_vs_sgd", "method=gd") is None
    noise = ["experiment=critical_batch", "noise.enabled=true", "batch_size=256", "optimizer.lr=0.3"]
    assert one_run_refusal(*noise) is None  # docs/studies.md's B_simple run beside the critical-batch sweep
    multirun = compose_config("train", "hparams_search=optuna", return_hydra_config=True).hydra
    multirun.mode = "MULTIRUN"
    check_one_run(multirun, ["-m", "hparams_search=optuna"], TRAIN)
    # Ranks 1..G-1 of a trial's DDP job, started by Lightning with the job's overrides and without -m.
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert one_run_refusal("hparams_search=optuna") is None
