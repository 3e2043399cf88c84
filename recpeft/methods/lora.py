"""LoRA through peft: low-rank updates on the chosen linear layers of a frozen base."""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model

from ..config import TrainConfig
from ..errors import UserError


def wrap(model, config):
    """get_peft_model, with peft's complaints about the model (e.g. unknown target modules) as UserErrors."""
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise UserError(f"cannot attach {config.peft_type.value.lower()}: {str(exc).splitlines()[0]}") from None


def attach(model, cfg: TrainConfig, targets: list[str], total_steps: int = 0):
    return wrap(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                  target_modules=targets, bias="none", task_type="CAUSAL_LM"))


def save(model, folder, cfg: TrainConfig | None = None) -> None:
    model.save_pretrained(folder, safe_serialization=True)


def load(base, folder):
    return PeftModel.from_pretrained(base, str(folder))


def disabled(model):
    return model.disable_adapter()
