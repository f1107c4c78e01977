"""descent's sweepers where Hydra takes plugins from: classes defined in the `hydra_plugins` namespace (Hydra
registers a plugin under the module it is defined in). What they do is in `descent.launches` and `descent.search`."""

from descent import launches, search


class BasicSweeper(launches.BasicSweeper):
    """Hydra's basic sweeper, ending in one line when jobs failed, and going on where a stopped sweep stopped."""


class OptunaSweeper(search.OptunaSweeper):
    """An Optuna search of descent's own: pruning, failed trials recorded, a stopped search going on."""
