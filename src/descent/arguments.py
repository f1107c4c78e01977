"""A class's arguments, as a config node's `_target_` names it: what the command line (descent.command_keys) and a
config file (`check_node_arguments`, from descent.config) may give it. Imports a class only when asked about it."""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from descent.errors import require

HYDRA_KEYS = {"_target_", "_args_", "_partial_", "_recursive_", "_convert_"}
"""What Hydra's `instantiate` reads under any node with a `_target_`, whatever the class."""


def target_parameters(target: str) -> frozenset[str] | None:
    """The keyword arguments `target` (a class or function, as `_target_` names it) accepts, its bases' included
    while its `__init__` passes **kwargs on; None when it takes any, or cannot be imported (Hydra will say why).
    Imported only for a key that no config lists, a class's own argument or a typo: then torch may load first."""
    try:
        built = get_object(target)
    except Exception:
        return None
    names: set[str] = set()
    for function in initialisers(built):
        found = keywords(function)
        if found is None:
            return None
        names |= found[0]
        if not found[1]:
            return frozenset(names)
    return frozenset(names) if isinstance(built, type) else None


def closed_parameters(target: str) -> frozenset[str] | None:
    """The keyword arguments `target` takes where its signature names all of them; None where it takes **kwargs
    (a class may keep them for later, as a DDP strategy or a logger does, rather than pass them to its base), is
    built by a `__new__` (torchmetrics' task wrappers), or cannot be imported: what a config file may give it."""
    try:
        built = get_object(target)
    except Exception:
        return None
    if isinstance(built, type) and any("__new__" in vars(cls) for cls in built.__mro__ if cls is not object):
        return None
    found = keywords(next(iter(initialisers(built)), object.__init__))
    return frozenset(found[0]) if found is not None and not found[1] else None


def initialisers(built: Any) -> list[Any]:
    """What a call of `built` runs: a function itself, or a class's `__init__`s from its own to its bases'."""
    if not isinstance(built, type):
        return [built]
    return [cls.__init__ for cls in built.__mro__ if "__init__" in vars(cls) and cls is not object]


def keywords(function: Any) -> tuple[set[str], bool] | None:
    """The keyword arguments `function` names, and whether it takes **kwargs besides; None without a signature."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
    return names, any(p.kind is p.VAR_KEYWORD for p in parameters)


def check_node_arguments(cfg: DictConfig) -> None:
    """Every key of a node that builds a class (`_target_`) is an argument of that class, where its signature names
    them all: a typo in a config file (`lrr: 0.1` in an optimizer yaml of one's own) is one line before training,
    not a traceback once the optimizer is built, nor a setting dropped. A class taking **kwargs may take any key.
    The command line's keys are checked before Hydra runs (descent.command_keys); model.net by `check_net`."""

    def visit(node: object, path: str) -> None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                visit(item, f"{path}[{i}]")
            return
        if not isinstance(node, dict):
            return
        target = node.get("_target_")
        parameters = closed_parameters(target) if isinstance(target, str) and path != "model.net" else None
        for key in node if parameters is not None else ():
            if isinstance(key, str) and key not in HYDRA_KEYS and key not in parameters:
                near = difflib.get_close_matches(key, sorted(parameters), n=1)
                takes = f"it takes {', '.join(sorted(parameters))}" if parameters else "it takes no arguments"
                hint = f"did you mean {path}.{near[0]}?" if near else takes
                require(False, f"{path}.{key} is set in a config file, but {target} takes no {key}: {hint}")
        for key, value in node.items():
            if key != "hydra":
                visit(value, f"{path}.{key}".lstrip("."))

    visit(OmegaConf.to_container(cfg, resolve=False), "")
