"""Each method's own settings, declared once: type, default, help, range and choices of every field.

TrainConfig (recpeft/config.py) inherits these classes, so YAML keys and `recpeft train` flags stay
flat (`lora_r`, `--lora-r`) while a method reads just its part with `LoraSettings.of(cfg)`. The CLI
imports this module, so it must not import torch or peft.

A field's metadata is what the CLI, the validation and docs/train-options.md read:
    help          the help text of its flag
    short         a one-letter alias, e.g. "-d"
    flag          the flag's name when it is not --<name with dashes>
    range         (lo, hi) for numbers; None = unbounded on that side
    choices       the values allowed
    flag_default  the default as shown, when the value itself says little (None, 0 = auto)
    items         what the entries of a list are called ("module names")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, TypeVar

NON_LINEARITIES = ("relu", "gelu", "silu", "tanh")
PLACEMENTS = ("houlsby", "pfeiffer")

S = TypeVar("S", bound="MethodSettings")


def setting(default: Any, help: str, *, short: str | None = None, flag: str | None = None,
            range: tuple | None = None, choices: tuple | None = None, flag_default: str | None = None,
            items: str | None = None) -> Any:
    """A dataclass field whose metadata carries its help text, flag, range and choices.

    Keyword arguments (not a free dict) so that a misspelt key is an error where it is written.
    """
    given = {"help": help, "short": short, "flag": flag, "range": range, "choices": choices,
             "flag_default": flag_default, "items": items}
    return dataclasses.field(default=default, metadata={k: v for k, v in given.items() if v is not None})


class MethodSettings:
    """Base of the per-method settings classes: `of(cfg)` picks this method's fields out of a TrainConfig."""

    @classmethod
    def of(cls: type[S], cfg: Any) -> S:
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


@dataclass
class LoraSettings(MethodSettings):
    """LoRA (peft). AdaLoRA also reads lora_alpha, lora_dropout and target_modules; the bottleneck
    adapter reads lora_dropout."""

    lora_r: int = setting(8, "LoRA rank.", range=(1, 4096))
    lora_alpha: int = setting(16, "LoRA alpha (scale = alpha / r).", range=(1, None))
    # 0 by default: dropout draws one Bernoulli per input element of every adapted projection, the largest
    # CPU kernel after the matmuls, and a few hundred steps of a rank-8 adapter rarely overfit.
    lora_dropout: float = setting(0.0, "Dropout on the adapter's input (LoRA, AdaLoRA) or bottleneck (adapter); "
                                  "0 = none.", range=(0.0, 0.99))
    # LoRA-FA / FFA-LoRA: B starts at 0, so at the start only B gets a gradient; under DP-SGD the noise on
    # A's numbers is then pure noise (3/4 of LoRA r 1's numbers on SmolLM2's v_proj; docs/privacy.md)
    lora_freeze_a: bool = setting(False, "LoRA only: keep the A matrices at their random start and train only B "
                                  "(LoRA-FA): half the trainable numbers or fewer, so under --dp-epsilon the same "
                                  "noise spreads over fewer of them.")
    target_modules: list[str] | None = setting(None, "Comma-separated module names to adapt.",
                                                  flag_default="q_proj,v_proj (per architecture)",
                                                  items="module names")


@dataclass
class AdaLoraSettings(MethodSettings):
    """AdaLoRA (peft): ranks start at init_r and are pruned towards an average of target_r between tinit
    and total - tfinal steps."""

    init_r: int = setting(12, "AdaLoRA: initial rank of every adapted layer.", range=(1, 4096))
    target_r: int = setting(4, "AdaLoRA: average rank the budget is pruned to.", range=(1, 4096))
    tinit: int = setting(0, "AdaLoRA: warm-up steps before pruning; 0 = 10% of the steps.", range=(0, None),
                         flag_default="10% of steps")
    tfinal: int = setting(0, "AdaLoRA: final steps at the fixed budget; 0 = 20% of the steps.", range=(0, None),
                          flag_default="20% of steps")
    delta_t: int = setting(1, "AdaLoRA: steps between budget allocations.", range=(1, None))
    orth_reg_weight: float = setting(0.5, "AdaLoRA: orthogonality penalty weight.", range=(0.0, None))


@dataclass
class AdapterSettings(MethodSettings):
    """The Houlsby bottleneck adapter (recpeft's own, recpeft/methods/bottleneck.py)."""

    reduction_factor: int = setting(16, "Adapter: bottleneck = hidden size / this.", range=(1, 4096))
    non_linearity: str = setting("relu", f"Adapter: {', '.join(NON_LINEARITIES)}.", choices=NON_LINEARITIES)
    placement: str = setting("houlsby", "Adapter: houlsby (after attention and MLP) or pfeiffer (after the MLP "
                             "only).", choices=PLACEMENTS)
