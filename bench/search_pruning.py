"""A search with and without pruning: the same sampler, seed and space, on a Fashion-MNIST subset.

Each search is `python src/train.py -m hparams_search=optuna ...` as a user runs it (one process, trials one after
another), timed whole. Printed: trials by state, training epochs spent, wall time, the best val error found; and the
best val error found against the epochs spent so far, drawn to docs/search_pruning.png.

    python bench/search_pruning.py [--trials 30] [--epochs 10] [--train-size 5000] [--pruner median]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parent.parent


def search(sweep_dir: Path, trials: int, epochs: int, train_size: int, pruner: str) -> float:
    """Run one search into `sweep_dir`; its wall seconds."""
    command = [
        sys.executable, "src/train.py", "-m", "hparams_search=optuna", f"hydra.sweeper.n_trials={trials}",
        f"hydra/sweeper/pruner={pruner}", "data=fashion_mnist", f"data.train_size={train_size}",
        f"max_epochs={epochs}", "trainer=cpu", "logger=none", "seed=0", f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds


def progress(sweep_dir: Path) -> list[tuple[int, float]]:
    """(epochs spent so far, best val error so far) after each trial, in trial order."""
    study = optuna.load_study(study_name="descent", storage=f"sqlite:///{sweep_dir}/optuna.db")
    spent, best, points = 0, float("inf"), []
    for trial in study.trials:
        metrics = sweep_dir / f"trial:{trial.number}" / "metrics.json"
        history = json.loads(metrics.read_text())["history"] if metrics.is_file() else []
        spent += len(history)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            best = min(best, trial.value)
        points.append((spent, best))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--pruner", default="median")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "search_pruning.png")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows, curves = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for pruner in ("none", args.pruner):
            sweep_dir = Path(scratch) / pruner
            seconds = search(sweep_dir, args.trials, args.epochs, args.train_size, pruner)
            study = optuna.load_study(study_name="descent", storage=f"sqlite:///{sweep_dir}/optuna.db")
            states = [trial.state.name.lower() for trial in study.trials]
            curves[pruner] = progress(sweep_dir)
            epochs, best = curves[pruner][-1]
            counts = [states.count(state) for state in ("complete", "pruned", "fail")]
            rows.append((pruner, len(states), *counts, epochs, seconds, best))
    print(f"Fashion-MNIST, {args.train_size} training samples, {args.trials} trials of at most {args.epochs} epochs, "
          "TPE seed 0, conf/hparams_search/optuna.yaml's space")  # fmt: skip
    print("| pruner | trials | complete | pruned | failed (diverged) | training epochs | wall time | best val error |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for pruner, trials, complete, pruned, failed, epochs, seconds, best in rows:
        counts = f"{trials} | {complete} | {pruned} | {failed} | {epochs}"
        print(f"| {pruner} | {counts} | {seconds:.0f} s | {100 * best:.2f}% |")
    (*_, epochs_none, seconds_none, _), (*_, epochs_pruned, seconds_pruned, _) = rows
    print(f"pruned / unpruned: epochs {epochs_pruned / epochs_none:.2f}, wall time {seconds_pruned / seconds_none:.2f}")
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.subplots()
    for pruner, points in curves.items():
        shown = [(e, 100 * b) for e, b in points if b != float("inf")]
        ax.step(*zip(*shown, strict=True), where="post", marker=".", label=pruner)
    title = f"{args.trials} trials on Fashion-MNIST ({args.train_size} samples): pruner none vs {args.pruner}"
    ax.set(xlabel="training epochs spent", ylabel="best val error found (%)", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    figure.savefig(args.figure, dpi=100)
    print(f"figure: {args.figure.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
