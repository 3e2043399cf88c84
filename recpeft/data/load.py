"""The one entry point for data: `load_data(domain, path, fmt=None, on_bad_rows="fail")`.

path None -> the domain's embedded sample. Otherwise the format is `fmt`, or detected from the
files present (an error names the candidates when that is ambiguous, and what each format
expects when nothing matches). Results are cached as Arrow (recpeft.data.cache); notes from the
loader (rows skipped, ids dropped) go to stderr on every load, cached or not.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from recpeft.data import cache
from recpeft.data.formats import alpaca, amazon, amazon_unisrec, csvdir, jsonl, mind, movielens
from recpeft.data.rows import ON_BAD_ROWS, BadRows, say
from recpeft.data.schema import InstructionData, RecData
from recpeft.errors import UserError

FORMATS: dict[str, ModuleType] = {
    "movielens": movielens, "amazon": amazon, "amazon-unisrec": amazon_unisrec, "mind": mind,
    "alpaca": alpaca, "jsonl": jsonl, "csv": csvdir,
}
EXPECTS = {
    "movielens": "a folder with u.data + u.item (100k) or ratings.dat + movies.dat (1M)",
    "amazon": "a reviews JSON-lines file (reviewerID, asin, ...) plus a metadata file, or a folder of both",
    "amazon-unisrec": "a folder with <name>.train/valid/test.inter and <name>.text",
    "mind": "a folder with news.tsv and behaviors.tsv",
    "alpaca": "a .json/.jsonl file of {instruction, input, output}, or a folder of them",
    "jsonl": "a .jsonl file of {user_id, item_id, timestamp, rating|click, title}, or a folder with "
             "interactions.jsonl [+ items.jsonl]",
    "csv": "a folder with items.csv and interactions.csv",
}


def detect_format(path: str | Path) -> str:
    """The format whose files are present at path; a UserError when none or several match."""
    path = Path(path)
    if not path.exists():
        raise UserError("data path not found", str(path))
    found = [name for name, module in FORMATS.items() if module.detect(path)]
    if len(found) == 1:
        return found[0]
    if found:
        raise UserError(f"cannot tell the data format: the files fit {', '.join(found)}; pass --format "
                        f"{' or --format '.join(found)}", str(path))
    expected = "; ".join(f"{k}: {v}" for k, v in EXPECTS.items())
    raise UserError(f"cannot tell the data format from the files here. Expected one of — {expected}", str(path))


def load_data(domain: str, path: str | Path | None, fmt: str | None = None, on_bad_rows: str = "fail",
              use_cache: bool = True) -> RecData | InstructionData:
    """Load `path` (format `fmt`, or detected) or, when path is None, the domain's embedded sample.

    Bad rows stop the load with "file:line: reason" (on_bad_rows="fail") or are skipped and counted
    (on_bad_rows="skip"). Alpaca data loads as InstructionData, everything else as RecData.
    """
    if on_bad_rows not in ON_BAD_ROWS:
        raise UserError(f"unknown on_bad_rows '{on_bad_rows}'; choose from {', '.join(ON_BAD_ROWS)}")
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"unknown data format '{fmt}'; choose from {', '.join(FORMATS)}")
    if path is None:
        if fmt not in (None, "csv"):
            raise UserError(f"--format {fmt} needs --data PATH (without --data the embedded sample is used)")
        return csvdir.load_sample(domain)
    path = Path(path)
    if not path.exists():
        raise UserError("data path not found", str(path))
    fmt = fmt or detect_format(path)
    module = FORMATS[fmt]
    sources = module.sources(path)
    # a missing source file: no cache key, and the loader reports it as a UserError naming the file
    key = cache.cache_key(fmt, module.VERSION, sources, on_bad_rows) if use_cache and all(
        f.is_file() for f in sources) else None
    data = cache.read(key) if key else None
    if data is None:
        data = module.load(path, BadRows(on_bad_rows))
        data.stats["format"] = fmt
        if key:
            cache.write(key, data)
    for message in data.stats.get("notes", []):
        say(message)
    return data
