"""Amazon raw reviews (2014/2018 releases) as JSON lines, with a metadata file for item text.

Reviews: one object per line with reviewerID, asin, overall (1-5) and unixReviewTime. Metadata:
one object per line with asin and title (plus optional category list, brand, description), as in
the 2018 `meta_<Category>.json`. Reviews carry no item titles, so without metadata there is no
item text and loading stops with a clear error. `.gz` files are read as they are.

`--data` is a folder holding the reviews file and the metadata file (told apart by their first
record: reviews have reviewerID), or the reviews file itself, with `meta*.json*` looked up beside it.
Exact duplicate reviews (same user, item and time; 5-core files repeat a review per product style)
are kept once and counted in stats.
"""

from __future__ import annotations

from pathlib import Path

from recpeft.data.rows import BadRows, RowError, first_record_keys, json_records, need, note, text_of, to_int, to_rating
from recpeft.data.schema import Interaction, Item, RecData
from recpeft.errors import UserError

VERSION = 1
JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
REVIEW_KEYS = {"reviewerID", "asin"}


def json_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(JSON_SUFFIXES))


def _split(path: Path) -> tuple[list[Path], list[Path]]:
    """(review files, metadata files) for a folder or a reviews file."""
    if path.is_file():
        metas = [p for p in json_files(path.parent) if p.name.startswith("meta") and p != path]
        return [path], metas
    reviews, metas = [], []
    for p in json_files(path) if path.is_dir() else []:
        keys = first_record_keys(p) or set()
        if REVIEW_KEYS <= keys:
            reviews.append(p)
        elif "asin" in keys or p.name.startswith("meta"):
            metas.append(p)
    return reviews, metas


def detect(path: Path) -> bool:
    if path.is_file():
        return path.name.endswith(JSON_SUFFIXES) and REVIEW_KEYS <= (first_record_keys(path) or set())
    return path.is_dir() and bool(_split(path)[0])


def sources(path: Path) -> list[Path]:
    reviews, metas = _split(path)
    if not reviews:
        raise UserError("no Amazon reviews file found (JSON lines with reviewerID, asin, overall, "
                        "unixReviewTime)", str(path))
    if len(reviews) > 1 or len(metas) > 1:
        raise UserError(f"more than one reviews or metadata file: {', '.join(p.name for p in reviews + metas)}; "
                        "keep one of each in the folder", str(path))
    if not metas:
        raise UserError(f"no item text for {reviews[0].name}: Amazon reviews carry no titles. Put the matching "
                        "metadata file (JSON lines with asin and title, e.g. meta_<Category>.json) beside it, "
                        "or use the UniSRec layout (--format amazon-unisrec) with its .text file", str(path))
    return reviews + metas


def load(path: Path, bad: BadRows) -> RecData:
    review_file, meta_file = sources(path)
    items = _metadata(meta_file, bad)
    interactions, seen, duplicates, rows = [], set(), 0, 0
    for n, record in json_records(review_file, bad):
        with bad.at(review_file, n):
            user, asin = text_of(need(record, "reviewerID"), "reviewerID"), text_of(need(record, "asin"), "asin")
            rating = to_rating(need(record, "overall"), "overall")
            ts = to_int(need(record, "unixReviewTime"), "unixReviewTime")
            if asin not in items:
                raise RowError(f"asin '{asin}' has no title in {meta_file.name}")
            rows += 1
            if (user, asin, ts) in seen:
                duplicates += 1
                continue
            seen.add((user, asin, ts))
            interactions.append(Interaction(user, asin, ts, rating))
    stats = {"rows": rows, "duplicates_dropped": duplicates}
    if duplicates:
        note(stats, f"amazon {review_file.name}: {duplicates:,} duplicate review(s) (same user, item, time) kept once")
    bad.report(f"amazon {review_file.name}", stats)
    if not interactions:
        raise UserError("no usable reviews", str(review_file))
    interactions.sort(key=lambda x: (x.user_id, x.timestamp, x.item_id))
    used = {x.item_id for x in interactions}
    return RecData(f"amazon:{review_file.name}", {k: v for k, v in items.items() if k in used}, interactions,
                   stats=stats)


def _metadata(meta_file: Path, bad: BadRows) -> dict[str, Item]:
    items: dict[str, Item] = {}
    for n, record in json_records(meta_file, bad):
        with bad.at(meta_file, n):
            asin = text_of(need(record, "asin"), "asin")
            title = " ".join(text_of(need(record, "title"), "title").split())
            cats = record.get("category") or record.get("categories") or []
            if isinstance(cats, str):
                cats = [cats]
            elif isinstance(cats, list) and cats and isinstance(cats[0], list):  # 2014: a list of paths
                cats = cats[0]
            names = [" ".join(str(c).split()) for c in cats if str(c).strip()] if isinstance(cats, list) else []
            names = names[1:] if len(names) > 1 else names  # drop the root ("Clothing, Shoes & Jewelry")
            cats = tuple(names) or ((str(record["main_cat"]),) if record.get("main_cat") else ())
            desc = record.get("description") or ""
            desc = " ".join(str(desc[0] if isinstance(desc, list) and desc else desc or "").split())[:300]
            brand = " ".join(str(record.get("brand") or "").split())
            items.setdefault(asin, Item(asin, title, cats[-1] if cats else "", cats,
                                        desc or (f"Brand: {brand}" if brand else "")))
    return items
