"""Is a key of the command line a setting? A key of the composed config (of any, in a sweep), or an argument of the
class its node builds; else one line naming the nearest setting, with the command mended.

A key that no config lists is looked up in the arguments of the class its node builds, which imports that class (and
torch with it) in this rare case only.
"""

from __future__ import annotations

import difflib
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from descent.arguments import HYDRA_KEYS, target_parameters
from descent.errors import require

SET_BY_DESCENT = {
    "data.batch_size": "batch_size",
    "data.chunk_size": "chunk_size",
    "data.seed": "seed",
    "model.net.input_shape": None,
    "model.net.num_classes": None,
    "model.optimizer": "optimizer",
    "model.scheduler": "scheduler",
    "model.metrics": "metrics",
    "model.warmup_epochs": "warmup_epochs",
    "model.monitor": "monitor",
    "model.gradient_clip_val": "trainer.gradient_clip_val",
    "model.gradient_clip_algorithm": "trainer.gradient_clip_algorithm",
    "trainer.logger": "logger",
    "trainer.callbacks": "callbacks",
}
"""Arguments that `descent.training.build` passes itself, over whatever the node says: given on the command line
they would be ignored, so they are refused, naming the key that sets them (None: the data or the config sets it)."""


class Problem:
    """Why a key is not a setting: where its path leaves the config, and the class that node builds, if any."""

    def __init__(self, node_path: str, target: str | None, parameters: frozenset[str] | None) -> None:
        self.node_path, self.target, self.parameters = node_path, target, parameters


def given_targets(overrides: list[Any]) -> dict[str, str]:
    """`node._target_=a.B` given on the command line: that node builds `a.B`, whatever its yaml says."""
    found = {}
    for override in overrides:
        node, _, last = override.key_or_group.rpartition(".")
        if last == "_target_" and isinstance(override.value(), str) and not override.is_delete():
            found[node] = override.value()
    return found


def find_problem(config: dict, parts: list[str], targets: dict[str, str]) -> Problem | None:
    """None when `parts` is a key of `config`, a key below a value (`data.augment.flip`: its class checks it), or
    an argument of the class a node builds; else where it goes wrong."""
    node: Any = config
    for depth, part in enumerate(parts):
        if not isinstance(node, dict):
            return None  # inside a value (null, a list, a number): its class checks it, or Hydra refuses it
        path = ".".join(parts[:depth])
        here = f"{path}.{part}".lstrip(".")
        if here in SET_BY_DESCENT and part not in node:
            return Problem(here, None, None)
        if part in node:
            node = node[part]
            continue
        if here in targets and is_collection(node):  # a new entry of callbacks, metrics, ...: `+callbacks.x._target_`
            node = {"_target_": targets[here]}
            continue
        target = targets.get(path, node.get("_target_"))
        if target is None:
            return Problem(path, None, None)
        if part in HYDRA_KEYS or not isinstance(target, str):
            return None
        parameters = target_parameters(target)
        if parameters is None or part in parameters:
            return None
        listed = {key for key in node if isinstance(key, str) and key not in HYDRA_KEYS}  # a launcher's fields too
        return Problem(path, target, parameters | listed)
    return None


def is_collection(node: dict) -> bool:
    """A node of named objects (callbacks, metrics, loggers): empty, or every entry builds something."""
    return all(isinstance(value, dict) and "_target_" in value for value in node.values())


def known_keys(config: dict, prefix: str = "") -> Iterator[str]:
    """The dotted keys a value can be given to: leaves, and nodes that are empty or null."""
    for key, value in config.items():
        if not isinstance(key, str) or key in HYDRA_KEYS:
            continue
        if isinstance(value, dict) and value:
            yield from known_keys(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def target_nodes(config: dict, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(path, target) of every node with a string `_target_`."""
    if isinstance(config.get("_target_"), str):
        yield prefix.rstrip("."), config["_target_"]
    for key, value in config.items():
        if isinstance(value, dict):
            yield from target_nodes(value, f"{prefix}{key}.")


def check_key(override: Any, configs: Configs, targets: dict[str, str], command: CommandLine) -> None:
    """A key of some composed config (of any, in a sweep) or an argument of a class it builds; without `+`, one the
    config lists (`++` where some of a sweep's configs do), with `+`, not one the config has already, and with `~`,
    one it has (Hydra's dozen lines for those advise what this line says)."""
    parts = override.key_or_group.split(".")
    problem: Problem | None = None
    for config in configs:
        if config is None:
            return  # a choice Hydra cannot compose: its own message says why
        problem = find_problem(config, parts, targets)
        if problem is None:
            break
    if problem is None:
        trees = list(configs)
        if None in trees:
            return
        listed = [is_listed(tree, parts) for tree in trees]
        key, line = override.key_or_group, override.input_line
        plain = not (override.is_add() or override.is_force_add() or override.is_delete())
        # A setting of some of a sweep's jobs and of no class in another, with or without + or ++: that job would
        # fail after the others had trained.
        for tree, chosen in zip(trees, configs.overrides, strict=True) if not override.is_delete() else ():
            found = find_problem(tree, parts, targets)
            if found is not None:
                choices = " ".join(o for o in chosen if not o.startswith("hydra."))
                job = f"the sweep's job with {choices}"
                what = f"{found.target} ({job})" if found.target else job
                require(False, f"{key} is not a setting of {what}: drop it, or sweep the jobs that take it apart "
                               f"({command.with_argument(line, None)})")  # fmt: skip
        if plain and not all(listed):  # Hydra's "not in struct" in a dozen lines, for the whole sweep before any job
            fix = command.with_argument(line, ("++" if any(listed) else "+") + line)  # a key its class takes
            some = "in some of the sweep's configs only: give it with ++, which sets or adds it"
            require(False, f"{key} is {some if any(listed) else 'not in the config yet: add it with +'} ({fix})")
        if override.is_delete() and not any(listed):  # an argument its yaml does not list: nothing to delete
            problem = Problem(".".join(parts[:-1]), None, None)
        elif override.is_add() and all(listed):
            require(False, f"{key} is a setting already: give it without + ({command.with_argument(line, line[1:])})")
        elif override.is_add() and any(listed):
            fix = command.with_argument(line, f"+{line}")
            require(False, f"{key} is a setting already in some of the sweep's configs: give it with ++ ({fix})")
    if problem is not None:
        raise_problem(problem, override, configs, command)


def is_listed(config: dict, parts: list[str]) -> bool:
    node: Any = config
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def raise_problem(problem: Problem, override: Any, configs: Configs, command: CommandLine) -> None:
    """The one line: the key, why it is not a setting, and the command with the nearest setting (or without it)."""
    key = override.key_or_group
    _, sep, value = override.input_line.partition("=")
    if problem.node_path in SET_BY_DESCENT:
        source = SET_BY_DESCENT[problem.node_path]
        if source is None:
            fix = command.with_argument(override.input_line, None)
            require(False, f"{key} is set by descent from the data, not on the command line: drop it ({fix})")
        fix = command.with_argument(override.input_line, f"{source}{sep}{value}")
        require(False, f"{key} is set by descent from {source}: give {source} instead ({fix})")

    trees = [config for config in configs if config is not None]
    settings = {k for tree in trees for k in known_keys(tree)} - set(SET_BY_DESCENT)
    if problem.target is not None:  # a class's own argument: the nearest of its signature, by name
        arguments = sorted(problem.parameters or ()) if not override.is_delete() else []
        names = [p for p in arguments if f"{problem.node_path}.{p}" not in SET_BY_DESCENT]
        near = difflib.get_close_matches(key.rpartition(".")[2], names, n=1)
        nearest = [f"{problem.node_path}.{near[0]}"] if near else []
        what = f"a setting of {problem.target}"
    else:  # anywhere: the nearest setting, else the nearest argument of the classes the config builds
        nearest = difflib.get_close_matches(key, sorted(settings), n=1, cutoff=0.85)  # one or two letters off
        if not nearest and not override.is_delete():  # imports those classes: only when no setting is that near
            arguments = {f"{path}.{p}" for path, target in target_nodes(trees[0])
                         for p in target_parameters(target) or ()}  # fmt: skip
            nearest = difflib.get_close_matches(key, sorted(arguments - settings - set(SET_BY_DESCENT)), n=1)
        what = "a setting"
    if nearest:
        listed = [nearest[0] in set(known_keys(tree)) for tree in trees]
        prefix = "~" if override.is_delete() else "" if all(listed) and not override.is_force_add() else "+"
        if prefix == "+" and (any(listed) or override.is_force_add()):
            prefix = "++"  # listed by some choices of a sweep and not others: ++ sets it in both
        fix = command.with_argument(override.input_line, f"{prefix}{nearest[0]}{sep}{value}")
        require(False, f"{key} is not {what}: did you mean {nearest[0]}? ({fix})")
    fix = command.with_argument(override.input_line, None)
    if problem.target is not None:
        takes = ", ".join(
            p for p in sorted(problem.parameters or ()) if f"{problem.node_path}.{p}" not in SET_BY_DESCENT
        )
        require(False, f"{key} is not {what}, which takes {takes or 'no settings'}: drop it ({fix})")
    require(False, f"{key} is not a setting ({command.program} --cfg job lists them): drop it ({fix})")


class Configs:
    """Composed configs as plain containers (interpolations unresolved), each composed when first read; None for
    one that Hydra cannot compose (Hydra says why when it runs)."""

    def __init__(self, loader: Any, config_name: str, overrides: list[list[str]]) -> None:
        self.loader, self.config_name, self.overrides = loader, config_name, overrides
        self.done: list[dict | None] = []

    def __iter__(self) -> Iterator[dict | None]:
        yield from self.done
        for overrides in self.overrides[len(self.done) :]:
            self.done.append(self.compose(overrides))
            yield self.done[-1]

    def compose(self, overrides: list[str]) -> dict | None:
        from hydra.types import RunMode
        from omegaconf import OmegaConf

        try:
            config = self.loader.load_configuration(self.config_name, overrides, RunMode.RUN)
        except Exception:  # any failure to compose is Hydra's to report, in its own words
            return None
        tree = OmegaConf.to_container(config, resolve=False)
        hydra = tree.pop("hydra", None) or {}
        tree["hydra"] = {key: hydra[key] for key in ("sweeper", "launcher") if key in hydra}  # the keys checked
        return tree


class CommandLine:
    """The command as the user typed it, to print with one argument mended."""

    def __init__(self, argv: list[str], script: Path) -> None:
        self.argv, self.program = argv, f"python {os.path.relpath(script)}"

    def with_multirun(self) -> str:
        return " ".join([self.program, "-m", *(shlex.quote(argument) for argument in self.argv)])

    def with_argument(self, old: str, new: str | None) -> str:
        """The command with `old` replaced by `new` (None: without it)."""
        index = self.argv.index(old)
        argv = self.argv[:index] + ([new] if new is not None else []) + self.argv[index + 1 :]
        return " ".join([self.program, *(shlex.quote(argument) for argument in argv)])
