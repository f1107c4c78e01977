"""What TensorBoard shows of a run beyond the per-epoch scalars: HPARAMS, custom charts, images and histograms."""

from typing import Any

import lightning
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import Tensor

from descent.curvature import GradientFlow, Sharpness
from descent.data import EVAL_SETS, ImageData, set_chunks
from descent.errors import is_whole, require
from descent.measurement import evaluating
from descent.module import Classifier
from descent.results import CURVATURE, final_and_best, flow, flow_depths

TRAIN_AGAINST_TEST = {name: ["Multiline", [f"{stage}/{name}" for stage in EVAL_SETS]] for name in ("loss", "error")}
"""Training, validation and test figures in one chart each: every run has them."""

MEASURED_CHARTS = {
    Sharpness: ("sharpness against 2 / lr", ["Multiline", list(CURVATURE)]),
    GradientFlow: ("gradient norm of each layer", ["Multiline", [flow("grad_norm", ".*")]]),
}
"""The sharpness with the stability bound 2 / lr (curvature.enabled), every layer's gradient norm
(gradient_flow.enabled): charted only by runs that measure them, since a chart of no tags shows empty."""


def charts(callbacks: list[Callback]) -> dict[str, dict[str, list]]:
    """TensorBoard's CUSTOM SCALARS tab: "train against test", and "curvature and gradient flow" with the charts of
    what the run measures (its callbacks), if anything."""
    measured = dict(chart for kind, chart in MEASURED_CHARTS.items() if any(isinstance(c, kind) for c in callbacks))
    return {"train against test": TRAIN_AGAINST_TEST} | ({"curvature and gradient flow": measured} if measured else {})


GRID_IMAGES = 32
"""Misclassified test images in each grid (the first ones in test-set order, so grids of epochs compare)."""


class Logger(TensorBoardLogger):
    """Lightning's TensorBoard logger with descent's settings for pictures (read by `TensorBoardTabs`).

    `image_every_n_epochs`: a grid of misclassified test images every n epochs and at the last one (0: never).
    `histograms`: weight and gradient histograms per layer every epoch.
    """

    def __init__(
        self,
        save_dir: str,
        name: str = "",
        version: str = "",
        image_every_n_epochs: int = 5,
        histograms: bool = False,
        **kwargs: Any,
    ) -> None:
        require(
            is_whole(image_every_n_epochs) and image_every_n_epochs >= 0,
            f"logger.tensorboard.image_every_n_epochs={image_every_n_epochs!r} is not allowed: give a whole number of "
            "epochs, or 0 for no image grids",
        )
        # default_hp_metric=False: no placeholder hp_metric in HPARAMS, which gets the real figures at the end.
        super().__init__(save_dir, name=name, version=version, default_hp_metric=False, **kwargs)
        self.image_every_n_epochs, self.histograms = image_every_n_epochs, bool(histograms)


class TensorBoardTabs(Callback):
    """Fills TensorBoard's tabs: CUSTOM SCALARS at the start, IMAGES and HISTOGRAMS at the end of each epoch,
    the confusion matrix and HPARAMS at the end of the run (before Lightning closes the event file).

    Does nothing unless the trainer's logger is a `Logger`; only rank 0 writes.
    """

    def __init__(self, params: dict[str, Any], data: ImageData, monitor: str, mode: str = "min") -> None:
        self.params, self.data, self.monitor, self.mode = params, data, monitor, mode
        self._grads: dict[str, Tensor] = {}

    @staticmethod
    def _logger(trainer: lightning.Trainer) -> Logger | None:
        found = [logger for logger in trainer.loggers if isinstance(logger, Logger)]  # among others, maybe
        return found[0] if found and trainer.is_global_zero else None

    def on_fit_start(self, trainer: lightning.Trainer, module: Classifier) -> None:
        if logger := self._logger(trainer):
            logger.experiment.add_custom_scalars(charts(trainer.callbacks))

    def on_before_optimizer_step(self, trainer: lightning.Trainer, module: Classifier, optimizer: Any) -> None:
        # A reference, not a copy: zero_grad(set_to_none=True) lets the next backward allocate fresh tensors,
        # so these keep the gradient of the epoch's last step for the histograms.
        if (logger := self._logger(trainer)) and logger.histograms:
            self._grads = {name: p.grad for name, p in module.net.named_parameters() if p.grad is not None}

    def on_train_epoch_end(self, trainer: lightning.Trainer, module: Classifier) -> None:
        """After the epoch's evaluation, if it had one (Lightning 2 evaluates before this hook): its figures are the
        module's last history row."""
        logger = self._logger(trainer)
        epoch = module.current_epoch + 1
        if logger is None or not module.history or module.history[-1]["epoch"] != epoch:
            return
        figures = module.history[-1]
        writer = logger.experiment
        if logger.histograms:
            for name, parameter in module.net.named_parameters():
                writer.add_histogram(f"weights/{name}", parameter, epoch)
            for name, grad in self._grads.items():
                writer.add_histogram(f"gradients/{name}", grad, epoch)
        if flow("grad_norm", 1) in figures:  # descent.curvature.GradientFlow measured this epoch
            writer.add_figure("gradient norm against depth", flow_figure(figures), epoch)
        every = logger.image_every_n_epochs
        if every and (epoch % every == 0 or epoch == trainer.max_epochs):
            predicted, wrong_images, y = self._test_predictions(module)
            wrong = (predicted != y).nonzero().flatten()[:GRID_IMAGES]
            figure = misclassified_grid(wrong_images.cpu(), predicted[wrong].cpu(), y[wrong].cpu(), self._image_info())
            writer.add_figure("misclassified test images", figure, epoch)

    def on_fit_end(self, trainer: lightning.Trainer, module: Classifier) -> None:
        logger = self._logger(trainer)
        if logger is None or not module.history:
            return
        epoch = int(module.history[-1]["epoch"])
        predicted, _, y = self._test_predictions(module)
        figure = confusion_matrix_figure(confusion_matrix(predicted, y, self.data.num_classes), self._image_info()[1])
        logger.experiment.add_figure("confusion matrix (test)", figure, epoch)
        final, best = final_and_best(module.history, self.monitor, self.mode)
        logger.log_hyperparams(self.params, metrics=hparams_metrics(final, best))

    def _image_info(self) -> tuple[tuple[int, ...], list[str]]:
        return self.data.input_shape, self.data.class_names

    @torch.no_grad()
    def _test_predictions(self, module: Classifier) -> tuple[Tensor, Tensor, Tensor]:
        """theta^k's class for every test image, in test-set order, and the first GRID_IMAGES wrong ones' images.

        Only the misclassified images are kept: a streamed test set is read chunk by chunk, never held whole.
        """
        images, y = self.data.sets["test"]
        predicted, wrong_images = [], []
        with evaluating(module.net):
            for chunk in set_chunks(images, y, self.data.samples_per_chunk):  # all of it: rank 0 alone draws
                guess = module(chunk.x.to(module.dtype)).argmax(1)
                predicted.append(guess)
                if sum(len(w) for w in wrong_images) < GRID_IMAGES:
                    wrong_images.append(chunk.x[guess != chunk.y])
        return torch.cat(predicted), torch.cat(wrong_images)[:GRID_IMAGES], y


def flow_figure(figures: dict[str, float]) -> Figure:
    """Each layer's gradient norm and weight norm against its depth (1 at the input), on a log scale: a chain of
    Jacobians that shrinks the gradient shows as a line falling towards depth 1."""
    depths = flow_depths(figures)
    figure = Figure(figsize=(4.5, 3.2), layout="constrained")
    ax = figure.subplots()
    for name, marker in (("grad_norm", "o"), ("weight_norm", "s")):
        ax.plot(depths, [figures[flow(name, d)] for d in depths], marker=marker, label=name.replace("_", " "))
    ax.set(xlabel="layer (1 = input)", ylabel="norm", yscale="log", xticks=depths)
    ax.legend()
    return figure


def confusion_matrix(predicted: Tensor, true: Tensor, num_classes: int) -> Tensor:
    """counts[t, p]: test images of true class t predicted as p."""
    return torch.bincount(true * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def to_image(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A (normalised) sample [C, H, W] as an image matplotlib shows, rescaled to [0, 1] (normalised values are not
    grey levels or colours): [H, W] grey or [H, W, C] colour."""
    image = x.reshape(shape).float()
    image = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
    return (image - image.min()) / (image.max() - image.min()).clamp(min=1e-12)


def misclassified_grid(x: Tensor, predicted: Tensor, true: Tensor, info: tuple[tuple[int, ...], list[str]]) -> Figure:
    """The images in rows of 8, each under its predicted and true class. One canvas in one axes, not an axes per
    image: matplotlib lays out and draws 32 axes several times slower, and the grid is drawn at every image epoch."""
    shape, names = info
    columns, (h, w) = 8, shape[1:]
    rows = max(1, -(-len(true) // columns))
    cell_h, cell_w = h + h // 2, w + max(2, w // 14)  # room above each image for its two lines, a gap beside it
    corners = [((i // columns) * cell_h + h // 2, (i % columns) * cell_w) for i in range(len(true))]
    canvas = torch.ones(rows * cell_h, columns * cell_w, *([shape[0]] if shape[0] > 1 else []))  # white
    for i, (top, left) in enumerate(corners):
        canvas[top : top + h, left : left + w] = to_image(x[i], shape)
    figure = Figure(figsize=(2 * columns, 2 * columns * canvas.shape[0] / canvas.shape[1]))
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.imshow(canvas.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for i, (top, left) in enumerate(corners):
        label = f"pred {names[predicted[i]]}\ntrue {names[true[i]]}"
        ax.text(left + w / 2, top - 0.5, label, ha="center", va="bottom", fontsize=8)
    if len(true) == 0:
        figure.suptitle("no misclassified test images")
    return figure


def confusion_matrix_figure(counts: Tensor, names: list[str]) -> Figure:
    n = len(names)
    size = min(4 + 0.6 * n, 16)
    figure = Figure(figsize=(size, size), layout="constrained")
    ax = figure.subplots()
    ax.imshow(counts.numpy(), cmap="Blues")
    if n <= 20:  # beyond that, numbers and names no longer fit in their cells
        ax.set_xticks(range(n), names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        for t in range(n):
            for p in range(n):
                ax.text(p, t, str(int(counts[t, p])), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"test set: {int(counts.sum())} images, {int(counts.trace())} correct")
    return figure


def hyperparameters(cfg: DictConfig, data: ImageData) -> dict[str, Any]:
    """What tells runs apart in TensorBoard's HPARAMS tab."""
    optimizer = cfg.optimizer
    kind = optimizer._target_.rsplit(".", 1)[-1].lower()  # sgd, adam, lbfgs, ...
    return {
        "data": getattr(data, "dataset", type(data).__name__),
        "optimizer": "gd" if cfg.full_batch and kind == "sgd" else kind,
        "lr": optimizer.lr,
        "momentum": optimizer.get("momentum", 0.0),
        "weight_decay": optimizer.get("weight_decay", 0.0),
        "batch_size": data.samples_per_step,
        "seed": cfg.seed,
        "max_epochs": cfg.max_epochs,
    } | network_settings(cfg.model.net)


def network_settings(net: DictConfig) -> dict[str, Any]:
    """The chosen network's class and settings, whatever they are: `net` and `net.<setting>` (lists as text)."""
    settings = {f"net.{key}": value for key, value in net.items() if not key.startswith("_")}
    plain = {
        key: value if isinstance(value, int | float | str | bool) else str(list(value))
        for key, value in settings.items()
    }
    return {"net": net._target_.rsplit(".", 1)[-1]} | plain


def hparams_metrics(final: dict[str, float], best: dict[str, float]) -> dict[str, float]:
    """The final and best-epoch figures, under their own tags (not the per-epoch ones) for the HPARAMS tab."""
    keys = ("test/error", "test/loss", "train/loss", "train/error", "gap/error", "gap/loss", "val/error")
    return {
        f"hparams/{label}_{key.replace('/', '_')}": row[key]
        for label, row in (("final", final), ("best", best))
        for key in keys
    }
