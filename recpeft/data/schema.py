"""Records every loader produces: a catalogue of items with text, and timestamped interactions.

Instruction data (alpaca / TALLRec JSON) has no catalogue: it loads as `InstructionData`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Item:
    """An item with its prompt text.

    `category` is one display string; `categories` the separate labels (MovieLens genres, an
    Amazon category path, a MIND topic) that interest discovery scores as a set. Give either:
    the other is filled in (categories from category, or category joined from categories).
    `description` is optional extra text (Amazon brand or description), never part of `text()`.
    """

    item_id: str
    title: str
    category: str = ""
    categories: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if not self.categories and self.category:
            object.__setattr__(self, "categories", (self.category,))
        elif self.categories and not self.category:
            object.__setattr__(self, "category", ", ".join(self.categories))
        if not isinstance(self.categories, tuple):
            object.__setattr__(self, "categories", tuple(self.categories))

    def text(self) -> str:
        """How the item appears in a prompt: its title, plus its category when known (kept short)."""
        return f"{self.title} ({self.category})" if self.category else self.title


@dataclass(frozen=True)
class Interaction:
    user_id: str
    item_id: str
    timestamp: int
    rating: float | None = None  # explicit 1-5 rating, when the source has one
    click: int | None = None  # implicit 0/1 feedback, when the source has one

    @property
    def liked(self) -> bool:
        """TALLRec's rule: rating > 3 is a like; for clicks, a click is a positive."""
        if self.rating is not None:
            return self.rating > 3
        return bool(self.click)


@dataclass
class RecData:
    """A loaded data set: items by id and interactions sorted by (user, time).

    `users` holds optional per-user attributes (MovieLens age/gender/occupation); `stats` what
    the loader counted on the way (rows read, rows skipped, ids dropped, duplicates), by name.
    """

    name: str
    items: dict[str, Item]
    interactions: list[Interaction]
    users: dict[str, dict[str, str]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Short content hash, recorded in recpeft.json so a result can be traced to its data."""
        h = hashlib.sha256()
        for it in sorted(self.items.values(), key=lambda i: i.item_id):
            h.update(f"{it.item_id}\t{it.title}\t{it.category}\n".encode())
        for x in self.interactions:
            h.update(f"{x.user_id}\t{x.item_id}\t{x.timestamp}\t{x.rating}\t{x.click}\n".encode())
        return h.hexdigest()[:16]


ALPACA_TEMPLATE = ("Below is an instruction that describes a task, paired with an input that provides further "
                   "context. Write a response that appropriately completes the request.\n\n"
                   "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")


@dataclass(frozen=True)
class Instruction:
    """One alpaca / TALLRec record, text used as-is.

    `label` is 1 / 0 when `output` starts with Yes / No (TALLRec's preference answers), else None.
    `split` is "train", "valid" or "test" when the file name says so, else None.
    `source` is the "file:line" the record came from.
    """

    instruction: str
    input: str
    output: str
    label: int | None = None
    split: str | None = None
    source: str = ""

    def prompt(self) -> str:
        """The standard alpaca prompt (the one TALLRec trains with); the target is `output`."""
        return ALPACA_TEMPLATE.format(instruction=self.instruction, input=self.input)


@dataclass
class InstructionData:
    """A loaded instruction data set (alpaca / TALLRec JSON or JSON lines)."""

    name: str
    examples: list[Instruction]
    stats: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for x in self.examples:
            h.update(f"{x.instruction}\t{x.input}\t{x.output}\t{x.split}\n".encode())
        return h.hexdigest()[:16]

    def split(self, name: str) -> list[Instruction]:
        return [x for x in self.examples if x.split == name]
