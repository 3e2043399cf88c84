"""recpeft's generic JSON-lines format: one interaction per line, item text inline or in items.jsonl.

Interaction lines: {"user_id", "item_id", "timestamp", "rating" and/or "click"} plus, optionally,
the item's "title", "category" (a string or a list) and "description" inline. timestamp is
seconds since 1970 (a number) or an ISO 8601 string; rating is 1-5, click 0 or 1.
`--data` is such a file, or a folder with interactions.jsonl and an optional items.jsonl
({"item_id", "title", "category", "description"}; its text wins over inline text). Every item
needs a title from one of the two: a line naming an item with no title yet is a bad row.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from recpeft.data.rows import (
    BadRows,
    RowError,
    first_record_keys,
    json_records,
    need,
    text_of,
    to_click,
    to_int,
    to_rating,
)
from recpeft.data.schema import Interaction, Item, RecData
from recpeft.errors import UserError

VERSION = 1
KEYS = {"user_id", "item_id"}


def detect(path: Path) -> bool:
    if path.is_dir():
        return (path / "interactions.jsonl").is_file()
    return path.name.endswith((".jsonl", ".json", ".jsonl.gz")) and KEYS <= (first_record_keys(path) or set())


def sources(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not (path / "interactions.jsonl").is_file():
        raise UserError("--format jsonl needs a .jsonl file or a folder with interactions.jsonl", str(path))
    return [path / "interactions.jsonl"] + ([path / "items.jsonl"] if (path / "items.jsonl").is_file() else [])


def _item(record: dict, item_id: str) -> Item:
    cats = record.get("category") or ()
    if isinstance(cats, str):
        cats = (cats,)
    if not isinstance(cats, (list, tuple)) or not all(isinstance(c, str) for c in cats):
        raise RowError("category must be a string or a list of strings")
    desc = record.get("description") or ""
    if not isinstance(desc, str):
        raise RowError("description must be a string")
    return Item(item_id, " ".join(text_of(record["title"], "title").split()), categories=tuple(cats),
                description=desc.strip())


def _timestamp(value) -> int:
    if isinstance(value, str) and not value.strip().lstrip("-").replace(".", "", 1).isdigit():
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise RowError(f"timestamp '{value[:40]}' is neither seconds nor an ISO 8601 time") from None
        return int((moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp())
    return to_int(value, "timestamp")


def load(path: Path, bad: BadRows) -> RecData:
    files = sources(path)
    items: dict[str, Item] = {}
    if len(files) == 2:
        for n, record in json_records(files[1], bad):
            with bad.at(files[1], n):
                item_id = text_of(need(record, "item_id"), "item_id")
                need(record, "title")
                if item_id in items:
                    raise RowError(f"duplicate item_id '{item_id}'")
                items[item_id] = _item(record, item_id)
    interactions = []
    for n, record in json_records(files[0], bad):
        with bad.at(files[0], n):
            user, item_id = text_of(need(record, "user_id"), "user_id"), text_of(need(record, "item_id"), "item_id")
            ts = _timestamp(need(record, "timestamp"))
            rating = to_rating(record["rating"]) if record.get("rating") is not None else None
            click = to_click(record["click"]) if record.get("click") is not None else None
            if rating is None and click is None:
                raise RowError("line needs a rating (1-5) or a click (0/1)")
            if item_id not in items:
                if record.get("title") is None:
                    raise RowError(f"unknown item_id '{item_id}': no title inline or in items.jsonl")
                items[item_id] = _item(record, item_id)
            interactions.append(Interaction(user, item_id, ts, rating, click))
    stats = {"rows": len(interactions)}
    bad.report(f"jsonl {path.name}", stats)
    if not interactions:
        raise UserError("no usable interactions", str(files[0]))
    interactions.sort(key=lambda x: (x.user_id, x.timestamp, x.item_id))
    return RecData(f"jsonl:{path.name}", items, interactions, stats=stats)
