"""Parameter-efficient methods behind one interface.

Each method module holds one `Method` (methods/base.py) as METHOD: attach, save, load and disabled,
and the training hooks it declares (extra loss, after-step, checkpoint state, finalisation before
saving, metrics to report). get_method(name) returns it.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from recpeft.errors import UserError, did_you_mean

# The method registry: name -> (module, the peft_type its saved adapter_config.json records). Modules are
# imported on use, so the CLI reads the names without importing peft.
METHODS: dict[str, tuple[str, str]] = {
    "lora": ("recpeft.methods.lora", "LORA"),
    "adalora": ("recpeft.methods.adalora", "ADALORA"),
    "adapter": ("recpeft.methods.adapter", "RECPEFT_BOTTLENECK"),
}


def get_method(name: str):
    """The Method registered as `name` (a methods.base.Method)."""
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'{did_you_mean(name, METHODS)}; choose from {', '.join(METHODS)}")
    return importlib.import_module(METHODS[name][0]).METHOD


def method_of(folder: str | Path) -> str:
    """Which method saved this adapter folder, from its adapter_config.json."""
    path = Path(folder) / "adapter_config.json"
    try:
        peft_type = json.loads(path.read_text(encoding="utf-8")).get("peft_type")
    except FileNotFoundError:
        raise UserError("not an adapter folder (no adapter_config.json)", str(folder)) from None
    except json.JSONDecodeError as exc:
        raise UserError(f"malformed JSON: {exc.msg}", f"{path}:{exc.lineno}") from None
    by_type = {peft_type: name for name, (_, peft_type) in METHODS.items()}
    if peft_type not in by_type:
        raise UserError(f"unsupported adapter type {peft_type!r}", str(path))
    return by_type[peft_type]


def check_base(base, folder: str | Path, tokenizer=None, force: bool = False) -> None:
    """Refuse an adapter trained on another base model (config, and tokenizer when given)."""
    from recpeft.adapter_meta import META_FILE, read_meta
    from recpeft.models.load import config_fingerprint, tokenizer_fingerprint

    if not (Path(folder) / META_FILE).is_file():
        return  # a bare peft/bottleneck folder: nothing recorded to check against
    want = read_meta(folder).base_model
    have_cfg = config_fingerprint(base.config)
    mismatch = want.config_fingerprint not in (None, have_cfg)  # None: recorded by an older version
    if tokenizer is not None:
        mismatch |= want.tokenizer_fingerprint not in (None, tokenizer_fingerprint(tokenizer))
    if not mismatch:
        return
    loaded = getattr(base.config, "name_or_path", "") or base.config.model_type
    message = (f"adapter {folder} was trained on base model '{want.name}' (config fingerprint "
               f"{want.config_fingerprint}), but the loaded base is '{loaded}' (config fingerprint {have_cfg})")
    if not force:
        raise UserError(message + "; pass force=True (--force) to load it anyway")
    import warnings

    warnings.warn(message + "; loading anyway because force was given", stacklevel=2)


def load_adapter(base, folder: str | Path, tokenizer=None, force: bool = False):
    """Attach the adapter saved in `folder` (any of the three methods) to `base`.

    The base model's fingerprint must match the one recorded at training time; force=True loads a
    mismatched adapter anyway, with a warning.
    """
    from recpeft.artifacts import verify_adapter_dir

    verify_adapter_dir(folder)
    check_base(base, folder, tokenizer, force)
    return get_method(method_of(folder)).load(base, folder)


def check_adapter(folder: str | Path, model: str | None = None, force: bool = False) -> dict:
    """Verify an adapter folder without using it: complete, weights readable from safetensors, and
    (with `model`) trained on that base model and attachable to it. Returns what it found."""
    from recpeft.adapter_meta import META_FILE, read_meta
    from recpeft.artifacts import verify_adapter_dir

    verify_adapter_dir(folder)
    meta = read_meta(folder) if (Path(folder) / META_FILE).exists() else None
    found = {"folder": str(folder), "method": method_of(folder), "domain": meta.domain if meta else None,
             "base_model": meta.base_model.name if meta else None}
    if model is not None:
        from recpeft.models.load import load_base

        base, tok, _ = load_base(model)
        load_adapter(base, folder, tokenizer=tok, force=force)
    return found
