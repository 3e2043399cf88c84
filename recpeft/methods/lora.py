"""LoRA through peft: low-rank updates on the chosen linear layers of a frozen base."""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model

from ..config import TrainConfig
from ..errors import UserError


def attach(model, cfg: TrainConfig, targets: list[str], total_steps: int = 0):
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # e.g. target modules not in this model
        raise UserError(f"cannot attach {config.peft_type.value.lower()}: {str(exc).splitlines()[0]}") from None


def save(model, folder, cfg: TrainConfig | None = None) -> None:
    model.save_pretrained(folder, safe_serialization=True)


def load(base, folder):
    return PeftModel.from_pretrained(base, str(folder))


def disabled(model):
    return model.disable_adapter()
