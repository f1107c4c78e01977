"""A search's section of the report (`src/report.py <sweep dir>` where the dir holds an Optuna study): Optuna's own
optimisation history and parameter importances, and every trial's `monitor` against the epoch, the best trials in
colour and the pruned ones ending in a cross where they were stopped.

The study is read from the storage the sweep's multirun.yaml names (descent.search: optuna.db or optuna.journal in
the sweep dir, or a database URL), the trials' curves from their run dirs (descent.runs), so the figures are those
of metrics.json. No torch here.
"""

import warnings
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from descent.runs import Run, read_runs

BEST_SHOWN = 5
"""Trials drawn in colour; the others are grey."""


def stored_study(sweep_dir: Path) -> Any:
    """The search's study, from the storage and study name its sweep's multirun.yaml names (a grid sweep's, or a
    run dir's, has none: None)."""
    from omegaconf import OmegaConf

    from descent.search import open_storage, storage_of

    saved = sweep_dir / "multirun.yaml"
    sweeper = OmegaConf.load(saved).hydra.get("sweeper", {}) if saved.is_file() else {}
    if "OptunaSweeper" not in str(sweeper.get("_target_", "")):
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_of(sweeper.get("storage", "sqlite"), sweep_dir))
    return optuna.load_study(study_name=sweeper.get("study_name", "descent"), storage=storage)


def curves(study: Any, runs: dict[str, Run], title: str) -> Figure:
    """Each trial's `monitor` against the epoch: the BEST_SHOWN best complete trials in colour, the rest grey, a
    pruned trial's curve ending in a cross."""
    import optuna

    complete = sorted(
        (t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE),
        key=lambda t: t.value if study.direction == optuna.study.StudyDirection.MINIMIZE else -t.value,
    )
    best = {trial.number: index for index, trial in enumerate(complete[:BEST_SHOWN])}
    figure = Figure(figsize=(8, 5), layout="constrained")
    ax = figure.subplots()
    monitor = "monitor"
    for trial in study.trials:
        run = runs.get(f"trial:{trial.number}")
        if run is None or not run.history or run.monitor is None:
            continue
        monitor = run.monitor
        epochs, values = run.series("epoch"), run.series(run.monitor)
        if trial.number in best:
            ax.plot(epochs, values, color=f"C{best[trial.number]}", linewidth=2, marker=".",
                    label=f"trial {trial.number}: {trial.value:.4g}", zorder=3)  # fmt: skip
        else:
            ax.plot(epochs, values, color="0.6", linewidth=1, alpha=0.7, zorder=1)
        if trial.state == optuna.trial.TrialState.PRUNED:
            ax.plot(epochs[-1:], values[-1:], "x", color="black", markersize=7, zorder=4)
    ax.plot([], [], "x", color="black", label="pruned (stopped here)")
    ax.set(xlabel="epoch", ylabel=monitor, title=title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return figure


def optuna_figure(draw: Any, study: Any, path: Path) -> str:
    """One of Optuna's matplotlib plots saved to `path`; "" if drawn, else why not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            ax = draw(study)
    except (ValueError, RuntimeError) as error:  # e.g. importances need two complete trials
        return f"({path.name} not drawn: {error})"
    figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    figure.set_size_inches(8, 5)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return ""


def search_section(sweep_dir: Path) -> str:
    """The search's figures and its trials' states, or "" where the dir holds no study."""
    study = stored_study(sweep_dir)
    if study is None:
        return ""
    import optuna
    from optuna.visualization import matplotlib as plots

    from descent.search import trial_states

    counts = ", ".join(f"{count} {state}" for state, count in trial_states(study).items())
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = (
        f"Best: trial {study.best_trial.number}, {study.best_value:.4g} at {study.best_trial.params}."
        if complete
        else ""
    )
    by_name = {run.name: run for run in read_runs(sweep_dir)}  # pruned ones too
    curves(study, by_name, f"{sweep_dir.name}: each trial").savefig(sweep_dir / "search_curves.png", dpi=100)
    history = optuna_figure(plots.plot_optimization_history, study, sweep_dir / "search_history.png")
    importances = optuna_figure(plots.plot_param_importances, study, sweep_dir / "search_importances.png")
    lines = [
        f"## Search: study {study.study_name}",
        "",
        f"{len(study.trials)} trials: {counts}. {best}".strip(),
        "",
        "![each trial's monitor against the epoch, pruned ones stopped at a cross](search_curves.png)",
        "",
        history or "![Optuna's optimization history](search_history.png)",
        "",
        importances or "![Optuna's parameter importances](search_importances.png)",
        "",
    ]
    return "\n".join(lines)
