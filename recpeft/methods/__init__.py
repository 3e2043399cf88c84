"""Parameter-efficient methods behind one interface.

Each method module offers:
    attach(model, cfg, targets, total_steps) -> model with the method attached, base frozen
    save(model, folder, cfg)                 -> writes adapter_model.safetensors + adapter_config.json
    load(base, folder)                       -> base with the saved adapter attached
    disabled(model)                          -> context in which the model behaves like its base
and optionally extra_loss(model) (added to the task loss) and after_step(model, step) (called after
every optimiser step).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from . import adalora, adapter, lora

METHODS = {"lora": lora, "adalora": adalora, "adapter": adapter}


def get_method(name: str):
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'; choose from {', '.join(METHODS)}")
    return METHODS[name]


def method_of(folder: str | Path) -> str:
    """Which method saved this adapter folder, from its adapter_config.json."""
    path = Path(folder) / "adapter_config.json"
    try:
        peft_type = json.loads(path.read_text(encoding="utf-8")).get("peft_type")
    except FileNotFoundError:
        raise UserError("not an adapter folder (no adapter_config.json)", str(folder)) from None
    except json.JSONDecodeError as exc:
        raise UserError(f"malformed JSON: {exc.msg}", f"{path}:{exc.lineno}") from None
    by_type = {"LORA": "lora", "ADALORA": "adalora", adapter.PEFT_TYPE: "adapter"}
    if peft_type not in by_type:
        raise UserError(f"unsupported adapter type {peft_type!r}", str(path))
    return by_type[peft_type]


def check_base(base, folder: str | Path, tokenizer=None, force: bool = False) -> None:
    """Refuse an adapter trained on another base model (config, and tokenizer when given)."""
    from ..models import config_fingerprint, tokenizer_fingerprint

    meta_path = Path(folder) / "recpeft.json"
    if not meta_path.is_file():
        return  # a bare peft/bottleneck folder: nothing recorded to check against
    try:
        want = json.loads(meta_path.read_text(encoding="utf-8"))["base_model"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError("malformed recpeft.json (no base_model)", str(meta_path)) from None
    have_cfg = config_fingerprint(base.config)
    mismatch = want.get("config_fingerprint") not in (None, have_cfg)
    if tokenizer is not None:
        mismatch |= want.get("tokenizer_fingerprint") not in (None, tokenizer_fingerprint(tokenizer))
    if not mismatch:
        return
    loaded = getattr(base.config, "name_or_path", "") or base.config.model_type
    message = (f"adapter {folder} was trained on base model '{want.get('name')}' (config fingerprint "
               f"{want.get('config_fingerprint')}), but the loaded base is '{loaded}' (config fingerprint {have_cfg})")
    if not force:
        raise UserError(message + "; pass force=True (--force) to load it anyway")
    import warnings

    warnings.warn(message + "; loading anyway because force was given", stacklevel=2)


def load_adapter(base, folder: str | Path, tokenizer=None, force: bool = False):
    """Attach the adapter saved in `folder` (any of the three methods) to `base`.

    The base model's fingerprint must match the one recorded at training time; force=True loads a
    mismatched adapter anyway, with a warning.
    """
    from ..artifacts import verify_adapter_dir

    verify_adapter_dir(folder)
    check_base(base, folder, tokenizer, force)
    return METHODS[method_of(folder)].load(base, folder)


def check_adapter(folder: str | Path, model: str | None = None, force: bool = False) -> dict:
    """Verify an adapter folder without using it: complete, weights readable from safetensors, and
    (with `model`) trained on that base model and attachable to it. Returns what it found."""
    from ..artifacts import read_meta, verify_adapter_dir

    verify_adapter_dir(folder)
    meta = read_meta(folder) if (Path(folder) / "recpeft.json").exists() else {}
    found = {"folder": str(folder), "method": method_of(folder), "domain": meta.get("domain"),
             "base_model": (meta.get("base_model") or {}).get("name")}
    if model is not None:
        from ..models import load_base

        base, tok, _ = load_base(model)
        load_adapter(base, folder, tokenizer=tok, force=force)
    return found
