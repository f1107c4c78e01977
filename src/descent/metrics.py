"""descent's figures computed from a set's chunks, and the configured torchmetrics: the torch side of the figures.

Every figure of epoch k is that of the parameters theta^k at the end of the epoch, over a whole set, in eval mode,
computed exactly from sums over the set's chunks (and ranks). descent's own figures (loss, error, acc) are SUMS
and FIGURES; a user's are torchmetrics classes named in the config's `metrics` (conf/metrics/), built here
(`build_metrics`), updated with every chunk's logits and summed over ranks by torchmetrics: both are logged as
`{set}/{name}` for every set, and metrics.json, every logger, the console and the sweep summary take them from
there. Whether higher is better decides the best epoch when `monitor` names a figure: descent's figures say it in
LOWER_IS_BETTER and HIGHER_IS_BETTER, a torchmetrics class in its `higher_is_better`.

The figures' names, the best epoch, metrics.json's summary and the console's line and table are in descent.results,
which imports no torch, so that the readers of finished runs need not.
"""

import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from torch import Tensor, nn
from torchmetrics import Metric

from descent.data import EVAL_SETS
from descent.errors import require
from descent.monitor import LOWER_IS_BETTER
from descent.results import FIGURES, user_metrics

SUMS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor | int]] = {
    "loss": lambda loss_sum, logits, y: loss_sum,  # the module's loss, summed over the chunk
    "errors": lambda loss_sum, logits, y: (logits.argmax(1) != y).sum(),
    "count": lambda loss_sum, logits, y: len(y),
}
"""What one chunk adds to its set's sums, from its summed loss, its logits and its labels."""


def chunk_sums(loss_sum: Tensor, logits: Tensor, y: Tensor) -> Tensor:
    """One chunk's SUMS, in their order, as float64 on the device (no host sync until the epoch is complete)."""
    values = [torch.as_tensor(add(loss_sum, logits, y), device=y.device) for add in SUMS.values()]
    return torch.stack([value.to(torch.float64) for value in values])


def figures(sums: list[list[float]], measured: Mapping[str, float] | None = None) -> dict[str, float]:
    """Every FIGURES entry per evaluated set (`sums` in EVAL_SETS order), the `measured` figures of the configured
    metrics, and test minus train as `gap/` of descent's and of each configured metric's single number."""
    metrics: dict[str, float] = {}
    for stage, values in zip(EVAL_SETS, sums, strict=True):
        named = dict(zip(SUMS, values, strict=True))
        metrics |= {f"{stage}/{name}": figure(named) for name, figure in FIGURES.items()}
    metrics |= dict(measured or {})
    for name in (*LOWER_IS_BETTER, *user_metrics(metrics)):
        metrics[f"gap/{name}"] = metrics[f"test/{name}"] - metrics[f"train/{name}"]
    return metrics


# A user's metrics: torchmetrics classes from the config's `metrics` node.


def build_metrics(metric_nodes: Mapping[str, Any] | None, num_classes: int, monitor: str) -> dict[str, Metric]:
    """Each `metrics.<name>` node instantiated, given `num_classes` unless it sets it, and tried on random logits:
    a figure per set or one per class (a vector, which `monitor` cannot name), nothing else."""
    built: dict[str, Metric] = {}
    for name, node in (metric_nodes or {}).items():
        require(
            name.isidentifier() and name not in FIGURES and name not in SUMS,
            f"metrics.{name}: a metric's name must be a Python identifier and not one of descent's own "
            f"({', '.join(FIGURES)}); rename it",
        )
        require(
            "_target_" in node,
            f"metrics.{name} has no _target_: name a torchmetrics class, e.g. "
            "torchmetrics.classification.MulticlassF1Score",
        )
        sized = "num_classes" not in node and "num_classes" in inspect.signature(get_class(node._target_)).parameters
        metric = instantiate(node, **({"num_classes": num_classes} if sized else {}))
        require(
            isinstance(metric, Metric),
            f"metrics.{name}: {node._target_} is not a torchmetrics Metric; name one (torchmetrics.classification)",
        )
        generator = torch.Generator().manual_seed(0)
        probe = metric.clone()
        with warnings.catch_warnings():  # a few random samples leave classes empty: not the run's business
            warnings.simplefilter("ignore")
            probe.update(torch.randn(16, num_classes, generator=generator), torch.arange(16) % num_classes)
            value = probe.compute()
        require(
            isinstance(value, Tensor) and value.dim() <= 1,
            f"metrics.{name}: {node._target_} gives a {describe(value)}; descent logs a number or one per class "
            "(a vector): choose an average (e.g. average: macro) or another metric",
        )
        require(
            value.dim() == 0 or monitor.partition("/")[2] != name,
            f"monitor={monitor}: metrics.{name} gives one figure per class ({monitor}/0, /1, ...); the best epoch "
            "needs one number: monitor another metric, or this one with an average (e.g. average: macro)",
        )
        built[name] = metric
    return built


def describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"tensor of shape {list(value.shape)}"
    return type(value).__name__


def metric_figures(stage: str, name: str, value: Tensor) -> dict[str, float]:
    """A metric's value over a set: `{stage}/{name}`, or `{stage}/{name}/{i}` for each entry of a vector."""
    if value.dim() == 0:
        return {f"{stage}/{name}": float(value)}
    return {f"{stage}/{name}/{i}": float(entry) for i, entry in enumerate(value.tolist())}


class SetMetrics(nn.ModuleDict):
    """One copy of each configured metric per evaluated set (keyed "train_set" and so on: "train" is a method of
    every nn.Module): torchmetrics accumulates a set's chunks and gathers the ranks' states on compute."""

    def __init__(self, chosen: Mapping[str, Metric] | None) -> None:
        copies = {
            f"{stage}_set": nn.ModuleDict({n: m.clone() for n, m in (chosen or {}).items()}) for stage in EVAL_SETS
        }
        super().__init__(copies)

    def add_chunk(self, set_index: int, logits: Tensor, y: Tensor) -> None:
        for metric in self[f"{EVAL_SETS[set_index]}_set"].values():
            metric.update(logits, y)

    def compute_and_reset(self) -> dict[str, float]:
        """Every set's figures (`{set}/{name}`, on every rank), and the metrics emptied for the next evaluation."""
        figures: dict[str, float] = {}
        for stage in EVAL_SETS:
            for name, metric in self[f"{stage}_set"].items():
                figures |= metric_figures(stage, name, metric.compute())
                metric.reset()
        return figures
