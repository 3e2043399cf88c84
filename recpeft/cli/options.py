"""`recpeft train`'s flags, generated from the TrainConfig fields (recpeft/config.py).

Each field's metadata holds its help text, short alias and shown default, so a new field is a new
flag, a new YAML key and a new row of docs/train-options.md at once. Values reach build_config
untouched (None = not given): ranges and choices are checked there, with one error style for flags
and YAML alike.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from recpeft.config import FIELDS, KINDS

# The two flags of `recpeft train` that are no TrainConfig field.
CONFIG_HELP = "YAML file with the same keys as these flags (snake_case); flags override it."
DRY_RUN_HELP = "Print the resolved config, the examples per split and the trainable/total parameters; train " \
               "and write nothing."


def flag(f: dataclasses.Field) -> str:
    """The long flag of a field: --<name with dashes>, unless its metadata names another."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def flag_names(f: dataclasses.Field) -> list[str]:
    """Long flag (a --x/--no-x pair for a bool field), then the short alias if the field has one."""
    long = flag(f)
    if KINDS[f.name][0] is bool:
        long = f"{long}/--no-{long[2:]}"
    return [long] + ([f.metadata["short"]] if "short" in f.metadata else [])


def shown_default(f: dataclasses.Field) -> str:
    """The default as --help and the docs show it: the metadata's words when the value says little."""
    if "flag_default" in f.metadata:
        return f.metadata["flag_default"]
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    return "none" if f.default is None else str(f.default)


def help_text(f: dataclasses.Field) -> str:
    return f"{f.metadata['help']} [default: {shown_default(f)}]"


def _cli_type(name: str) -> type:
    kind = KINDS[name][0]
    return str if kind is list else kind  # a list is given as "a,b" (build_config splits it)


def train_parameters() -> list[inspect.Parameter]:
    """One keyword parameter per TrainConfig field (default None: not given), then --config and --dry-run."""
    params = [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                                default=typer.Option(None, "--config", "-c", help=CONFIG_HELP))]
    for name, f in FIELDS.items():
        option = typer.Option(None, *flag_names(f), help=help_text(f), show_default=False)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=_cli_type(name) | None))
    params.append(inspect.Parameter("dry_run", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                    default=typer.Option(False, "--dry-run", help=DRY_RUN_HELP)))
    return params


def with_train_flags(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give `func(config, dry_run, **fields)` the generated signature Typer reads its options from."""
    params = train_parameters()
    assert len({p.name for p in params}) == len(params), "a TrainConfig field clashes with --config/--dry-run"
    func.__signature__ = inspect.Signature(params)
    func.__annotations__ = {p.name: p.annotation for p in params}
    return func
