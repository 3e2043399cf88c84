"""alpaca / TALLRec instruction data: a JSON array or JSON lines of {instruction, input, output}.

Records are used as they are (no rewording); `input` may be missing or empty. An output starting
with "Yes" / "No" (TALLRec's "Yes." / "No.") gives the preference label 1 / 0, anything else None.
`--data` is one file, or a folder of them; a file named train / valid (val, validation, dev) /
test sets the split of its records (TALLRec ships train.json, valid.json, test.json).
Line numbers in errors point at the record's first line, in arrays too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from recpeft.data.rows import BadRows, RowError, first_record_keys, json_records, read_bytes
from recpeft.data.schema import Instruction, InstructionData
from recpeft.errors import UserError

VERSION = 1
SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
SPLIT_NAMES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "dev": "valid",
               "test": "test"}
KEYS = {"instruction", "output"}


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(SUFFIXES)) if path.is_dir() else []


def detect(path: Path) -> bool:
    files = _files(path)
    return bool(files) and all(p.name.endswith(SUFFIXES) and KEYS <= (first_record_keys(p) or set()) for p in files)


def sources(path: Path) -> list[Path]:
    files = _files(path)
    if not files:
        raise UserError("--format alpaca needs a .json / .jsonl file or a folder of them", str(path))
    return files


def load(path: Path, bad: BadRows) -> InstructionData:
    examples = []
    for file in sources(path):
        split = SPLIT_NAMES.get(file.name.split(".")[0].lower())
        for n, record in _records(file, bad):
            with bad.at(file, n):
                if not isinstance(record, dict):
                    raise RowError(f"expected a JSON object, got {type(record).__name__}")
                texts = {}
                for key in ("instruction", "input", "output"):
                    value = record.get(key, "" if key == "input" else None)
                    if value is None:
                        raise RowError(f"missing field '{key}'")
                    if not isinstance(value, str):
                        raise RowError(f"'{key}' must be a string, got {json.dumps(value)[:40]}")
                    texts[key] = value
                if not texts["instruction"].strip() or not texts["output"].strip():
                    raise RowError("empty instruction or output")
                examples.append(Instruction(texts["instruction"], texts["input"], texts["output"],
                                            _label(texts["output"]), split, f"{file}:{n}"))
    stats = {"rows": len(examples), "labelled": sum(x.label is not None for x in examples)}
    bad.report(f"alpaca {path.name}", stats)
    if not examples:
        raise UserError("no usable instruction records", str(path))
    return InstructionData(f"alpaca:{path.name}", examples, stats)


def _label(output: str) -> int | None:
    word = output.strip().lower()
    return 1 if word.startswith("yes") else 0 if word.startswith("no") and not word.startswith("not") else None


def _records(file: Path, bad: BadRows) -> Iterator[tuple[int, object]]:
    data = read_bytes(file)
    if not data.lstrip().startswith(b"["):
        yield from json_records(file, bad)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(f"not valid UTF-8 (byte {data[exc.start]:#04x}); save the file as UTF-8",
                        f"{file}:{line}") from None
    yield from _array(file, text)


def _array(file: Path, text: str) -> Iterator[tuple[int, object]]:
    """Elements of a JSON array with the line each starts on. A syntax error ends the file (there is
    no way to resynchronise inside an array), so it is an error under --on-bad-rows skip too."""
    decoder, pos, line, counted = json.JSONDecoder(), text.index("[") + 1, 1, 0

    def skip(p: int) -> int:
        while p < len(text) and text[p] in " \t\r\n":
            p += 1
        return p

    pos = skip(pos)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise UserError(f"not valid JSON: {exc.msg} at column {exc.colno}", f"{file}:{exc.lineno}") from None
        line += text.count("\n", counted, pos)
        counted = pos
        yield line, value
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
        elif pos < len(text) and text[pos] == "]":
            return
        else:
            where = f"{file}:{line + text.count(chr(10), counted, pos)}"
            raise UserError("not valid JSON: expected ',' or ']' after an array element", where)
