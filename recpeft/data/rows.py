"""Reading rows for every loader: file checks, decoding, splitting, JSON, numbers, and the bad-row policy.

A loader wraps each row in `with bad.at(path, line):` and raises `RowError(reason)` for anything
wrong with it. Under `--on-bad-rows fail` (the default) that becomes a UserError at "file:line";
under `skip` the row is dropped, counted, and the count reported on stderr at the end. Problems
with a whole file (missing, empty, UTF-16 or binary) are always errors.
"""

from __future__ import annotations

import gzip
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recpeft.errors import UserError

ON_BAD_ROWS = ("fail", "skip")


class RowError(ValueError):
    """What is wrong with one row; BadRows adds the file:line."""


class BadRows:
    """The --on-bad-rows policy, as a reusable context manager: `with bad.at(path, line): ...`."""

    def __init__(self, mode: str = "fail"):
        if mode not in ON_BAD_ROWS:
            raise UserError(f"unknown on_bad_rows '{mode}'; choose from {', '.join(ON_BAD_ROWS)}")
        self.mode = mode
        self.skipped = 0
        self.first: str | None = None  # the first skipped row, "file:line: reason"
        self._where: tuple[Path, int] = (Path(), 0)

    def at(self, path: Path, line: int) -> BadRows:
        self._where = (path, line)
        return self

    def __enter__(self) -> BadRows:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is None or not issubclass(kind, RowError):
            return False
        where = f"{self._where[0]}:{self._where[1]}"
        if self.mode == "fail":
            raise UserError(str(exc), where) from None
        self.skipped += 1
        self.first = self.first or f"{where}: {exc}"
        return True  # skip: swallow the error, drop the row

    def report(self, name: str, stats: dict[str, Any]) -> None:
        """Record the skipped count in stats, with a note for stderr."""
        stats["bad_rows_skipped"] = self.skipped
        if self.skipped:
            note(stats, f"{name}: skipped {self.skipped:,} bad row(s); the first: {self.first}")


def note(stats: dict[str, Any], message: str) -> None:
    """A message for the user, kept in stats["notes"]: said on stderr at every load, cached or not."""
    stats.setdefault("notes", []).append(message)


def say(message: str) -> None:
    print(f"[recpeft] {message}", file=sys.stderr, flush=True)


def read_bytes(path: Path) -> bytes:
    """A data file's bytes (gunzipped for .gz). Missing, empty, UTF-16 and binary files are errors."""
    if not path.is_file():
        raise UserError("file not found", str(path))
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read file: {exc}", str(path)) from None
    if not data.strip():
        raise UserError("file is empty", f"{path}:1")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in data[:4096]:
        raise UserError("file is UTF-16 or binary, not text; save it as UTF-8", f"{path}:1")
    return data.removeprefix(b"\xef\xbb\xbf")


def lines(path: Path, bad: BadRows, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield (line number, text) for each non-blank line. `encoding="utf-8|latin-1"` tries UTF-8
    and falls back to latin-1 for the whole file (MovieLens ships latin-1)."""
    data = read_bytes(path)
    if encoding == "utf-8|latin-1":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        yield from _numbered(text.split("\n"))
        return
    try:
        yield from _numbered(data.decode(encoding).split("\n"))
        return
    except UnicodeDecodeError:
        pass
    for n, raw in enumerate(data.split(b"\n"), 1):  # slow path: find (or skip) the undecodable lines
        if not raw.strip():
            continue
        text = None
        with bad.at(path, n):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as exc:
                raise RowError(f"not valid {encoding.upper()} (byte {raw[exc.start]:#04x} at column "
                               f"{exc.start + 1}); save the file as {encoding.upper()}") from None
        if text is not None:
            yield n, text.rstrip("\r")


def _numbered(texts: list[str]) -> Iterator[tuple[int, str]]:
    for n, text in enumerate(texts, 1):
        text = text.rstrip("\r")
        if text.strip():
            yield n, text


def fields(text: str, sep: str, n_min: int, names: str = "") -> list[str]:
    """Split a delimited line; fewer than n_min fields is a RowError naming the expected columns."""
    parts = text.split(sep)
    if len(parts) < n_min:
        shown = "tab" if sep == "\t" else repr(sep)
        raise RowError(f"expected {n_min} {shown}-separated columns{f' ({names})' if names else ''}, "
                       f"found {len(parts)}")
    return parts


def json_records(path: Path, bad: BadRows) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) from a JSON-lines file; bad JSON or a non-object is a bad row."""
    for n, text in lines(path, bad):
        record = None
        with bad.at(path, n):
            record = parse_json_object(text)
        if record is not None:
            yield n, record


def parse_json_object(text: str) -> dict:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowError(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(record, dict):
        raise RowError(f"expected a JSON object, got {type(record).__name__}")
    return record


def first_record_keys(path: Path) -> set[str] | None:
    """Keys of the first JSON object in a .json/.jsonl file (a JSON array: its first element), or None.

    Used only to guess a format; reads at most the first 64 KiB.
    """
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as handle:
            head = handle.read(65536).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    except OSError:
        return None
    if head.startswith("["):
        head = head[1:].lstrip()
    try:
        record, _ = json.JSONDecoder().raw_decode(head)
    except json.JSONDecodeError:
        return None
    return set(record) if isinstance(record, dict) else None


def need(record: dict, key: str) -> Any:
    """A required field of a JSON record; missing or null is a RowError."""
    value = record.get(key)
    if value is None:
        raise RowError(f"missing field '{key}'")
    return value


def text_of(value: Any, what: str) -> str:
    """A non-empty id or text: strings as they are, integers as digits."""
    if type(value) is str and value and not value[0].isspace() and not value[-1].isspace():
        return value  # the common case, fast
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RowError(f"{what} must be a string, got {json.dumps(value)[:40]}")
    value = str(value).strip()
    if not value:
        raise RowError(f"empty {what}")
    return value


def to_int(value: Any, what: str) -> int:
    """An integer (a whole float like 881250949.0 too); anything else is a RowError."""
    if type(value) is int:
        return value
    if type(value) is str and value.isascii() and value.isdigit():
        return int(value)
    try:
        number = float(value) if isinstance(value, str) else value
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
                or number != int(number) or abs(number) > 2**62:
            raise ValueError
        return int(number)
    except (TypeError, ValueError):
        raise RowError(f"{what} must be an integer, got {str(value)[:40]!r}") from None


def to_rating(value: Any, what: str = "rating") -> float:
    """A 1-5 rating; non-numbers and values outside 1-5 are RowErrors."""
    try:
        number = float(value)
        if isinstance(value, bool) or not math.isfinite(number):
            raise ValueError
    except (TypeError, ValueError):
        raise RowError(f"{what} must be a number, got {str(value)[:40]!r}") from None
    if not 1 <= number <= 5:
        raise RowError(f"{what} {number:g} is outside 1-5")
    return number


def to_click(value: Any) -> int:
    if value in (0, 1, "0", "1") and not isinstance(value, float):
        return int(value)
    raise RowError(f"click must be 0 or 1, got {str(value)[:40]!r}")
