"""What `monitor` may name, and which way is better: descent's own figures by name, a configured metric by its
torchmetrics class's `higher_is_better`. Imports neither torch nor torchmetrics, so that the Hydra resolvers
registered here (`${monitor_mode:${monitor}}`, `${monitor_direction:${monitor}}`) serve a sweeper's config before
a job loads them."""

from collections.abc import Mapping
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from descent.errors import require

EVAL_SETS = ("train", "val", "test")
"""The sets evaluated after every epoch, in this order (descent.data.EVAL_SETS)."""

LOWER_IS_BETTER = ("loss", "error")
"""descent's figures whose test-minus-train `gap/` is logged (the sign of overfitting) and that the console shows;
the best epoch by them is where they are lowest."""

HIGHER_IS_BETTER = ("acc",)


def higher_is_better(monitor: str, metric_nodes: Mapping[str, Any] | None) -> bool | None:
    """Whether `monitor` ({set}/{name}) is better higher, from descent's lists or the metric's class; None for a
    name that is neither, or a class that does not say."""
    stage, _, name = monitor.partition("/")
    if stage not in EVAL_SETS:
        return None
    if name in LOWER_IS_BETTER or name in HIGHER_IS_BETTER:
        return name in HIGHER_IS_BETTER
    node = (metric_nodes or {}).get(name)
    if node is None or "_target_" not in node:
        return None
    try:
        better = getattr(get_class(node["_target_"]), "higher_is_better", None)
    except (ImportError, ValueError):  # not importable, or not a class: no direction to read
        return None
    return better if isinstance(better, bool) else None


def monitor_mode(monitor: str, metric_nodes: Mapping[str, Any] | None) -> str:
    """ "max" where higher is better, else "min": Lightning's `mode` of ModelCheckpoint and EarlyStopping."""
    return "max" if higher_is_better(monitor, metric_nodes) else "min"


def check_monitor(monitor: str, metric_nodes: Mapping[str, Any] | None) -> None:
    """`monitor` names a figure of an evaluated set whose direction is known."""
    names = [*LOWER_IS_BETTER, *HIGHER_IS_BETTER, *(metric_nodes or {})]
    name = monitor.partition("/")[2]
    # The test set is held out: a best epoch, an early stop or a search chosen on it leaves no unbiased estimate.
    require(
        not monitor.startswith("test/"),
        f"monitor={monitor!r} selects on the test set, whose figures would then estimate nothing: monitor the "
        f"validation figure instead, monitor=val/{name if name in names else 'error'}",
    )
    choices = ", ".join(f"{stage}/{name}" for stage in EVAL_SETS if stage != "test" for name in names)
    require(
        higher_is_better(monitor, metric_nodes) is not None,
        f"monitor={monitor!r} is not allowed: choose the best epoch (and a sweep's objective) by one of {choices} "
        "(a metric of `metrics` whose class states higher_is_better)",
    )


def register_resolvers() -> None:
    """`${monitor_mode:${monitor}}` (min or max) and `${monitor_direction:${monitor}}` (minimize or maximize) for
    the configs of callbacks and searches: the direction of whatever `monitor` names."""

    def mode(monitor: str, *, _root_: DictConfig) -> str:
        return monitor_mode(monitor, _root_.get("metrics"))

    OmegaConf.register_new_resolver("monitor_mode", mode, replace=True)
    OmegaConf.register_new_resolver(
        "monitor_direction", lambda monitor, *, _root_: mode(monitor, _root_=_root_) + "imize", replace=True
    )


register_resolvers()  # on import: every config that descent composes, instantiates or sweeps may name them
