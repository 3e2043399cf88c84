"""Loaded data cached as a Hugging Face `datasets` DatasetDict (Arrow), so a second load skips parsing.

Key: format, loader version, --on-bad-rows, and every source file's (absolute path, size, mtime),
so editing or replacing a file misses the cache. Entries live in $RECPEFT_HOME/cache/data/<key>/
(RECPEFT_DATA_CACHE overrides the folder; "off" turns caching off). An entry is written into a
temporary sibling and renamed, so a reader never sees half of one; an unreadable entry is ignored
and rebuilt, and a cache that cannot be written only costs the speed-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from recpeft.data.rows import say
from recpeft.data.schema import Instruction, InstructionData, Interaction, Item, RecData
from recpeft.models.hub import recpeft_home

LAYOUT = 1  # bump when the stored columns change


def cache_root() -> Path | None:
    """Where entries live, or None when RECPEFT_DATA_CACHE=off."""
    env = os.environ.get("RECPEFT_DATA_CACHE")
    if env and env.lower() in ("off", "0", "none", "false"):
        return None
    return Path(env) if env else recpeft_home() / "cache" / "data"


def cache_key(fmt: str, version: int, files: list[Path], on_bad_rows: str) -> str:
    stamp = [fmt, version, LAYOUT, on_bad_rows]
    for f in files:
        st = f.stat()
        stamp.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return f"{fmt}-{hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:20]}"


def _quiet():
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def read(key: str) -> RecData | InstructionData | None:
    """The cached data for key, or None on a miss (or an unreadable entry)."""
    root = cache_root()
    entry = root / key if root else None
    if entry is None or not (entry / "recpeft.json").is_file():
        return None
    try:
        meta = json.loads((entry / "recpeft.json").read_text(encoding="utf-8"))
        parts = _quiet().load_from_disk(str(entry))
        if meta["kind"] == "instructions":
            cols = parts["examples"].to_dict()
            examples = [Instruction(*row) for row in zip(cols["instruction"], cols["input"], cols["output"],
                                                          cols["label"], cols["split"], cols["source"])]
            return InstructionData(meta["name"], examples, meta["stats"])
        it, ia = parts["items"].to_dict(), parts["interactions"].to_dict()
        us = parts["users"].to_dict() if "users" in parts else {"user_id": [], "attributes": []}
        items = {i: Item(i, t, c, tuple(cs), d) for i, t, c, cs, d in
                 zip(it["item_id"], it["title"], it["category"], it["categories"], it["description"])}
        interactions = [Interaction(*row) for row in
                        zip(ia["user_id"], ia["item_id"], ia["timestamp"], ia["rating"], ia["click"])]
        users = {u: json.loads(a) for u, a in zip(us["user_id"], us["attributes"])}
        return RecData(meta["name"], items, interactions, users, meta["stats"])
    except Exception as exc:  # noqa: BLE001 - a broken cache entry must never stop a run
        say(f"ignoring unreadable data cache entry {entry}: {exc}")
        return None


def write(key: str, data: RecData | InstructionData) -> None:
    """Store data under key atomically; failures are reported and otherwise ignored."""
    root = cache_root()
    if root is None or (root / key / "recpeft.json").is_file():
        return
    datasets = _quiet()
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        if isinstance(data, InstructionData):
            kind = "instructions"
            cols = {k: [getattr(x, k) for x in data.examples]
                    for k in ("instruction", "input", "output", "label", "split", "source")}
            parts = datasets.DatasetDict({"examples": _table(datasets, cols, {
                "label": "int64", "split": "string"})})
        else:
            kind = "recdata"
            items = list(data.items.values())
            parts = datasets.DatasetDict({
                "items": _table(datasets, {k: [getattr(i, k) for i in items] for k in
                                           ("item_id", "title", "category", "categories", "description")},
                                {"categories": ["string"]}),
                "interactions": _table(datasets, {k: [getattr(x, k) for x in data.interactions] for k in
                                                  ("user_id", "item_id", "timestamp", "rating", "click")},
                                       {"timestamp": "int64", "rating": "float64", "click": "int64"}),
            })
            if data.users:  # an empty split does not survive save_to_disk / load_from_disk
                parts["users"] = _table(datasets, {"user_id": list(data.users),
                                                   "attributes": [json.dumps(a) for a in data.users.values()]}, {})
        parts.save_to_disk(str(tmp))
        meta = {"kind": kind, "name": data.name, "stats": data.stats, "key": key}
        (tmp / "recpeft.json").write_text(json.dumps(meta), encoding="utf-8")  # last: marks the entry complete
        os.rename(tmp, root / key)
        tmp = None
    except OSError as exc:
        if not (root / key / "recpeft.json").is_file():  # losing a race to another writer is fine
            say(f"could not write the data cache ({exc}); loading will not be faster next time")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _table(datasets, columns: dict[str, list], types: dict[str, object]):
    """A Dataset built straight from a typed Arrow table (fast; all-None columns keep their type)."""
    import pyarrow as pa

    kinds = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
    schema = pa.schema([(name, pa.list_(pa.string()) if isinstance(types.get(name), list)
                         else kinds[types.get(name, "string")]) for name in columns])
    return datasets.Dataset(pa.table(columns, schema=schema))
