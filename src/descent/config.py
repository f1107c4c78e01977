"""Settings checked from the composed config before any data is loaded: one line naming the key, or nothing.

Imports no torch until the network is checked (last): a mistyped setting is refused before the training stack loads.
"""

import inspect

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from descent.arguments import check_node_arguments
from descent.errors import DescentError, is_number, is_whole, require
from descent.monitor import check_monitor


def check_config(cfg: DictConfig) -> None:
    """Fail on settings that cannot work before any data is loaded, naming the key."""
    check_sizes(cfg.batch_size, cfg.chunk_size, cfg.data.get("val_size", 1), cfg.data.get("train_size"))
    check_monitor(cfg.monitor, cfg.get("metrics"))
    require(
        "loss" not in cfg,
        "loss: the chosen conf/loss/ file landed at the top level, not at model.loss, so the run would train on "
        "the default loss; make `# @package model.loss` its first line",
    )
    lr = cfg.optimizer.get("lr")
    require(
        is_number(lr) and lr > 0,
        f"optimizer.lr={lr!r} is not allowed: the learning rate must be a positive number",
    )
    momentum = cfg.optimizer.get("momentum", 0.0)
    require(
        is_number(momentum) and 0 <= momentum < 1,
        f"optimizer.momentum={momentum!r} is not allowed: give a number in [0, 1), e.g. 0.9",
    )
    weight_decay = cfg.optimizer.get("weight_decay", 0.0)
    require(
        is_number(weight_decay) and weight_decay >= 0,
        f"optimizer.weight_decay={weight_decay!r} is not allowed: give a number >= 0 (0 for none)",
    )
    betas = cfg.optimizer.get("betas", (0.9, 0.999))
    require(
        len(betas) == 2 and all(is_number(beta) and 0 <= beta < 1 for beta in betas),
        f"optimizer.betas={list(betas)!r} is not allowed: give two numbers in [0, 1), e.g. [0.9,0.999]",
    )
    gamma = (cfg.get("scheduler") or {}).get("gamma", 1.0)
    require(
        is_number(gamma) and gamma > 0,
        f"scheduler.gamma={gamma!r} is not allowed: the learning rate is multiplied by it every epoch, give a "
        "positive number (below 1 to decay)",
    )
    require(
        cfg.seed is None or (is_whole(cfg.seed) and 0 <= cfg.seed < 2**32),
        f"seed={cfg.seed!r} is not allowed: give a whole number from 0 to {2**32 - 1} (what numpy and Lightning "
        "accept), or null for no seeding",
    )
    require(
        is_whole(cfg.max_epochs) and cfg.max_epochs >= 1,
        f"max_epochs={cfg.max_epochs!r} is not allowed: give a whole number of epochs, at least 1",
    )
    budget = cfg.memory_budget_bytes
    require(
        budget is None or (is_whole(budget) and budget > 0),
        f"memory_budget_bytes={budget!r} is not allowed: give a positive number of bytes, or null for what the "
        "device reports as free",
    )
    noise = cfg.get("noise") or {}
    check_noise(noise.get("batch_size", 1), noise.get("samples", 1))
    for key in ("limit_val_batches", "limit_test_batches"):  # every set is evaluated in the validation loop
        limit = cfg.trainer.get(key, 1.0)
        require(
            limit is None or (isinstance(limit, float) and limit == 1.0),  # an int is a count of chunks: 1 is one
            f"trainer.{key}={limit!r} is not allowed: every figure is over a whole set (1.0; a whole number is a "
            "count of chunks to Lightning); to spend less on the evaluation, evaluate the training figures on a fixed "
            "subset (eval.train_samples=10000) or evaluate every n epochs (trainer.check_val_every_n_epoch=n)",
        )
    accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
    require(
        accumulate == 1,
        f"trainer.accumulate_grad_batches={accumulate!r} is not allowed: a step of descent is already exact over "
        "its chunks; for a step of B samples computed a part at a time give batch_size=B and chunk_size=<the part>",
    )
    interval = cfg.trainer.get("val_check_interval", 1.0)
    require(
        interval in (1.0, None),
        f"trainer.val_check_interval={interval!r} is not allowed: descent evaluates theta^k after whole epochs k, "
        "and its figures are labelled by epoch; drop it, or evaluate less often with trainer.check_val_every_n_epoch=n",
    )
    require(
        cfg.trainer.get("enable_checkpointing", True) is not False,
        "trainer.enable_checkpointing=false is not allowed: every run keeps last.ckpt and best.ckpt, which "
        "resume=, eval.py and the report read; drop it",
    )
    root = OmegaConf.to_container(cfg.trainer, resolve=False).get("default_root_dir")  # as given: ${run_dir}
    require(
        root in (None, "${run_dir}") or str(root) == str(cfg.run_dir),
        f"trainer.default_root_dir={root!r} is not allowed: a run writes everything into its run dir, which "
        f"hydra.run.dir sets; give hydra.run.dir={root} instead (for a sweep's jobs, hydra.sweep.dir={root})",
    )
    require(
        not cfg.trainer.get("sync_batchnorm"),
        "trainer.sync_batchnorm=true is not allowed: under DDP it would replace descent's BatchNorm, which normalises "
        "fixed groups of model.norm_batch_size samples and so is the same on any number of ranks already "
        "(docs/exact_gd.md); drop it",
    )
    require(
        not cfg.trainer.get("barebones"),
        "trainer.barebones=true is not allowed: it turns off what a descent run is made of (its checkpoints, the "
        "loggers of its figures); for a lighter run give logger=none and trainer.enable_progress_bar=false",
    )
    train_samples = (cfg.get("eval") or {}).get("train_samples")
    require(
        train_samples is None or (is_whole(train_samples) and train_samples >= 1),
        f"eval.train_samples={train_samples!r} is not allowed: give a positive number of training samples, or "
        "null for all of them",
    )
    periodic = cfg.get("checkpoint") or {}
    steps, every = periodic.get("every_n_steps"), periodic.get("every_n_minutes")
    require(
        steps is None or (is_whole(steps) and steps >= 1),
        f"checkpoint.every_n_steps={steps!r} is not allowed: give a positive number of steps, or null (off)",
    )
    require(
        every is None or (is_number(every) and every > 0),
        f"checkpoint.every_n_minutes={every!r} is not allowed: give a positive number of minutes, or null (off)",
    )
    minutes = cfg.get("progress_every_minutes")
    require(
        minutes is None or (is_number(minutes) and minutes > 0),
        f"progress_every_minutes={minutes!r} is not allowed: give a positive number of minutes, or null (off)",
    )
    check_net(cfg.model)  # imports the network's module, hence torch: after the checks that need neither
    check_node_arguments(cfg)  # descent.arguments
    check_plugins(cfg.trainer)
    accelerator = cfg.trainer.get("accelerator")
    if accelerator in ("gpu", "cuda"):
        import torch

        require(
            torch.cuda.is_available(),
            "trainer.accelerator=gpu but PyTorch sees no CUDA GPU here: use trainer=cpu",
        )
    if accelerator == "mps":
        import torch

        require(
            torch.backends.mps.is_available(),
            "trainer.accelerator=mps but this machine has no Apple MPS device: use trainer=cpu",
        )


def check_net(model: DictConfig) -> None:
    """`model.net` names a network whose settings fit its signature and pass its own `check`, if it has one."""
    from descent.backprop import check_backprop, check_mlp

    backprop = model.get("backprop", "autograd")
    check_backprop(backprop)
    net = model.get("net")
    require(
        net is not None and "_target_" in net,
        "model.net is missing: give the network as a config node with a _target_ (see conf/model/mlp.yaml)",
    )
    try:
        build = get_object(net._target_)
    except Exception:
        raise DescentError(
            f"model.net._target_={net._target_!r} cannot be imported: give the import path of an nn.Module class "
            "or a function that returns one (e.g. descent.nets.MLP)"
        ) from None
    settings = {
        key: value for key, value in OmegaConf.to_container(net, resolve=True).items() if not key.startswith("_")
    }
    try:
        inspect.signature(build).bind(input_shape=(1, 1, 1), num_classes=2, **settings)
    except TypeError as error:
        raise DescentError(f"model.net: {error} ({net._target_} takes {inspect.signature(build)})") from None
    if callable(check := getattr(build, "check", None)):
        check(**settings)
    if backprop == "manual":
        check_mlp(build if isinstance(build, type) else object)


def check_plugins(trainer: DictConfig) -> None:
    """`trainer.plugins` reach Lightning after descent's own CheckpointIO (`descent.training.trainer_settings`):
    another CheckpointIO, or a precision plugin beside the `precision` flag, would end in Lightning's error."""
    plugins = trainer.get("plugins") or []
    for plugin in plugins if OmegaConf.is_list(plugins) else [plugins]:
        target = plugin.get("_target_") if OmegaConf.is_dict(plugin) else None
        try:
            built = get_object(target) if isinstance(target, str) else None
        except Exception:
            continue  # Hydra says why it cannot import it
        if not isinstance(built, type):
            continue
        from lightning.pytorch.plugins.io import CheckpointIO
        from lightning.pytorch.plugins.precision import Precision

        require(
            not issubclass(built, CheckpointIO),
            f"trainer.plugins: {target} is a CheckpointIO, and descent writes checkpoints with its own (atomically, "
            "in the background); drop it",
        )
        precision = trainer.get("precision")
        require(
            not issubclass(built, Precision) or precision is None,
            f"trainer.plugins: {target} is a precision plugin, and trainer.precision={precision} sets one too: "
            "Lightning takes one of them; give trainer.precision=null to use the plugin",
        )


def one_max_epochs(cfg: DictConfig) -> None:
    """`trainer.max_epochs` (Lightning's flag, as its users type it) and `max_epochs` are one setting: the schedule,
    the warm-up and the report all read `max_epochs`, so a trainer's own value becomes it."""
    trainer = cfg.trainer
    if "max_epochs" in trainer and not OmegaConf.is_interpolation(trainer, "max_epochs"):
        cfg.max_epochs = trainer.max_epochs


def is_sample_count(value: object) -> bool:
    """A positive int, or `full`: what `batch_size` and `chunk_size` accept."""
    return value == "full" or (is_whole(value) and value >= 1)


def check_sizes(batch_size: object, chunk_size: object, val_size: object, train_size: object) -> None:
    """The one check of the data's sizes, before any data is loaded (descent.config, and `ImageData` built
    directly); `setup` checks them against the set's size once it is loaded."""
    require(
        is_sample_count(batch_size),
        f"batch_size={batch_size!r} is not allowed: give a positive number of samples per step, or batch_size=full",
    )
    require(
        is_sample_count(chunk_size),
        f"chunk_size={chunk_size!r} is not allowed: give a positive number of samples, or chunk_size=full",
    )
    require(
        is_whole(val_size) and val_size >= 1,
        f"data.val_size={val_size!r} is not allowed: give a whole number of samples, at least 1",
    )
    require(
        train_size is None or (is_whole(train_size) and train_size >= 1),
        f"data.train_size={train_size!r} is not allowed: give a whole number of samples, at least 1, or null for "
        "all of them",
    )


def check_noise(batch_size: object, samples: object) -> None:
    """The one check of noise.batch_size and noise.samples: before data loads (descent.config) and where they
    enter (`GradientNoise`); the batch size against N once the data is loaded."""
    for key, value in (("batch_size", batch_size), ("samples", samples)):
        require(is_whole(value) and value >= 1, f"noise.{key}={value!r} is not allowed: give a positive whole number")
