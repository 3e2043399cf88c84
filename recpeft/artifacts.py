"""The adapter directory contract, written atomically.

adapters/<domain>/ holds exactly: adapter_model.safetensors, adapter_config.json (peft's own, so
`peft.PeftModel.from_pretrained` loads it), recpeft.json (what recpeft needs to use it) and README.md
(model card; both written from an AdapterMeta, recpeft/adapter_meta.py). Never base weights, never
optimiser state. The folder is built as a temporary sibling and renamed into place, so a crash
leaves either the old complete adapter or nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# read_meta re-exported: callers that knew it here keep working
from recpeft.adapter_meta import META_FILE, AdapterMeta, read_meta, write_meta  # noqa: F401
from recpeft.errors import UserError
from recpeft.training import events

CONTRACT_FILES = {"adapter_model.safetensors", "adapter_config.json", META_FILE, "README.md"}
OPTIONAL_FILES = {"fusion.safetensors"}  # an adapter trained with --fusion (recpeft/fusion); its recpeft.json says so


def _can_create_in(parent: Path) -> bool:
    """Could a file be created at or below `parent` (its nearest existing ancestor must take one)?"""
    probe = parent if str(parent) else Path(".")
    while not probe.exists():
        probe = probe.parent
    try:  # a real probe: os.access says yes to root even on read-only mounts
        if not probe.is_dir():
            raise OSError(f"{probe} is not a folder")
        tempfile.TemporaryFile(dir=probe).close()
    except OSError:
        return False
    return True


def check_can_create(folder: Path, what: str = "output folder") -> None:
    """Fail before any work if `folder` could not be created (or written in). Creates nothing."""
    if not _can_create_in(Path(folder)):
        raise UserError(f"{what} is not writable", str(folder))


def check_writable(out_dir: Path) -> None:
    """Fail before any work if the adapter folder could not be written. Creates nothing."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError("output path exists and is not a folder", str(out_dir))
    if not _can_create_in(out_dir.parent):
        raise UserError("output folder is not writable", str(out_dir))
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / META_FILE).is_file():
        raise UserError("output folder exists, is not empty and holds no recpeft adapter; "
                        "refusing to replace it", str(out_dir))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_file_writable(path: Path) -> None:
    """Fail before any work if a result file could not be written at `path`. Creates nothing."""
    if path.is_dir():
        raise UserError("output path is a folder; give a file name", str(path))
    if not _can_create_in(path.parent):
        raise UserError("cannot write a file here", str(path))


def write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_LEFTOVER = re.compile(r"^\.(.+)\.(tmp|old)-(\d+)(-.*)?$")


def remove_stale_leftovers(folder: Path) -> None:
    """Delete hidden temp/old folders (`.name.tmp-<pid>-*`, `.name.old-<pid>`) whose process is gone:
    what a kill in the middle of a save leaves behind."""
    for leftover in Path(folder).iterdir() if Path(folder).is_dir() else []:
        m = _LEFTOVER.match(leftover.name)
        if m and leftover.is_dir() and not _alive(int(m.group(3))):
            shutil.rmtree(leftover, ignore_errors=True)


def remove_dir_atomic(path: Path) -> None:
    """Delete a folder so that its name disappears at once (rename aside first, then delete)."""
    aside = Path(path).with_name(f".{Path(path).name}.old-{os.getpid()}")
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


def write_dir_atomic(out_dir: Path, fill: Callable[[Path], None]) -> Path:
    """Build a folder with fill(tmp) in a temporary sibling, then rename it into place.

    An existing out_dir is moved aside first and deleted after the new one is in place, so a crash at
    any moment leaves out_dir either complete (old or new) or absent, never partial. Temp siblings are
    hidden (`.name.tmp-<pid>-...`) and removed by the next save once their process is gone.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_leftovers(out_dir.parent)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-{os.getpid()}-"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it owner-only; artefact dirs are normal folders
        fill(tmp)
        for f in tmp.iterdir():  # temp-file writers create owner-only files; these are normal artefacts
            os.chmod(f, 0o666 & ~_umask())
        events.fire("folder_written", name=out_dir.name, path=out_dir)
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            events.fire("folder_swapped", name=out_dir.name, path=out_dir)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def save_adapter_dir(save_weights, out_dir: Path, meta: AdapterMeta, card: str) -> Path:
    """save_weights(folder) writes adapter_model.safetensors + adapter_config.json into folder."""

    def fill(tmp: Path) -> None:
        save_weights(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")  # replaces peft's generic card
        write_meta(tmp, meta)
        extra = {p.name for p in tmp.iterdir()} - CONTRACT_FILES - OPTIONAL_FILES
        for name in extra:  # keep the contract exact whatever the peft version adds
            shutil.rmtree(tmp / name) if (tmp / name).is_dir() else (tmp / name).unlink()

    return write_dir_atomic(out_dir, fill)


def verify_adapter_dir(folder: str | Path) -> None:
    """Refuse a folder that is not a complete adapter: weights must be a readable safetensors file."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError("adapter folder not found", str(folder))
    missing = [n for n in ("adapter_config.json", "adapter_model.safetensors") if not (folder / n).is_file()]
    if missing:
        raise UserError(f"incomplete adapter folder: {', '.join(missing)} missing "
                        "(weights are read from safetensors only)", str(folder))
    weights = folder / "adapter_model.safetensors"
    try:
        with safe_open(str(weights), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as exc:
        raise UserError(f"corrupt safetensors file: {exc}", str(weights)) from None


def check_adapter_dir(adapter_dir: Path) -> None:
    """Refuse a folder that lacks any of the contract's files, naming the missing ones."""
    if not Path(adapter_dir).is_dir():
        raise UserError("adapter folder not found", str(adapter_dir))
    missing = sorted(f for f in CONTRACT_FILES if not (Path(adapter_dir) / f).is_file())
    if missing:
        raise UserError(f"incomplete adapter folder: missing {', '.join(missing)}", str(adapter_dir))
    verify_adapter_dir(adapter_dir)  # the weights must be readable safetensors too
