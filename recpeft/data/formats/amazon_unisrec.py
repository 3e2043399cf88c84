"""Amazon in the UniSRec / RecBole layout: <name>.{train,valid,test}.inter and <name>.text.

.inter rows are `user_id<TAB>item_id_list<TAB>item_id` (a history and its next item, ids as
indices when <name>.item2index / <name>.user2index map them back to asins / reviewer ids).
Each user's sequence is rebuilt from their rows (histories may be cut to the last N items); every
row must be a window of it ending at its target. There are no times: an item's timestamp is its
position in the user's sequence, so the leave-one-out split of recpeft.tasks.examples (last = test, one
before = valid) is UniSRec's own. There are no ratings either: every interaction is a positive
(click = 1).

<name>.text rows are `item_id<TAB>title. categories. brand.`: the title becomes Item.title, the
categories (without the root every item shares, e.g. "Industrial & Scientific") Item.category,
the brand Item.description. Without the .text file there is no item text: a clear error.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from recpeft.data.rows import BadRows, RowError, fields, lines, text_of
from recpeft.data.schema import Interaction, Item, RecData
from recpeft.errors import UserError

VERSION = 1
SPLITS = ("train", "valid", "test")


def _name(path: Path) -> str:
    names = sorted({p.name[: -len(".train.inter")] for p in path.glob("*.train.inter")}) if path.is_dir() else []
    if len(names) != 1:
        found = f"found {', '.join(n + '.train.inter' for n in names)}" if names else "found none"
        raise UserError(f"--format amazon-unisrec needs a folder with one <name>.train.inter; {found}", str(path))
    return names[0]


def detect(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*.train.inter"))


def sources(path: Path) -> list[Path]:
    name = _name(path)
    text = path / f"{name}.text"
    if not text.is_file():
        raise UserError(f"no item text: {name}.text is missing (UniSRec's `item_id<TAB>title. categories. brand.` "
                        "file); ids alone cannot make prompts", str(path))
    found = [path / f"{name}.{s}.inter" for s in SPLITS if (path / f"{name}.{s}.inter").is_file()]
    return found + [text] + [p for p in (path / f"{name}.item2index", path / f"{name}.user2index") if p.is_file()]


def _index(file: Path, bad: BadRows) -> dict[str, str]:
    """index -> original id, from `id<TAB>index` rows."""
    out: dict[str, str] = {}
    for n, text in lines(file, bad):
        with bad.at(file, n):
            original, index = (p.strip() for p in fields(text, "\t", 2, "id, index")[:2])
            if index in out:
                raise RowError(f"index {index} given twice")
            out[text_of(index, "index")] = text_of(original, "id")
    return out


def _items(file: Path, bad: BadRows) -> dict[str, Item]:
    bodies: dict[str, str] = {}
    for n, text in lines(file, bad):
        if n == 1 and text.startswith("item_id:"):
            continue
        with bad.at(file, n):
            item, body = fields(text, "\t", 2, "item_id, text")[:2]
            body = " ".join(body.split())
            if not body.strip(". "):
                raise RowError("empty item text")
            bodies[text_of(item, "item_id")] = body
    root = _root([_parse(b, "")[1] for b in bodies.values()])
    parsed = {i: _parse(b, root) for i, b in bodies.items()}
    return {i: Item(i, title, category, description=brand) for i, (title, category, brand) in parsed.items()}


def _parse(body: str, root: str) -> tuple[str, str, str]:
    """(title, category without the root, brand) from "title. categories. brand." — titles and
    brands may hold ". " themselves, so split at ". <root>" when the root is known."""
    if root and (i := body.find(f". {root}")) >= 0:
        category, _, brand = body[i + 2:].partition(". ")
        return body[:i], category[len(root):].strip() or category, brand.strip(" .")
    if (i := body.find(". . ")) >= 0:  # no categories
        return body[:i], "", body[i + 4:].strip(" .")
    parts = body.rstrip(" .").rsplit(". ", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else (body.rstrip(" ."), "", "")


def _root(categories: list[str]) -> str:
    """The longest word prefix that 90% of the non-empty category strings share ("Industrial &
    Scientific"): every item repeats it, so it is cut from Item.category."""
    texts = [c.split() for c in categories if c]
    root: list[str] = []
    while texts:
        k = len(root) + 1
        top, count = Counter(tuple(t[:k]) for t in texts if len(t) > k).most_common(1)[0] if any(
            len(t) > k for t in texts) else ((), 0)
        if count < 0.9 * len(texts):
            break
        root = list(top)
    return " ".join(root)


def load(path: Path, bad: BadRows) -> RecData:
    name = _name(path)
    files = sources(path)
    items = _items(path / f"{name}.text", bad)
    item_index = _index(path / f"{name}.item2index", bad) if (path / f"{name}.item2index").is_file() else None
    user_index = _index(path / f"{name}.user2index", bad) if (path / f"{name}.user2index").is_file() else {}
    by_user: dict[str, list[tuple[int, int, Path, list[str]]]] = {}
    for split, file in enumerate(f for f in files if f.name.endswith(".inter")):
        for n, text in lines(file, bad):
            if n == 1 and text.startswith("user_id:"):
                continue
            with bad.at(file, n):
                user, history, target = fields(text, "\t", 3, "user_id, item_id_list, item_id")[:3]
                seq = []
                for token in history.split() + [target.strip()]:
                    item = item_index.get(token) if item_index is not None else token
                    if item is None or item not in items:
                        where = "item2index" if item is None else f"{name}.text"
                        raise RowError(f"unknown item id '{token}' (not in {where})")
                    seq.append(item)
                user = user_index.get(user.strip(), text_of(user, "user_id"))
                by_user.setdefault(user, []).append((split, n, file, seq))
    sequences = {user: _sequence(rows, bad) for user, rows in by_user.items()}
    interactions = [Interaction(u, item, t, click=1) for u in sorted(sequences) for t, item in enumerate(sequences[u])]
    stats = {"rows": sum(map(len, by_user.values())), "users": len(sequences), "timestamps": "sequence positions"}
    bad.report(f"amazon-unisrec {name}", stats)
    if not interactions:
        raise UserError("no usable sequences", str(path))
    return RecData(f"amazon-unisrec:{name}", items, interactions, stats=stats)


def _sequence(rows: list[tuple[int, int, Path, list[str]]], bad: BadRows) -> list[str]:
    """One user's item sequence from their (split, line, file, history + target) rows.

    Histories may be cut to the most recent N items, so the order comes from the splits (train,
    valid, test), then history length, then file order (rows of a split run longest or shortest
    first). The sequence is the shortest history plus every target in that order; each row must
    then be a window of it ending at its target, or it is a bad row.
    """
    first_split = [r for r in rows if r[0] == rows[0][0]]
    step = -1 if len(first_split[0][3]) > len(first_split[-1][3]) else 1
    rows = sorted(rows, key=lambda r: (r[0], len(r[3]), step * r[1]))
    seq = rows[0][3][:-1] + [r[3][-1] for r in rows]
    start = len(rows[0][3]) - 1
    for k, (_, n, file, window) in enumerate(rows):
        end = start + k + 1
        with bad.at(file, n):
            if seq[max(0, end - len(window)):end] != window:
                raise RowError("history does not continue the user's earlier rows")
    return seq
