"""The default progress bar: Lightning's own, fed at most every `refresh_s` and always at an epoch's last step."""

from pathlib import Path

import lightning
import pytest
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from descent.progress import REFRESH_S, Throttled, progress_bar
from descent.training import build, build_trainer


def shown(bar: RichProgressBar | TQDMProgressBar) -> int:
    """The step count the training bar shows now."""
    if isinstance(bar, RichProgressBar):
        return int(bar.progress._tasks[bar.train_progress_bar_id].completed)
    return bar.train_progress_bar.n


class ShownAfterEachStep(lightning.Callback):
    def __init__(self, bar: RichProgressBar | TQDMProgressBar) -> None:
        self.bar, self.counts = bar, []

    def on_train_batch_end(self, *args: object) -> None:  # runs after the bar's own hook: it comes later in the list
        self.counts.append(shown(self.bar))


def test_in_a_terminal_a_run_gets_lightnings_bar_fed_at_a_bounded_rate(make_cfg) -> None:
    cfg = make_cfg("trainer.enable_progress_bar=true")
    bar = build_trainer(cfg, Path(cfg.run_dir)).progress_bar_callback
    assert isinstance(bar, (RichProgressBar, TQDMProgressBar)) and isinstance(bar, Throttled)
    assert bar.refresh_s == REFRESH_S
    assert build_trainer(make_cfg(), Path(cfg.run_dir)).progress_bar_callback is None  # pytest's stderr: no tty


@pytest.mark.parametrize(("refresh_s", "expected"), [(3600, [1, 1, 1, 1, 1, 1, 1, 8]), (0, [1, 2, 3, 4, 5, 6, 7, 8])])
def test_the_bar_skips_the_steps_within_refresh_s_and_shows_the_last(make_cfg, refresh_s, expected) -> None:
    cfg = make_cfg("trainer.enable_progress_bar=true", "batch_size=64", "max_epochs=1")
    data, model = build(cfg)
    bar = progress_bar(refresh_s)
    after = ShownAfterEachStep(bar)
    trainer = build_trainer(cfg, Path(cfg.run_dir), callbacks=(bar, after))
    trainer.fit(model, datamodule=data)  # 500 training samples: 8 steps
    assert after.counts == expected
