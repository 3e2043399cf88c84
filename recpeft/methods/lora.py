"""LoRA through peft: low-rank updates on the chosen linear layers of a frozen base."""

from __future__ import annotations

from peft import LoraConfig, get_peft_model

from ..config import TrainConfig


def attach(model, cfg: TrainConfig, targets: list[str]):
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)
