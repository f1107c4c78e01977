"""The learning rate of every epoch: an optional linear warm-up, then the configured torch schedule (conf/scheduler/),
stepped once per epoch; a schedule that follows a figure (reduce-on-plateau) steps on `monitor` after each evaluation.
"""

from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LinearLR, LRScheduler, ReduceLROnPlateau, SequentialLR

from descent.errors import require

Schedule = Callable[[Optimizer], LRScheduler]


def follows_figures(scheduler: object) -> bool:
    """Whether the schedule steps on a figure of the evaluation rather than on the epoch count."""
    return isinstance(scheduler, ReduceLROnPlateau)


def with_warmup(optimizer: Optimizer, schedule: Schedule | None, warmup_epochs: int) -> LRScheduler | None:
    """`schedule` of `optimizer`, after `warmup_epochs` epochs whose rate rises linearly: epoch k (1, ..., w) trains
    at lr * k / (w + 1), the next at lr, where the schedule starts."""
    require(
        isinstance(warmup_epochs, int) and warmup_epochs >= 0,
        f"warmup_epochs={warmup_epochs!r} is not allowed: give a whole number of epochs >= 0 (0 for none)",
    )
    main = schedule(optimizer) if schedule is not None else None
    if not warmup_epochs:
        return main
    require(
        not follows_figures(main),
        "warmup_epochs with a schedule that follows a figure (reduce-on-plateau) is not supported: set "
        "warmup_epochs=0, or choose a schedule by epochs (step, cosine, exponential)",
    )
    warmup = LinearLR(optimizer, start_factor=1 / (warmup_epochs + 1), end_factor=1.0, total_iters=warmup_epochs)
    if main is None:
        return warmup  # constant after the warm-up: LinearLR stays at its end factor
    return SequentialLR(optimizer, [warmup, main], milestones=[warmup_epochs])
