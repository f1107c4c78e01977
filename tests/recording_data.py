"""Test-only data modules that record which training samples each rank draws, every epoch (`data._target_=...`).

Each recorded line is `<epoch> <sample> <sample> ...`: the positions in the training split that one chunk read from
the training set, as the plan asked for them. Put `tests/` on PYTHONPATH to use them from src/train.py.
"""

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from descent.data.downsampled import DownsampledImageNet
from descent.data.idx import IdxData


class Recorder:
    """Stands in for a training set's `Images`: passes every read through and appends what it read to a file."""

    def __init__(self, images: Any, record: Path, epoch: Callable[[], int]) -> None:
        self.images, self.record, self.epoch = images, record, epoch
        self.shape = images.shape

    def __len__(self) -> int:
        return len(self.images)

    def read(self, indices: Iterable[Any]) -> Iterator[Any]:
        def recorded() -> Iterator[Any]:
            for index in indices:
                samples = range(len(self))[index] if isinstance(index, slice) else index.tolist()
                with open(self.record, "a") as file:
                    file.write(" ".join(map(str, [self.epoch(), *samples])) + "\n")
                yield index

        return self.images.read(recorded())


class Recording:
    def __init__(self, record_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record_dir = Path(record_dir)

    def train_dataloader(self) -> Any:
        steps = super().train_dataloader()
        self.record_dir.mkdir(parents=True, exist_ok=True)
        record = self.record_dir / f"rank{self.trainer.global_rank}.txt"
        steps.images = Recorder(steps.images, record, lambda: self.trainer.current_epoch)
        return steps


class RecordingIdx(Recording, IdxData):
    pass


class RecordingImageNet(Recording, DownsampledImageNet):
    pass
