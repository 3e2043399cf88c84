"""`recpeft recommend`: parse a history string and a candidate source, rank with one adapter."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from recpeft.data.schema import Item
from recpeft.errors import UserError


def parse_history(text: str) -> list[tuple[str, bool]]:
    """'A; B; -C' -> [(A, liked), (B, liked), (C, disliked)]: ';' separates, a leading '-' marks a dislike."""
    out = []
    for part in text.split(";"):
        title = part.strip()
        if not title:
            continue
        liked = not title.startswith("-")
        title = title.lstrip("-").strip()
        if title:
            out.append((title, liked))
    return out


def history_entries(rec, history: str | None) -> list[tuple[Item, bool]]:
    """A --history string as (item, liked) entries; catalogue titles get their category, as in training."""
    parsed = parse_history(history or "")
    return [(item, liked) for item, (_, liked) in zip(rec.lookup([t for t, _ in parsed]), parsed)]


def profile_text(profile: str | None) -> str | None:
    """A --profile, checked before any model loads (an empty one is a UserError)."""
    from recpeft.tasks.profiles import as_profile

    return None if profile is None else as_profile(profile)


def read_candidates(path: Path) -> list[Item]:
    """One title per line, or a CSV whose header has a 'title' column (item_id and category optional)."""
    path = Path(path)
    if not path.is_file():
        raise UserError("candidates file not found", str(path))
    lines = path.read_text(encoding="utf-8").splitlines()
    header = [h.strip() for h in next(csv.reader(lines[:1]), [])]
    if "title" in header and len(header) > 1:
        items = []
        for n, row in enumerate(csv.DictReader(lines), start=2):
            title = (row.get("title") or "").strip()
            if not title:
                raise UserError("empty title", f"{path}:{n}")
            items.append(Item((row.get("item_id") or title).strip(), title, (row.get("category") or "").strip()))
    else:
        items = [Item(t.strip(), t.strip()) for t in lines if t.strip()]
    if not items:
        raise UserError("the candidate list is empty; give at least one item to rank", str(path))
    return items


def recommend(adapter: Path, history: str | None, candidates: Path | None, from_catalog: bool, k: int,
              bits: int | None = None, force: bool = False, profile: str | None = None) -> list[dict[str, Any]]:
    """Rank candidates (a file, or the adapter's catalogue minus the history) for the history and/or
    profile; top k rows."""
    from recpeft.serving.recommender import load

    if (candidates is None) == (not from_catalog):
        raise UserError("give exactly one of --candidates FILE and --from-catalog")
    if history is None and profile is None:
        raise UserError("give --history (the user's items), --profile (a new user's description) or both")
    profile = profile_text(profile)
    items = read_candidates(candidates) if candidates is not None else None
    rec = load(adapter, bits=bits, force=force)
    entries = history_entries(rec, history)
    if items is None:
        seen = {i.item_id for i, _ in entries}
        items = [i for i in rec.catalog() if i.item_id not in seen]
    ranked = rec.rank(entries, items, k=k, profile=profile)
    return [{"rank": n, "item_id": item.item_id, "title": item.title, "category": item.category, "score": score}
            for n, (item, score) in enumerate(ranked, start=1)]
