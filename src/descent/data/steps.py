"""How a set is served as optimizer steps and chunks: the epoch's `Plan`, Lightning's training loader `Steps`
(one `Step` per optimizer step) and evaluation loader `Chunks`, and `set_chunks`, the one way to read a whole set.

An epoch is a seeded permutation cut into steps of B samples (B = N for batch gradient descent); a step larger than
`chunk_size` is computed in chunks whose gradients add up to the exact gradient of the step. Lightning sees one
batch per optimizer step in training (the step's chunks) and one batch per chunk in the evaluation.
"""

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from descent.data.augment import Augment

Index = Tensor | slice
"""Samples of a set: positions (a permutation's part) or a contiguous range (sets read in order)."""


def rows(x: Tensor, index: Index) -> Tensor:
    """x's rows at `index`: a view of a range, a copy of positions. `index_select`, not `x[index]`: the same values,
    in a fraction of the time for a minibatch's rows (advanced indexing's general machinery is most of a cheap
    step's gather)."""
    return x[index] if isinstance(index, slice) else torch.index_select(x, 0, index)


class Images(Protocol):
    """What a set too big for memory implements: its length, a subset, and the images at each index of a plan."""

    shape: tuple[int, ...]  # one image: [C, H, W]

    def __len__(self) -> int: ...

    def subset(self, rows: Tensor) -> "Images":
        """The images at `rows`, in that order (the validation split is carved with it)."""

    def to(self, device: torch.device) -> "Images":
        """Produce images on `device` from now on."""

    def read(self, indices: Iterable[Index]) -> Iterator[Tensor]:
        """Float images [n, C, H, W] on the device, normalised, for each index in turn (it may read ahead)."""


class Chunk(NamedTuple):
    """Part of one optimizer step on this rank: images [n, C, H, W], labels [n], and how its summed loss is scaled.

    `loss_divisor` is the step's sample count over all ranks divided by the number of ranks, so that summed
    chunk losses divided by it, then averaged over ranks by DDP, give the exact mean loss of the step.
    """

    x: Tensor
    y: Tensor
    loss_divisor: float


class Plan:
    """One epoch of optimizer steps of `batch_size` samples, each cut into chunks of at most `chunk_size`.

    With `seed` the order is a fresh permutation per epoch (seeded by `seed` and the epoch, so a resumed run
    draws the same ones); without it, or when one step takes the whole set (GD), the order is the stored one and
    chunks are slices, not gathers. Each step is split into one contiguous share per rank, so every sample is seen
    exactly once per epoch and the steps do not depend on the number of ranks.

    `group_size` > 1 (a network with BatchNorm: `descent.batchnorm`) cuts shares and chunks only at multiples of
    it from the step's start, so each normalisation group is computed in one forward call; a chunk then holds at
    least one group, and at most `chunk_size` samples where `chunk_size` is a multiple of it.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        chunk_size: int,
        seed: int | None = None,
        epoch: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
        group_size: int = 1,
    ) -> None:
        self.n, self.batch_size, self.chunk_size = n, batch_size, chunk_size
        self.seed, self.epoch = seed, epoch
        self.rank, self.world_size, self.device = rank, world_size, device
        self.group_size = group_size

    @property
    def steps(self) -> int:
        """Optimizer steps in the epoch: ceil(N / B)."""
        return math.ceil(self.n / self.batch_size)

    def _chunks_per_step(self, step_size: int) -> int:
        """The same on every rank (each chunk's backward is an all-reduce under DDP), however the groups fall."""
        groups = math.ceil(step_size / self.group_size)
        groups_per_chunk = max(1, self.chunk_size // self.group_size)
        return max(1, math.ceil(math.ceil(groups / self.world_size) / groups_per_chunk))

    @property
    def chunks(self) -> int:
        full_steps, rest = divmod(self.n, self.batch_size)
        return full_steps * self._chunks_per_step(self.batch_size) + (self._chunks_per_step(rest) if rest else 0)

    def _order(self) -> Tensor | None:
        if self.seed is None or self.batch_size >= self.n:
            return None  # a step over the whole set sums over every sample, whatever their order
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch())
        return torch.randperm(self.n, generator=generator).to(self.device)

    def __iter__(self) -> Iterator[list[tuple[Index, float]]]:
        """Each step: its chunks on this rank, as (samples, loss divisor)."""
        order, g = self._order(), self.group_size
        for start in range(0, self.n, self.batch_size):
            step_size = min(self.batch_size, self.n - start)
            groups = math.ceil(step_size / g)
            first, last = self.rank * groups // self.world_size, (self.rank + 1) * groups // self.world_size
            n_chunks = self._chunks_per_step(step_size)
            loss_divisor = step_size / self.world_size
            cuts = [start + min(step_size, g * (first + i * (last - first) // n_chunks)) for i in range(n_chunks + 1)]
            bounds = list(zip(cuts, cuts[1:], strict=False))
            yield [(slice(lo, hi) if order is None else order[lo:hi], loss_divisor) for lo, hi in bounds]


class Stream:
    """An epoch's images in the plan's order (read ahead by a streamed set), taken by the steps by position."""

    def __init__(self, images: Iterator[Tensor]) -> None:
        self.images, self.position = images, 0

    def _next(self) -> Tensor:
        self.position += 1
        return next(self.images)

    def take(self, start: int, count: int) -> Iterator[Tensor] | None:
        """The images of chunks start..start+count-1, or None when the stream is past them."""
        if start < self.position:
            return None
        while self.position < start:  # steps fetched but never run: their images are passed over
            self._next()
        return (self._next() for _ in range(count))


class Step:
    """One optimizer step's chunks on this rank, each made as it is iterated: a GD step over the whole set holds
    one chunk's float images at a time, not the set's. What `training_step` receives.

    The first iteration takes the step's images from the epoch's `Stream` (chunks `start`, `start + 1`, ...); a
    later one (a line search evaluates the step again) reads them afresh. Lightning does not look inside this
    object, so each chunk gets its precision (`convert`: float64 under trainer.precision=64-true) here.
    """

    def __init__(self, steps: "Steps", parts: list[tuple[Index, float]], stream: Stream, start: int) -> None:
        self.steps, self.parts, self.stream, self.start = steps, parts, stream, start
        self.taken = False
        self.only: Chunk | None = None  # a one-chunk step's chunk, once made: kept, it costs nothing more

    def __len__(self) -> int:
        return len(self.parts)

    def _images(self) -> Iterator[Tensor]:
        streamed = None if self.taken else self.stream.take(self.start, len(self.parts))
        self.taken = True
        return streamed or self.steps.images.read(index for index, _ in self.parts)

    def __iter__(self) -> Iterator[Chunk]:
        for (index, divisor), x in zip(self.parts, self._images(), strict=True):
            chunk = self.steps.chunk(x, index, divisor)
            if len(self.parts) == 1:
                self.only = chunk
            yield chunk

    def __getitem__(self, i: int) -> Chunk:
        """A chunk by its place (a line search asks for the first's divisor before it iterates)."""
        if self.only is not None and i in (0, -1):
            return self.only
        index, divisor = self.parts[i]
        if self.taken:
            return self.steps.chunk(next(iter(self.steps.images.read([index]))), index, divisor)
        # This step's images leave the stream, so that the next step's stay in line; only the one asked for is kept.
        wanted = i % len(self.parts)
        x = [x for j, x in enumerate(self._images()) if j == wanted][0]
        return self.steps.chunk(x, index, divisor)


class Steps:
    """Lightning's training loader: one item per optimizer step, a `Step` (the step's chunks on this rank).

    With `augment`, every training image is randomly cropped and flipped as it is read (`descent.data.augment`),
    drawn from (`seed`, the epoch, the sample): a resumed run and any number of ranks see the same images.

    Stateful, as Lightning's checkpoints ask of a loader: every checkpoint records the epoch and how many of its
    steps were taken (`steps_done`, Lightning's count), and a run resumed from it starts at the next step of the
    same epoch's order. The order, the augmentation and the chunks depend on (seed, epoch) alone, so the resumed
    epoch goes on exactly as the interrupted one would have.
    """

    def __init__(
        self,
        plan: Plan,
        images: "Images",
        labels: Tensor,
        augment: "Augment | None" = None,
        seed: int = 0,
        convert: Callable[[Chunk], Chunk] = lambda chunk: chunk,
        steps_done: Callable[[], int] = lambda: 0,
    ) -> None:
        self.plan, self.images, self.labels = plan, images, labels
        self.augment, self.seed, self.convert = augment, seed, convert
        self.draws: Tensor | None = None
        self.steps_done = steps_done
        self.resume_at: tuple[int, int] | None = None  # (epoch, steps done) from a checkpoint, until used

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.plan.epoch(), "steps_done": self.steps_done()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.resume_at = (state["epoch"], state["steps_done"])

    def __len__(self) -> int:
        return self.plan.steps

    def chunk(self, x: Tensor, index: Index, divisor: float) -> Chunk:
        if self.draws is not None and self.augment is not None:
            x = self.augment(x, self.draws[index])
        return self.convert(Chunk(x, rows(self.labels, index), divisor))

    def __iter__(self) -> Iterator[Step]:
        # A generator: the epoch's order is drawn at the first step, by when a resumed run knows its epoch.
        if self.augment is not None:
            self.draws = self.augment.draws(self.seed, self.plan.epoch(), len(self.labels)).to(self.labels.device)
        steps = list(self.plan)
        if self.resume_at is not None:
            epoch, done = self.resume_at
            self.resume_at = None
            if epoch == self.plan.epoch():  # a checkpoint written mid-epoch: its first `done` steps were taken
                steps = steps[done:]
        stream = Stream(self.images.read(index for step in steps for index, _ in step))
        starts = itertools.accumulate((len(step) for step in steps), initial=0)
        for step, start in zip(steps, starts, strict=False):
            yield Step(self, step, stream, start)


class Chunks:
    """Lightning's evaluation loader for one set: one item per chunk, the whole set in its stored order, each chunk
    made as Lightning asks for it."""

    def __init__(self, plan: Plan, images: "Images", labels: Tensor) -> None:
        self.plan, self.images, self.labels = plan, images, labels

    def __len__(self) -> int:
        return self.plan.chunks

    def __iter__(self) -> Iterator[Chunk]:
        parts = [part for step in self.plan for part in step]
        images = self.images.read(index for index, _ in parts)
        for (index, divisor), x in zip(parts, images, strict=True):
            yield Chunk(x, rows(self.labels, index), divisor)


def set_chunks(
    images: "Images", labels: Tensor, chunk_size: int, rank: int = 0, world_size: int = 1, group_size: int = 1
) -> Chunks:
    """The one way to read a whole set chunk by chunk: this rank's contiguous share of it (all of it on one
    process), in stored order, chunks of at most `chunk_size` cut at `group_size` boundaries. The evaluation, the
    BatchNorm statistics, the gradient-noise measurement, the critical-batch check and TensorBoard's test
    predictions all read sets this way."""
    n = len(labels)
    return Chunks(Plan(n, n, chunk_size, rank=rank, world_size=world_size, group_size=group_size), images, labels)
