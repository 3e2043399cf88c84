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


def load_adapter(base, folder: str | Path):
    """Attach the adapter saved in `folder` (any of the three methods) to `base`."""
    return METHODS[method_of(folder)].load(base, folder)
