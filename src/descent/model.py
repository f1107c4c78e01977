"""The multilayer perceptron and its training: one optimizer step per step of the data, evaluation every epoch."""

import logging
import math
import signal
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from descent.backprop import average_over_ranks, backpropagate
from descent.data import EVAL_SETS, Batches, Chunk
from descent.errors import DescentError, is_number, is_whole, require

log = logging.getLogger(__name__)


class StoppedEarly(DescentError):
    """Training stopped before max_epochs, at `epoch` (1-based, not finished) before optimizer step `step`."""

    def __init__(self, epoch: int, step: int, message: str) -> None:
        super().__init__(message)
        self.epoch, self.step = epoch, step


class Diverged(StoppedEarly):
    """The loss became NaN or infinite."""


class Interrupted(StoppedEarly):
    """SIGINT or SIGTERM arrived: exit as the signal's default action would (128 + its number)."""

    label = "stopped"
    stops_a_sweep = True

    def __init__(self, epoch: int, step: int, message: str, signal_name: str) -> None:
        super().__init__(epoch, step, message)
        self.exit_code = 128 + signal.Signals[signal_name].value


# The epoch's figures are reduced over the ranks before they are logged, so Lightning's advice to sync them is moot.
warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting")
# Lightning 2.6 calls a pytree API that torch 2.14 deprecates; nothing for a user to act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
CHECK_EVERY = 32
"""Steps between checks for a non-finite loss or a stop signal on an accelerator (every step on the CPU)."""
BACKPROPS = ("autograd", "manual")  # manual: descent.backprop, the lecture's chain of Jacobians written out


def check_settings(hidden: Any, activation: Any, dropout: Any, backprop: Any) -> None:
    """The model settings' types and ranges, checked from the config before any data is loaded, and again here."""
    require(
        isinstance(hidden, Sequence)
        and not isinstance(hidden, str)
        and all(is_whole(width) and width >= 1 for width in hidden),
        f"model.hidden={hidden!r} is not allowed: give a list of positive layer widths, e.g. model.hidden=[512,512] "
        "(or [] for none)",
    )
    require(activation in ACTIVATIONS, f"model.activation={activation!r} is not one of {', '.join(ACTIVATIONS)}")
    require(
        is_number(dropout) and 0 <= dropout < 1,
        f"model.dropout={dropout!r} is not allowed: give a probability in [0, 1)",
    )
    require(backprop in BACKPROPS, f"model.backprop={backprop!r} is not one of {', '.join(BACKPROPS)}")


def mlp(input_size: int, hidden: Sequence[int], num_classes: int, activation: str, dropout: float) -> nn.Sequential:
    """Linear layers of the given widths with an activation (and dropout, if any) between them; logits out."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip([input_size, *hidden], hidden, strict=False):
        # ReLU in place: nothing else reads the linear layer's output (its backward needs only its input), and a
        # forward pass without a copy of every activation ran 3% faster, timed alone on 2 CPU cores.
        f = nn.ReLU(inplace=True) if activation == "relu" else ACTIVATIONS[activation]()
        layers += [nn.Linear(n_in, n_out), f]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(([input_size, *hidden])[-1], num_classes))
    # He-style init, scaled by the gain of the activation that follows (1 for the logits): PyTorch's default
    # uniform init is a third as wide for ReLU and costs about two points of test accuracy after 3 epochs.
    linears = [layer for layer in layers if isinstance(layer, nn.Linear)]
    for i, layer in enumerate(linears):
        gain = nn.init.calculate_gain(activation) if i < len(linears) - 1 else 1.0
        nn.init.normal_(layer.weight, std=gain / layer.in_features**0.5)
        nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class Classifier(LightningModule):
    """An MLP trained on cross-entropy, evaluated after every epoch k on the whole train, val and test sets.

    The figures of epoch k are those of the parameters theta^k at the end of the epoch, measured by a forward pass
    in eval mode (not the running mean of the minibatch losses seen during the epoch).
    """

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        hidden: Sequence[int] = (512, 512),
        activation: str = "relu",
        dropout: float = 0.0,
        optimizer: Callable[..., Optimizer] = torch.optim.SGD,
        scheduler: Callable[[Optimizer], LRScheduler] | None = None,
        backprop: str = "autograd",
    ) -> None:
        super().__init__()
        check_settings(hidden, activation, dropout, backprop)
        hidden = [int(width) for width in hidden]  # a plain list in the checkpoint, never a ListConfig
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        # Manual optimization: a step may span several chunks, and Lightning's gradient accumulation
        # scales by a fixed count instead of the samples actually in the step.
        self.automatic_optimization = False
        self.net = mlp(input_size, hidden, num_classes, activation, dropout)
        self.optimizer, self.scheduler, self.backprop = optimizer, scheduler, backprop
        self.history: list[dict[str, float]] = []
        self.last_evaluation: dict[str, float] = {}
        self._samples_seen = 0
        self._train_seconds = 0.0
        self.stop_signal: str | None = None  # set by a SIGINT/SIGTERM handler: stop before the next step

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler(optimizer)}

    def on_fit_start(self) -> None:
        require(
            self.backprop == "autograd" or getattr(self.trainer.precision_plugin, "scaler", None) is None,
            f"model.backprop=manual with trainer.precision={self.trainer.precision}: its loss scaler works through "
            "autograd; use model.backprop=autograd or another precision",
        )

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()

    def training_step(self, epoch: Batches, batch_idx: int) -> None:
        """The whole epoch: every optimizer step of it, each accumulated over its chunks.

        Lightning calls this once an epoch (see `descent.data.OnePass`), so callbacks' `on_train_batch_*` hooks
        and `max_steps` act at epoch boundaries; `trainer.global_step` still counts every optimizer step.
        """
        optimizer = self.optimizers()
        # Reading the loss back costs nothing on the CPU but waits for an accelerator, so there it is read every
        # CHECK_EVERY steps. The step's last chunk is read: once a NaN reaches the weights, every loss after is NaN.
        check_every = 1 if self.device.type == "cpu" else CHECK_EVERY
        world_size = self.trainer.world_size
        # manual_backward runs every callback's on_before/after_backward hooks at every chunk (about 0.3 ms, a
        # tenth of a B=64 step on 2 CPU cores); it is needed only for DDP's all-reduce and a loss scaler.
        needs_lightning = world_size > 1 or getattr(self.trainer.precision_plugin, "scaler", None) is not None
        backward = self.manual_backward if needs_lightning else Tensor.backward
        step_in_epoch = 0
        for chunk in self._converted(epoch):
            if self.backprop == "manual":
                loss_sum = backpropagate(self.net, chunk.x, chunk.y, chunk.loss_divisor)
            else:
                loss_sum = F.cross_entropy(self.net(chunk.x), chunk.y, reduction="sum")
                backward(loss_sum / chunk.loss_divisor)
            if not chunk.ends_step:
                continue
            step_in_epoch += 1
            if step_in_epoch % check_every == 0 or step_in_epoch == epoch.steps:
                self._stop_if_asked_or_diverged(loss_sum.detach(), step_in_epoch, world_size)
            if self.backprop == "manual" and world_size > 1:  # no DDP hooks ran: average here
                average_over_ranks(self.net, lambda flat: self.trainer.strategy.reduce(flat, reduce_op="mean"))
            self._samples_seen += round(chunk.loss_divisor * world_size)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        # Here, not where the evaluation starts: with check_val_every_n_epoch > 1 not every epoch is evaluated.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._train_seconds += time.perf_counter() - self._epoch_start

    def _converted(self, chunks: Iterable[Chunk]) -> Iterable[Chunk]:
        """The chunks in the precision's dtype (float64 under precision=64-true): Lightning's own conversion sees
        only the pass (`OnePass`), not the chunks in it. Skipped for float32, as it walks each chunk's fields."""
        if self.dtype == torch.float32:
            return chunks
        return (self.trainer.precision_plugin.convert_input(chunk) for chunk in chunks)

    def _stop_if_asked_or_diverged(self, loss_sum: Tensor, step_in_epoch: int, world_size: int) -> None:
        """Raise `Diverged` on a non-finite loss, `Interrupted` after SIGINT/SIGTERM; before the step is taken.

        Under DDP both are summed over the ranks, so that every rank stops at the same step (a rank that stopped
        alone would leave the others waiting in the next all-reduce).
        """
        if world_size > 1:
            asked_here = torch.tensor(float(self.stop_signal is not None), device=self.device)
            flags = torch.stack([loss_sum.to(torch.float32), asked_here])
            loss, asked_anywhere = self.trainer.strategy.reduce(flags, reduce_op="sum").tolist()
            asked = asked_anywhere > 0
        else:
            loss, asked = loss_sum.item(), self.stop_signal is not None
        if math.isfinite(loss) and not asked:
            return
        epoch, step = self.current_epoch + 1, self.trainer.global_step + 1
        if not math.isfinite(loss):
            lr = self.optimizers().param_groups[0]["lr"]
            raise Diverged(
                epoch,
                step,
                f"training diverged at epoch {epoch}, step {step_in_epoch} of the epoch ({step} in all): the loss "
                f"is {loss}; lower the learning rate (optimizer.lr, {lr:g} at this step)",
            )
        checkpoints = Path(self.trainer.checkpoint_callback.dirpath)
        self.trainer.save_checkpoint(checkpoints / "interrupted.ckpt")
        done = f"{checkpoints / 'last.ckpt'} (epoch {epoch - 1})" if epoch > 1 else "no finished epoch"
        raise Interrupted(
            epoch,
            step,
            f"{self.stop_signal or 'a signal on another rank'} before step {step}, in epoch {epoch}: these "
            f"weights are in {checkpoints / 'interrupted.ckpt'}; resume=<run dir> goes on from {done}, "
            "replaying the unfinished epoch",
            self.stop_signal or "SIGTERM",
        )

    def on_train_epoch_end(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def _end_of_epoch(self) -> bool:
        """Evaluating theta^k within fit, not in a sanity check and not in `validate` (eval.py)."""
        return self.trainer.state.fn == TrainerFn.FITTING and not self.trainer.sanity_checking

    def on_validation_epoch_start(self) -> None:
        self._sums = torch.zeros(len(EVAL_SETS), 3, dtype=torch.float64, device=self.device)

    def validation_step(self, chunks: Iterable[Chunk], batch_idx: int, dataloader_idx: int = 0) -> None:
        """One whole set (see `descent.data.OnePass`): the summed loss, the errors and the count, over its chunks."""
        sums = self._sums[dataloader_idx]
        for chunk in self._converted(chunks):
            logits = self.net(chunk.x)
            # Sums stay on the device: no host sync until the epoch's figures are complete.
            sums[0] += F.cross_entropy(logits, chunk.y, reduction="sum")
            sums[1] += (logits.argmax(1) != chunk.y).sum()
            sums[2] += len(chunk.y)

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._sums, reduce_op="sum").tolist()
        metrics: dict[str, float] = {}
        for name, (loss_sum, errors, count) in zip(EVAL_SETS, sums, strict=True):
            metrics[f"{name}/loss"] = loss_sum / count
            metrics[f"{name}/error"] = errors / count
            metrics[f"{name}/acc"] = 1 - errors / count
        metrics["gap/loss"] = metrics["test/loss"] - metrics["train/loss"]
        metrics["gap/error"] = metrics["test/error"] - metrics["train/error"]
        self.last_evaluation = metrics
        if not self._end_of_epoch():
            return
        epoch = self.current_epoch + 1
        metrics |= {
            "progress/steps": float(self.trainer.global_step),
            "progress/samples": float(self._samples_seen),
            "progress/lr": self.optimizers().param_groups[0]["lr"],
            "time/train_s": self._train_seconds,
        }
        self.history.append({"epoch": epoch, **metrics})
        self.log_dict(metrics)
        self.log("step", float(epoch))  # the x-axis of every chart is the epoch k
        if not self.trainer.is_global_zero:
            return
        log.info(
            "epoch %d  train loss %.4f err %.2f%%  val err %.2f%%  test loss %.4f err %.2f%%  (%d steps, %.1f s)",
            epoch,
            metrics["train/loss"],
            100 * metrics["train/error"],
            100 * metrics["val/error"],
            metrics["test/loss"],
            100 * metrics["test/error"],
            self.trainer.global_step,
            self._train_seconds,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["descent"] = {
            "history": self.history,
            "samples_seen": self._samples_seen,
            "train_seconds": self._train_seconds,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("descent", {})
        self.history = state.get("history", [])
        self._samples_seen = state.get("samples_seen", 0)
        self._train_seconds = state.get("train_seconds", 0.0)
