"""Records every loader produces: a catalogue of items with text, and timestamped interactions."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    item_id: str
    title: str
    category: str = ""

    def text(self) -> str:
        """How the item appears in a prompt: its title, plus its category when known."""
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
    """A loaded data set: items by id and interactions sorted by (user, time)."""

    name: str
    items: dict[str, Item]
    interactions: list[Interaction]

    def fingerprint(self) -> str:
        """Short content hash, recorded in recpeft.json so a result can be traced to its data."""
        h = hashlib.sha256()
        for it in sorted(self.items.values(), key=lambda i: i.item_id):
            h.update(f"{it.item_id}\t{it.title}\t{it.category}\n".encode())
        for x in self.interactions:
            h.update(f"{x.user_id}\t{x.item_id}\t{x.timestamp}\t{x.rating}\t{x.click}\n".encode())
        return h.hexdigest()[:16]
