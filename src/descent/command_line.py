"""The command line, checked before Hydra runs and before torch loads: every `group=option` names a file of its group,
and every key given (`key=`, `+key=`, `++key=`, `~key`) is a setting of the composed config or an argument of the
class its node builds. Each mistake is one line naming the key and a command that works.

Hydra refuses `max_epoch=1` in a dozen lines that advise `+max_epoch=1`, and then accepts `+max_epoch=1` and
ignores it: a mistyped key with `+` trained the defaults without a word. Here both say
`max_epoch is not a setting: did you mean max_epochs?`.

The config is composed with Hydra's own loader (the search path `hydra.main` builds, `-cp`, `-cn`, `-cd` and
`hydra.searchpath=` included) from the group choices alone. A key that no config lists is looked up in the
arguments of the class its node builds, which imports that class (and torch with it) in this rare case only.
"""

import difflib
import inspect
import itertools
import math
import os
import shlex
from collections.abc import Iterator
from contextlib import redirect_stderr
from io import StringIO
from pathlib import Path
from typing import Any

from hydra.utils import get_object

from descent.errors import require

HYDRA_KEYS = {"_target_", "_args_", "_partial_", "_recursive_", "_convert_"}
"""What Hydra's `instantiate` reads under any node with a `_target_`, whatever the class."""

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

MOST_COMPOSED = 8
"""Group-choice combinations of a sweep composed in full; beyond it each group's choices are tried one at a time."""


def check_arguments(argv: list[str], script: Path, config_path: str, config_name: str) -> None:
    """Refuse an unknown group option or key of `argv` (what `hydra.main(config_path, config_name)` in `script`
    would be given) with a DescentError whose message says what to type instead."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    with redirect_stderr(StringIO()):  # argparse's own complaint is Hydra's to print
        try:  # options among the overrides (`a=1 -m b=2`) are refused by Hydra, after what is wrong with them
            args = get_args_parser().parse_intermixed_args(argv)
        except (SystemExit, TypeError):
            return
    if args.help or args.hydra_help or args.info is not None or args.shell_completion:
        return
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except HydraException:
        return  # bad syntax: Hydra's message shows where
    loader = config_loader(script, args.config_path or config_path, args.config_dir)
    if loader is None:
        return
    name = args.config_name or config_name
    searchpath = [o.input_line for o in overrides if o.key_or_group == "hydra.searchpath"]
    ours = [o for o in overrides if not o.is_hydra_override()]
    subgroups: dict[str, list[str]] = {}  # of each parent group ("" for the top): listed once, not per override
    groups = [o for o in ours if is_group(loader, name, searchpath, o.key_or_group, subgroups)]
    keys = [o for o in ours if o not in groups]
    for override in groups:
        check_group_option(loader, name, searchpath, override)
    if not keys:
        return  # nothing to look up: no config composed, no time spent
    command = CommandLine(argv, script)
    configs = composed(loader, name, searchpath, groups)
    targets = given_targets(keys)
    for override in keys:
        check_key(override, configs, targets, command)


# The config, composed as Hydra composes it


def config_loader(script: Path, config_path: str, config_dir: str | None) -> Any:
    """Hydra's config loader over the search path `hydra.main` builds for `script` (None: a dir that is not there,
    for Hydra to report)."""
    from hydra import version
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.config_search_path import SearchPathQuery

    version.setbase("1.3")  # as train.py and eval.py declare it
    search_path = create_automatic_config_search_path(str(script), None, config_path)
    if config_dir is not None:
        if not os.path.isdir(config_dir):
            return None
        query = SearchPathQuery(provider="schema")
        search_path.prepend(provider="command-line", path=f"file://{os.path.abspath(config_dir)}", anchor=query)
    return ConfigLoaderImpl(config_search_path=search_path)


def is_group(loader: Any, config_name: str, searchpath: list[str], key: str, subgroups: dict[str, list[str]]) -> bool:
    from hydra.core.object_type import ObjectType

    parent, _, name = key.rpartition("/")
    if parent not in subgroups:
        subgroups[parent] = group_options(loader, config_name, searchpath, parent, ObjectType.GROUP)
    return name in subgroups[parent]


def group_options(loader: Any, config_name: str, searchpath: list[str], group: str, kind: Any = None) -> list[str]:
    from hydra.core.object_type import ObjectType

    kind = kind or ObjectType.CONFIG
    return loader.get_group_options(group, results_filter=kind, config_name=config_name, overrides=searchpath)


def choices(override: Any) -> list[Any]:
    """The values a group override selects: one, or each of a sweep's (a list value is one choice)."""
    if override.is_delete() or override.value() is None:
        return []
    if override.is_discrete_sweep() and not override.is_range_sweep():
        return list(override.sweep_iterator())
    return [override.value()]


def check_group_option(loader: Any, config_name: str, searchpath: list[str], override: Any) -> None:
    """`optimizer=nope` (or one choice of `-m optimizer=gd,nope`, one item of `callbacks=[a,nope]`) refused in one
    line, rather than Hydra's dozen naming the config search path."""
    from hydra.core.override_parser.types import Glob

    if isinstance(override.value(), Glob):
        return  # glob(*) picks among the options: nothing to misspell
    group = override.key_or_group
    options = sorted(group_options(loader, config_name, searchpath, group))
    for choice in choices(override):
        for option in choice if isinstance(choice, list) else [choice]:
            require(
                str(option) in options,
                f"{group}={option} is not an option of {group}: choose one of {', '.join(options)} "
                f"(the files in conf/{group}/)",
            )


def composed(loader: Any, config_name: str, searchpath: list[str], groups: list[Any]) -> "Configs":
    """The configs the group choices make, composed one at a time as the check needs them: one without a sweep,
    every combination of a small sweep, each group's choices in turn beside the others' first in a large one."""
    from hydra.core.override_parser.types import Transformer

    each = []
    for override in groups:
        override.config_loader = loader  # glob(*) lists the group's options through it
        if override.is_discrete_sweep() and not override.is_range_sweep():
            key = override.get_key_element()
            each.append([f"{key}={value}" for value in override.sweep_iterator(transformer=Transformer.str)])
        else:
            each.append([override.input_line])
    if math.prod(len(options) for options in each) <= MOST_COMPOSED:
        lines = list(itertools.product(*each))
    else:  # the first choices, then one group's other choices at a time
        firsts = [options[0] for options in each]
        lines = [tuple(firsts)] + [
            tuple(firsts[:i] + [choice] + firsts[i + 1 :]) for i, options in enumerate(each) for choice in options[1:]
        ]
    return Configs(loader, config_name, [[*searchpath, *chosen] for chosen in lines])


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
        tree.pop("hydra", None)
        return tree


# Keys


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
        return Problem(path, target, parameters)
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


class CommandLine:
    """The command as the user typed it, to print with one argument mended."""

    def __init__(self, argv: list[str], script: Path) -> None:
        self.argv, self.program = argv, f"python {os.path.relpath(script)}"

    def with_argument(self, old: str, new: str | None) -> str:
        """The command with `old` replaced by `new` (None: without it)."""
        index = self.argv.index(old)
        argv = self.argv[:index] + ([new] if new is not None else []) + self.argv[index + 1 :]
        return " ".join([self.program, *(shlex.quote(argument) for argument in argv)])


def check_key(override: Any, configs: "Configs", targets: dict[str, str], command: "CommandLine") -> None:
    """A key of some composed config (of any, in a sweep) or an argument of a class it builds; with `+`, not one
    the config has already, and with `~`, one it has (Hydra's dozen lines for those advise what this line says)."""
    parts = override.key_or_group.split(".")
    problem: Problem | None = None
    for config in configs:
        if config is None:
            return  # a choice Hydra cannot compose: its own message says why
        problem = find_problem(config, parts, targets)
        if problem is None:
            break
    if problem is None and (override.is_add() or override.is_delete()):
        trees = list(configs)
        if None in trees:
            return
        listed = [is_listed(tree, parts) for tree in trees]
        key, line = override.key_or_group, override.input_line
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
        require(False, f"{key} is not {what}, which takes {takes}: drop it ({fix})")
    require(False, f"{key} is not a setting ({command.program} --cfg job lists them): drop it ({fix})")


# A class's arguments


def target_parameters(target: str) -> frozenset[str] | None:
    """The keyword arguments `target` (a class or function, as `_target_` names it) accepts, its bases' included
    while its `__init__` passes **kwargs on; None when it takes any, or cannot be imported (Hydra will say why).
    Imported only for a key that no config lists, a class's own argument or a typo: then torch may load first."""
    try:
        built = get_object(target)
    except Exception:
        return None
    if isinstance(built, type):
        functions = [cls.__init__ for cls in built.__mro__ if "__init__" in vars(cls) and cls is not object]
    else:
        functions = [built]
    names: set[str] = set()
    for function in functions:
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return frozenset(names)
    return frozenset(names) if isinstance(built, type) else None
