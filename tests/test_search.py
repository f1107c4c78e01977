"""The Optuna search (descent.search, descent.trial): its space, samplers, pruners and storage; a search that prunes
and outlives a failed trial; a search killed and continued where it stopped."""

import csv
import json
import os
import signal
import sys
from pathlib import Path

import optuna
import pytest
from helpers import ROOT, compose_config, free_port, options, refusal, rendered, run, serving, start, wait_for
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from descent.multirun import LONGEST_NAME, job_dir_name, sweep_going_on
from descent.search import (
    build_pruner,
    build_sampler,
    distribution,
    grid,
    hydra_literal,
    open_storage,
    override_of,
    search_space,
    storage_of,
    tell,
)

TINY = ("data=synthetic", "data.num_train=1200", "data.num_test=300", "data.val_size=200", "data.noise=6")
"""A data set a trial trains on in a second."""


def parsed(override: str):  # type: ignore[no-untyped-def]
    (result,) = OverridesParser.create().parse_overrides([override])
    return result


def test_hydras_optuna_syntax_becomes_optunas_distributions() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    assert distribution(parsed("lr=tag(log, interval(0.005, 0.5))")) == FloatDistribution(0.005, 0.5, log=True)
    assert distribution(parsed("wd=interval(0.0, 0.1)")) == FloatDistribution(0.0, 0.1)
    assert distribution(parsed("width=int(interval(16, 256))")) == IntDistribution(16, 256)  # an interval is float
    assert distribution(parsed("width=tag(log, int(interval(16, 256)))")) == IntDistribution(16, 256, log=True)
    assert distribution(parsed("batch_size=choice(32, 64)")) == CategoricalDistribution([32, 64])
    assert distribution(parsed("act=choice(relu, tanh)")) == CategoricalDistribution(["relu", "tanh"])
    assert distribution(parsed("depth=range(1, 5)")) == IntDistribution(1, 4)  # stop excluded, as Python's
    assert distribution(parsed("depth=range(2, 9, 3)")) == IntDistribution(2, 8, step=3)
    assert distribution(parsed("p=range(0.0, 0.5, 0.25)")) == FloatDistribution(0.0, 0.25, step=0.25)
    assert distribution(parsed("seed=3")) == "3"  # a fixed value
    space, fixed = search_space(["batch_size=choice(32, 64)", "seed=3", "batch_size=64"])
    assert (space, fixed) == ({}, {"seed": "3", "batch_size": "64"})  # the command line's wins over params
    assert grid(search_space(["b=choice(32, 64)", "depth=range(1, 4)"])[0]) == {"b": [32, 64], "depth": [1, 2, 3]}
    with pytest.raises(Exception, match="the grid sampler takes choice"):
        grid(search_space(["lr=interval(0.1, 1.0)"])[0])


def test_a_sampled_value_reaches_its_job_as_it_was_drawn() -> None:
    """A choice of strings may hold a comma (a sweep to Hydra) or read as a number or null: each job override
    parses back to the very value drawn."""
    parser = OverridesParser.create()
    for value in ("a,b", "1", "null", "it's", "relu", 0.1, 32, True):
        (back,) = parser.parse_overrides([override_of("key", value)])
        assert not back.is_sweep_override() and back.value() == value and type(back.value()) is type(value)


def test_a_grid_search_ends_and_goes_on_through_the_same_grid(tmp_path: Path) -> None:
    """The grid sampler stops its study when the grid is used up (an error outside Study.optimize): the last tell
    records the trial and the search ends. A continued grid search keeps the grid's order, so that every value is
    tried once."""
    hydra = compose_config("train", "hparams_search=optuna", "hydra/sweeper/sampler=grid", "seed=3",
                           return_hydra_config=True).hydra  # fmt: skip
    space, _ = search_space(["width=choice(1, 2, 3, 4, 5, 6)"])
    storage = storage_of("sqlite", tmp_path)
    study = optuna.create_study(storage=storage, study_name="g", sampler=build_sampler(hydra.sweeper.sampler, space))
    for _ in range(3):  # a search stopped after three trials...
        trial = study.ask(space)
        tell(study, trial.number, float(trial.params["width"]), None)
    again = optuna.load_study(storage=storage, study_name="g")  # ... and continued
    again.sampler = build_sampler(hydra.sweeper.sampler, space, trials_so_far=len(again.trials))
    for _ in range(3):
        trial = again.ask(space)
        tell(again, trial.number, float(trial.params["width"]), None)  # the last one stops the study: no error
    assert sorted(t.params["width"] for t in again.trials) == [1, 2, 3, 4, 5, 6]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in again.trials)


def test_a_trial_reports_each_epoch_but_is_not_pruned_after_its_last_and_a_finished_one_is_left_alone(
    make_cfg, tmp_path: Path
) -> None:
    """A pruner that would stop anything: a one-epoch trial still completes (after its last epoch it has a
    result, not a pruned run). The same run extended by hand (`resume=`) once its trial is finished goes on
    without reporting to it (Optuna refuses reports to a finished trial)."""
    from descent.resume import resumed_config
    from descent.training import train

    storage = storage_of("sqlite", tmp_path)
    study = optuna.create_study(storage=storage, study_name="descent")
    asked = study.ask()
    about = {"number": asked.number, "id": asked._trial_id, "study_name": "descent", "storage": storage,
             "pruner": {"_target_": "optuna.pruners.ThresholdPruner", "upper": 0.0}}  # fmt: skip
    run_dir = tmp_path / "trial"
    result = train(make_cfg("max_epochs=1", "logger=none", f"trial={hydra_literal(about)}", run_dir=run_dir))
    assert result["ended"]["reason"] == "max_epochs"
    (trial,) = optuna.load_study(storage=storage, study_name="descent").trials
    assert trial.intermediate_values == {1: result["history"][0]["val/error"]}
    tell(study, asked.number, result["best"]["val/error"], None)
    cfg = make_cfg("max_epochs=2", "logger=none", f"resume={run_dir}", run_dir=tmp_path / "elsewhere")
    longer = train(resumed_config(cfg, [f"resume={run_dir}", "max_epochs=2"]))
    assert [row["epoch"] for row in longer["history"]] == [1, 2]
    (trial,) = optuna.load_study(storage=storage, study_name="descent").trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and list(trial.intermediate_values) == [1]


@pytest.mark.parametrize("sampler", options("hydra/sweeper/sampler"))
def test_every_sampler_composes_and_instantiates(sampler: str) -> None:
    hydra = compose_config("train", "hparams_search=optuna", f"hydra/sweeper/sampler={sampler}", "seed=4",
                           return_hydra_config=True).hydra  # fmt: skip
    space, _ = search_space(["batch_size=choice(32, 64)", "depth=range(1, 3)"])
    built = build_sampler(hydra.sweeper.sampler, space)
    assert isinstance(built, optuna.samplers.BaseSampler)
    assert type(built).__name__ == hydra.sweeper.sampler._target_.rsplit(".", 1)[-1]
    study = optuna.create_study(sampler=built)  # it draws from the space
    trial = study.ask(space)
    assert trial.params["batch_size"] in (32, 64) and trial.params["depth"] in (1, 2)
    # A continued search's sampler draws anew (the grid's keeps its order: the test of the grid search below).
    continued = build_sampler(hydra.sweeper.sampler, space, trials_so_far=5)
    if getattr(continued, "_rng", None) is not None:
        drawn, drawn_again = continued._rng.rng.bytes(8), build_sampler(hydra.sweeper.sampler, space)._rng.rng.bytes(8)
        assert (drawn == drawn_again) == (sampler == "grid")


@pytest.mark.parametrize("pruner", options("hydra/sweeper/pruner"))
def test_every_pruner_composes_and_instantiates(pruner: str) -> None:
    hydra = compose_config("train", "hparams_search=optuna", f"hydra/sweeper/pruner={pruner}", "max_epochs=9",
                           return_hydra_config=True).hydra  # fmt: skip
    built = build_pruner(hydra.sweeper.pruner)
    expected = "NopPruner" if pruner == "none" else hydra.sweeper.pruner._target_.rsplit(".", 1)[-1]
    assert type(built).__name__ == expected
    if pruner == "hyperband":
        assert built._max_resource == 9  # the run's length
    # What each trial's job gets in its `trial` key reads back as the same settings.
    settings = OmegaConf.to_container(hydra.sweeper.pruner, resolve=True)
    (override,) = OverridesParser.create().parse_overrides([f"trial={hydra_literal({'pruner': settings})}"])
    assert override.value() == {"pruner": settings}


def test_the_storage_is_a_file_of_the_sweep_dir_or_a_url(tmp_path: Path) -> None:
    assert storage_of("sqlite", tmp_path) == f"sqlite:///{tmp_path}/optuna.db"
    assert storage_of("journal", tmp_path) == f"{tmp_path}/optuna.journal"
    assert storage_of("postgresql://host/db", tmp_path) == "postgresql://host/db"
    message = refusal(lambda: storage_of("memory", tmp_path))
    assert message.startswith("hydra.sweeper.storage=memory: give sqlite (a file in the sweep dir), journal")


@pytest.mark.slow
def test_a_bad_search_setting_is_one_line_before_any_trial(tmp_path: Path) -> None:
    done = run("src/train.py", "-m", "hparams_search=optuna", "hydra.sweeper.storage=memroy", *TINY,
               f"hydra.sweep.dir={tmp_path / 'sweep'}")  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: hydra.sweeper.storage=memroy: give sqlite (a file in the sweep dir)")
    assert not (tmp_path / "sweep").exists()


def test_resume_of_a_sweep_dir_is_the_sweeps_own_command_and_refuses_other_settings(tmp_path: Path) -> None:
    own = ["hydra.mode=MULTIRUN", "hydra.sweep.dir=elsewhere", "hydra.verbose=true"]
    hydra = {"overrides": {"task": ["optimizer=sgd,momentum", "seed=0,1"], "hydra": own}}
    OmegaConf.save(OmegaConf.create({"hydra": hydra}), tmp_path / "multirun.yaml")
    again = sweep_going_on([f"resume={tmp_path}", "hydra/launcher=slurm"])
    assert again == ["-m", "optimizer=sgd,momentum", "seed=0,1", "hydra.verbose=true", f"hydra.sweep.dir={tmp_path}",
                     "hydra/launcher=slurm"]  # fmt: skip
    assert sweep_going_on([f"resume={tmp_path / 'nothing'}"]) is None  # a run dir's resume= is train.py's own
    for changed in ("max_epochs=9", "hydra.sweeper.params.optimizer.lr=choice(0.1)", "hydra.sweep.subdir=x"):
        message = refusal(lambda changed=changed: sweep_going_on([f"resume={tmp_path}", changed]))
        assert message == (
            f"resume={tmp_path}: a sweep goes on with its own settings, so {changed} cannot be given; start a new "
            "sweep for other settings (only hydra/launcher=, hydra.launcher., hydra.sweeper.n_trials=, "
            "hydra.sweeper.n_jobs=, hydra.verbose= may be added)"
        )
    more = sweep_going_on([f"resume={tmp_path}", "hydra.sweeper.n_trials=40", "hydra.launcher.timeout_min=60"])
    assert more is not None and more[-2:] == ["hydra.sweeper.n_trials=40", "hydra.launcher.timeout_min=60"]


def test_a_search_going_on_takes_its_sweepers_and_launchers_settings_and_refuses_their_typos(tmp_path: Path) -> None:
    """src/train.py checks the command `resume=<sweep dir>` becomes: the sweep's own sweeper and launcher."""
    from descent.command_line import check_arguments

    own = ["hydra.mode=MULTIRUN", "hydra/launcher=submitit_local"]
    hydra = {"overrides": {"task": ["hparams_search=optuna", "max_epochs=2"], "hydra": own}}
    OmegaConf.save(OmegaConf.create({"hydra": hydra}), tmp_path / "multirun.yaml")
    train_py = ROOT / "src" / "train.py"
    going_on = sweep_going_on([f"resume={tmp_path}", "hydra.sweeper.n_trials=40", "hydra.launcher.timeout_min=60"])
    assert going_on is not None
    check_arguments(going_on, train_py, "../conf", "train")  # optuna's n_trials, submitit's timeout_min: taken
    mistyped = sweep_going_on([f"resume={tmp_path}", "hydra.launcher.timeout_mn=60"])
    assert mistyped is not None
    message = refusal(lambda: check_arguments(mistyped, train_py, "../conf", "train"))
    assert message.startswith("hydra.launcher.timeout_mn is not a setting of ") and "timeout_min? (" in message


def test_a_job_dir_name_too_long_for_a_file_system_is_cut_and_stays_unique() -> None:
    long = "+".join(f"key_{i}:{'x' * 20}" for i in range(20))
    name, other = job_dir_name(long), job_dir_name(long + "y")
    assert len(name) == LONGEST_NAME and name.startswith(long[:150]) and name != other
    assert job_dir_name("batch_size:32+model.net.hidden:[64,32]") == "batch_size:32+model.net.hidden:64-32"


def test_a_stopped_runs_error_crosses_processes_whole() -> None:
    """A job of SLURM's launcher returns its error pickled to the sweep: a diverged or interrupted run's must load
    there as what it was (it failed to, ending the whole sweep)."""
    import pickle

    from descent.stopping import Diverged, Interrupted

    for error in (Diverged(2, 7, "training diverged"), Interrupted(1, 3, "SIGTERM before step 3", "SIGTERM")):
        again = pickle.loads(pickle.dumps(error))
        assert (type(again), again.epoch, again.step, str(again)) == (type(error), error.epoch, error.step, str(error))
        assert again.exit_code == error.exit_code


def read_summary_runs(sweep_dir: Path) -> dict[str, dict[str, str]]:
    with open(sweep_dir / "summary.csv", newline="") as file:
        return {row["run"]: row for row in csv.DictReader(file) if row["row"] == "run"}


def trials(sweep_dir: Path) -> list[optuna.trial.FrozenTrial]:
    """The trials of the study in the sweep dir, whichever storage holds it."""
    storage = "journal" if (sweep_dir / "optuna.journal").is_file() else "sqlite"
    return optuna.load_study(study_name="descent", storage=open_storage(storage_of(storage, sweep_dir))).trials


@pytest.mark.slow
def test_a_search_prunes_bad_trials_and_outlives_a_failed_one(tmp_path: Path) -> None:
    """Three trials of three learning rates, two at a time in processes of their own (submitit's local launcher,
    the SLURM launcher's sibling): 0.1 completes, 1e6 diverges (FAIL), and 1e-4, started after both, learns too
    slowly and is pruned after its first epoch against the median of the others. Each state is the study's, the
    summary's and the run dir's alike."""
    done = run(
        "src/train.py", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
        "hydra/launcher=submitit_local", "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hidden_width=choice(8,16,24,32)",  # narrow: as many options as the MLP's search space, drawn in its order
        "optimizer.lr=choice(1000000.0,0.1,0.0001)", *TINY,
        "max_epochs=3", "trainer=cpu", "logger=none", f"hydra.sweep.dir={tmp_path}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    study = trials(tmp_path)
    rows = read_summary_runs(tmp_path)
    assert len(study) == len(rows) == 3
    states = {trial.number: trial.state.name for trial in study}
    assert {"COMPLETE", "PRUNED", "FAIL"} <= set(states.values()), states
    for trial in study:
        row, run_dir = rows[f"trial:{trial.number}"], tmp_path / f"trial:{trial.number}"
        lr = row["optimizer.lr"]
        assert float(lr) == trial.params["optimizer.lr"]
        status = {"COMPLETE": "ok", "PRUNED": "pruned", "FAIL": "failed"}[trial.state.name]
        assert row["status"] == status, (lr, row["status"])
        if status == "failed":
            assert lr == "1000000.0" and "training diverged" in row["error"]
            continue
        result = json.loads((run_dir / "metrics.json").read_text())
        epochs = [row["epoch"] for row in result["history"]]
        assert trial.intermediate_values == {k: r["val/error"] for k, r in zip(epochs, result["history"], strict=True)}
        assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "checkpoints" / "best.ckpt").is_file()
        if status == "pruned":  # stopped after an epoch, its figures so far kept, marked pruned
            assert epochs == [1] and result["ended"]["reason"] == "pruned"
            assert result["ended"]["message"] == (
                f"pruned after epoch 1: MedianPruner stopped trial {trial.number} of study descent"
            )
            assert row["error"] == result["ended"]["message"] and float(row["best val/error"]) == trial.value
        else:
            assert epochs == [1, 2, 3] and trial.value == result["best"]["val/error"] == float(row["best val/error"])
            config = (run_dir / "config.yaml").read_text()
            width = row["hidden_width"]  # the searched width reaches the network
            assert f"    hidden:\n    - {width}\n    - {width}\n" in config
    (note,) = [line for line in done.stderr.splitlines() if line.startswith("note: ")]
    assert note.startswith(f"note: {list(states.values()).count('FAIL')} of 3 trials failed")
    summary = (tmp_path / "summary.md").read_text()
    assert f", {list(states.values()).count('PRUNED')} pruned (stopped early by the search's pruner)" in summary
    results = OmegaConf.load(tmp_path / "optimization_results.yaml")
    best = min(trial.value for trial in study if trial.state.name == "COMPLETE")
    assert results.best_value == best and results.best_params["optimizer.lr"] == 0.1
    assert results.trials == {state.lower(): list(states.values()).count(state) for state in set(states.values())}


@pytest.mark.slow
def test_a_search_killed_mid_trial_goes_on_from_its_study_and_the_trials_checkpoint(tmp_path: Path) -> None:
    """kill -9 of the search's process (and so of the trial it ran) in trial 1's second epoch; then
    `resume=<sweep dir>`: trial 0 is read back as it was, trial 1 goes on from its last.ckpt, and the search ends
    with n_trials trials. The study in Optuna's journal file, as on a network file system."""
    sweep = (
        "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.storage=journal",
        "optimizer.lr=choice(0.05,0.1)",
        "data=synthetic", "data.num_train=6000", "data.num_test=300", "data.val_size=200", "data.noise=6",
        "model.net.hidden=[64]", "max_epochs=3", "trainer=cpu", "logger=none", f"hydra.sweep.dir={tmp_path}",
    )  # fmt: skip
    process = start(*sweep)
    wait_for(tmp_path / "trial:1" / "checkpoints" / "last.ckpt", process)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    first = (tmp_path / "trial:0" / "metrics.json").read_text()
    stopped = {trial.number: (trial.state.name, trial.intermediate_values) for trial in trials(tmp_path)}
    assert stopped[0][0] == "COMPLETE" and stopped[1][0] == "RUNNING" and 1 in stopped[1][1]

    done = run("src/train.py", f"resume={tmp_path}", "hydra.sweeper.n_trials=3")  # checked as the search's sweeper's
    assert done.returncode == 0, done.stderr
    assert f"{tmp_path}: 0 of these 1 jobs finished before (read back, not run again), 1 go on from a checkpoint" in (
        done.stdout
    )
    study = trials(tmp_path)
    assert [trial.number for trial in study] == [0, 1, 2] and all(t.state.name == "COMPLETE" for t in study)
    assert (tmp_path / "trial:0" / "metrics.json").read_text() == first  # a finished trial is not run again
    assert {k: str(v) for k, v in study[1].params.items()} == ran_with(tmp_path, 1)  # its own values, as before
    history = json.loads((tmp_path / "trial:1" / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[0]["val/error"] == stopped[1][1][1]  # epoch 1 as it was before the kill, from the checkpoint
    going_on = f"going on from {tmp_path}/trial:1/checkpoints/last.ckpt: step "
    assert going_on in (tmp_path / "trial:1" / "train.log").read_text()
    assert len(read_summary_runs(tmp_path)) == 3


def ran_with(sweep_dir: Path, number: int) -> dict[str, str]:
    """The searched values a trial's job ran with, from its .hydra/overrides.yaml."""
    saved = OmegaConf.load(sweep_dir / f"trial:{number}" / ".hydra" / "overrides.yaml")
    searched = ("optimizer.lr", "batch_size", "optimizer.weight_decay", "hidden_width")
    return dict(pair for pair in (item.split("=", 1) for item in saved) if pair[0] in searched)


@pytest.mark.slow
def test_optuna_dashboard_shows_a_searchs_trials_and_their_intermediate_values(tmp_path: Path) -> None:
    """`optuna-dashboard` (the optuna extra) on a study stored as a search stores it, rendered by headless Chromium:
    each trial, its parameters and the intermediate values chart."""
    storage = storage_of("sqlite", tmp_path)
    study = optuna.create_study(study_name="descent", storage=storage)
    space = {"optimizer.lr": optuna.distributions.FloatDistribution(0.005, 0.5, log=True)}
    for number, curve in enumerate(([0.4, 0.3, 0.2], [0.6])):
        trial = study.ask(space)
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, step=epoch)
        study.tell(
            trial, curve[-1] if len(curve) == 3 else None, state=None if number == 0 else optuna.trial.TrialState.PRUNED
        )
    port = free_port()
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    with serving([str(dashboard), storage, "--host", "127.0.0.1", "--port", str(port)],
                 f"http://127.0.0.1:{port}/api/studies"):  # fmt: skip
        page = rendered(f"http://127.0.0.1:{port}/dashboard/studies/1", tmp_path / "chromium")
        trials_page = rendered(f"http://127.0.0.1:{port}/dashboard/studies/1/trials", tmp_path / "chromium")
    assert "descent" in page and "trial #0" in page and "trial #1" in page
    assert "Intermediate values" in page  # the per-epoch curves' chart
    lr = study.trials[0].params["optimizer.lr"]
    assert f"optimizer.lr {lr}" in trials_page and "Pruned" in trials_page


@pytest.mark.slow
def test_a_trial_on_two_ranks_reports_once_and_both_stop_when_pruned(ddp_runs: dict[str, Path]) -> None:
    """Rank 0 reports and asks the pruner (a threshold every error exceeds); both ranks stop after epoch 1 (a rank
    that went on would wait for the other forever, and torchrun fail)."""
    run_dir = ddp_runs["pruned_trial"]
    result = json.loads((run_dir / "metrics.json").read_text())
    assert [row["epoch"] for row in result["history"]] == [1]
    assert result["ended"]["message"] == "pruned after epoch 1: ThresholdPruner stopped trial 0 of study descent"
    (trial,) = optuna.load_study(study_name="descent", storage=f"sqlite:///{run_dir.parent}/optuna.db").trials
    assert trial.intermediate_values == {1: result["history"][0]["val/error"]}  # one report, of the whole set
