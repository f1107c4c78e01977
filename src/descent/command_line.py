"""The command line, checked before Hydra runs and before torch loads: every `group=option` names a file of its group,
and every key given (`key=`, `+key=`, `++key=`, `~key`) is a setting of the composed config or an argument of the
class its node builds. Each mistake is one line naming the key and a command that works.

Hydra refuses `max_epoch=1` in a dozen lines that advise `+max_epoch=1`, and then accepts `+max_epoch=1` and
ignores it: a mistyped key with `+` trained the defaults without a word. Here both say
`max_epoch is not a setting: did you mean max_epochs?`.

Hydra's own groups (`hydra/launcher=`) and the settings of the sweeper and launcher chosen (`hydra.sweeper.n_trials=`,
`hydra.launcher.cpus_per_task=`) are checked the same way; Hydra checks the rest of `hydra.*` itself.

The config is composed with Hydra's own loader (the search path `hydra.main` builds, `-cp`, `-cn`, `-cd` and
`hydra.searchpath=` included) from the group choices alone; `command_keys` checks each key against it.
"""

import itertools
import math
import os
from contextlib import redirect_stderr
from io import StringIO
from pathlib import Path
from typing import Any

from descent.command_keys import CommandLine, Configs, check_key, given_targets
from descent.errors import require

HYDRAS_OWN = " and those Hydra and its plugins add"
"""Where a `hydra/` group's other options come from (`hydra/launcher=basic`, `submitit_local`)."""

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
    modes = {
        "--run": args.run,
        "-m": args.multirun,
        "--cfg": args.cfg,
        "--info": args.info is not None,
        "--shell-completion": args.shell_completion,
    }
    given = [flag for flag, on in modes.items() if on]
    together = " and ".join(given)
    require(len(given) < 2, f"{together} cannot be given together: Hydra does one of them; give only that one")
    if args.info is not None or args.shell_completion:
        return
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except HydraException:
        return  # bad syntax: Hydra's message shows where
    if args.help or args.hydra_help:  # printed whatever the keys, but Hydra's help composes one run: no sweep
        check_no_sweep(overrides, None, CommandLine(argv, script), "--help")
        return
    loader = config_loader(script, args.config_path or config_path, args.config_dir)
    if loader is None:
        return
    name = args.config_name or config_name
    searchpath = [o.input_line for o in overrides if o.key_or_group == "hydra.searchpath"]
    subgroups: dict[str, list[str]] = {}  # of each parent group ("" for the top): listed once, not per override
    groups = [  # descent's and Hydra's own (hydra/launcher=, hydra/sweeper/pruner=)
        o
        for o in overrides
        if (not o.is_hydra_override() or o.key_or_group.startswith("hydra/"))
        and is_group(loader, name, searchpath, o.key_or_group, subgroups)
    ]
    keys = [
        o for o in overrides if o not in groups and (not o.is_hydra_override() or is_checked_hydra_key(o.key_or_group))
    ]
    command = CommandLine(argv, script)
    if not args.multirun and (args.cfg or not set_to_multirun(loader, name, args.overrides, overrides)):
        check_no_sweep(overrides, groups, command, "--cfg" if args.cfg else None)
    for override in groups:
        check_group_option(loader, name, searchpath, override)
    for override in overrides:
        check_search_dimension(override, command)
    if not keys:
        return  # nothing to look up: no config composed, no time spent
    configs = composed(loader, name, searchpath, groups)
    targets = given_targets(keys)
    for override in keys:
        check_key(override, configs, targets, command)


def check_no_sweep(overrides: list[Any], groups: list[Any] | None, command: CommandLine, shown: str | None) -> None:
    """`optimizer=gd,sgd` without -m: Hydra's four lines weigh a list, a string and a sweep; here, one line (the
    list offered for a setting, not for a group's choice: none where `groups` is not known). `shown`: the option
    that shows one run's config (--cfg, --help), to which -m cannot be added."""
    from hydra.core.override_parser.types import ValueType

    sweep = next((o for o in overrides if o.is_sweep_override()), None)
    if sweep is None:
        return
    key, _, values = sweep.input_line.partition("=")
    simple = sweep.value_type == ValueType.SIMPLE_CHOICE_SWEEP
    a_list = simple and groups is not None and not any(sweep is group for group in groups)
    one_list = f", or, for a list, {key}=[{values}]" if a_list else ""
    if shown is not None:
        require(False, f"{sweep.input_line} is several values, and {shown} shows one run's: give one value{one_list}")
    require(False, f"{sweep.input_line} is several values: add -m to run a job for each ({command.with_multirun()})"
                   f"{one_list}")  # fmt: skip


# The config, composed as Hydra composes it


CHECKED_HYDRA_NODES = ("hydra.sweeper", "hydra.sweeper.sampler", "hydra.sweeper.pruner", "hydra.launcher")
"""The nodes of Hydra's config whose keys are checked as descent's: the sweeper's, its sampler's and pruner's and
the launcher's settings (`hydra.sweeper.n_trials=`, `hydra.launcher.cpus_per_task=`). Not what lies deeper: a
search space's entries (`hydra.sweeper.params.<key>=`, see `check_search_dimension`), a launcher's free-form options
(`+hydra.launcher.additional_parameters.<any sbatch option>=`)."""

SEARCH_SPACE = "hydra.sweeper.params."


def check_search_dimension(override: Any, command: CommandLine) -> None:
    """`hydra.sweeper.params.optimizer.lr=interval(0.01,0.1)` fails in Hydra: it reads the dots of `optimizer.lr` as
    nodes that `params` does not have, and refuses a sweep of its own settings, in a line that does not say what
    works. A sweep or search takes a dimension as its own key (`optimizer.lr=interval(0.01,0.1)`), in place of the
    same key of its space: that is the command offered."""
    key = override.key_or_group
    if not key.startswith(SEARCH_SPACE) or override.is_delete():
        return
    name = key.removeprefix(SEARCH_SPACE)
    if "." not in name and not override.is_sweep_override():
        return  # a one-word key given a quoted value: Hydra sets or adds it as the space's yaml would
    value = override.input_line.partition("=")[2]
    if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    fix = command.with_argument(override.input_line, f"{name}={value}")
    require(False, f"{key} is not a search dimension Hydra takes on the command line: give it as {name}= ({fix})")


def is_checked_hydra_key(key: str) -> bool:
    return key.rpartition(".")[0] in CHECKED_HYDRA_NODES


def set_to_multirun(loader: Any, config_name: str, lines: list[str], overrides: list[Any]) -> bool:
    """`hydra.mode=MULTIRUN`, Hydra's other way to ask for -m, on the command line or in a config the overrides
    choose (an experiment that is always a sweep): read as Hydra reads it, only where the arguments sweep."""
    from hydra.types import RunMode

    if not any(override.is_sweep_override() for override in overrides):
        return False
    try:
        config = loader.load_configuration(config_name, lines, RunMode.MULTIRUN, validate_sweep_overrides=False)
    except Exception:  # any failure to compose is Hydra's to report, in its own words
        return False
    return config.hydra.mode == RunMode.MULTIRUN


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
                f"(the files in conf/{group}/{HYDRAS_OWN if group.startswith('hydra/') else ''})",
            )


def composed(loader: Any, config_name: str, searchpath: list[str], groups: list[Any]) -> Configs:
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
