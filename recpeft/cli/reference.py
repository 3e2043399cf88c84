"""docs/train-options.md, generated from the TrainConfig fields.

    python -m recpeft.cli.reference > docs/train-options.md

tests/test_options.py fails when the file in the tree differs from what this prints, so the table
cannot drift from the flags `recpeft train` really has.
"""

from __future__ import annotations

from recpeft.cli.options import CONFIG_HELP, DRY_RUN_HELP, flag_names, shown_default
from recpeft.config import FIELDS

COMMAND = "python -m recpeft.cli.reference > docs/train-options.md"


def _cell(text: str) -> str:
    """Escape what a table cell would otherwise lose: '|' ends the cell, '<domain>' reads as an HTML tag."""
    return text.replace("|", "\\|").replace("<", "\\<")


def _default(f) -> str:
    """Values in code style; the metadata's words for a computed default (and on/off) as they are."""
    shown = shown_default(f)
    return _cell(shown) if "flag_default" in f.metadata or isinstance(f.default, bool) else f"`{shown}`"


def _flags(names: list[str]) -> str:
    return ", ".join(" / ".join(f"`{part}`" for part in name.split("/")) for name in names)


def markdown() -> str:
    """The whole file: a heading, how it was made, and one table row per flag."""
    rows = [("`--config`, `-c`", "–", "–", CONFIG_HELP)]
    for name, f in FIELDS.items():
        rows.append((_flags(flag_names(f)), f"`{name}`", _default(f), _cell(f.metadata["help"])))
    rows.append(("`--dry-run`", "–", "off", DRY_RUN_HELP))
    lines = [
        "# `recpeft train` options",
        "",
        "Generated from the TrainConfig fields (recpeft/config.py, recpeft/methods/settings.py) by",
        f"`{COMMAND}`; do not edit by hand. Every flag but `--config` and",
        "`--dry-run` is also a key of the YAML file given to `--config`; precedence: defaults < YAML < flags.",
        "`recpeft train --help` shows the same text.",
        "",
        "| flag | YAML key | default | help |",
        "|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
