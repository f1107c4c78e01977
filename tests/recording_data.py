"""Test-only data modules that record which training samples each rank draws, every epoch (`data._target_=...`).

Each recorded line is `<epoch> <sample> <sample> ...`: the positions in the training split that one read of the
training set returned, as `Batches` asked for them. Put `tests/` on PYTHONPATH to use them from src/train.py.
"""

from pathlib import Path
from typing import Any

from descent.data import Batches, IdxData
from descent.imagenet import DownsampledImageNet


class IndexRecorder:
    """Stands in for a training set's `x`: passes every read through and appends what it read to a file."""

    def __init__(self, x: Any, record: Path, epoch: Any) -> None:
        self.x, self.record, self.epoch = x, record, epoch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: Any) -> Any:
        samples = range(len(self.x))[index] if isinstance(index, slice) else index.tolist()
        with open(self.record, "a") as file:
            file.write(" ".join(map(str, [self.epoch(), *samples])) + "\n")
        return self.x[index]


class Recording:
    def __init__(self, record_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record_dir = Path(record_dir)

    def train_dataloader(self) -> Any:
        epoch = super().train_dataloader()
        batches = epoch.chunks if isinstance(epoch.chunks, Batches) else epoch.chunks.batches
        self.record_dir.mkdir(parents=True, exist_ok=True)
        record = self.record_dir / f"rank{self.trainer.global_rank}.txt"
        batches.x = IndexRecorder(batches.x, record, lambda: self.trainer.current_epoch)
        return epoch


class RecordingIdx(Recording, IdxData):
    pass


class RecordingImageNet(Recording, DownsampledImageNet):
    pass
