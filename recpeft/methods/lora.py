"""LoRA through peft: low-rank updates on the chosen linear layers of a frozen base."""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model

from recpeft.config import TrainConfig
from recpeft.errors import UserError
from recpeft.methods.base import Method
from recpeft.methods.settings import LoraSettings


def wrap(model, config):
    """get_peft_model, with peft's complaints about the model (e.g. unknown target modules) as UserErrors."""
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise UserError(f"cannot attach {config.peft_type.value.lower()}: {str(exc).splitlines()[0]}") from None


class Lora(Method):
    name, peft_type, settings = "lora", "LORA", LoraSettings

    def attach(self, model, cfg: TrainConfig, targets: list[str], total_steps: int = 0):
        o = self.options(cfg)
        model = wrap(model, LoraConfig(r=o.lora_r, lora_alpha=o.lora_alpha, lora_dropout=o.lora_dropout,
                                       target_modules=targets, bias="none", task_type="CAUSAL_LM"))
        if o.lora_freeze_a:  # saved with the adapter all the same: its random A is part of the update B·A
            for name, p in model.named_parameters():
                if ".lora_A." in name:
                    p.requires_grad_(False)
        return model

    def save(self, model, folder, cfg: TrainConfig | None = None) -> None:
        model.save_pretrained(folder, safe_serialization=True)

    def load(self, base, folder):
        return PeftModel.from_pretrained(base, str(folder))

    def disabled(self, model):
        return model.disable_adapter()


METHOD = Lora()
