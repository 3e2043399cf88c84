"""The Houlsby bottleneck adapter (recpeft's own module, see bottleneck.py) behind the method interface."""

from __future__ import annotations

from recpeft.config import TrainConfig
from recpeft.errors import UserError
from recpeft.methods import bottleneck
from recpeft.methods.base import Method
from recpeft.methods.bottleneck import PEFT_TYPE
from recpeft.methods.settings import AdapterSettings, LoraSettings


class Adapter(Method):
    # disabled() keeps the default no-op: an untrained bottleneck adapter is an exact identity (its
    # up-projection starts at zero).
    name, peft_type, settings = "adapter", PEFT_TYPE, AdapterSettings

    def config_of(self, cfg: TrainConfig) -> bottleneck.BottleneckConfig:
        o = self.options(cfg)
        return bottleneck.BottleneckConfig(reduction_factor=o.reduction_factor, non_linearity=o.non_linearity,
                                           placement=o.placement, dropout=LoraSettings.of(cfg).lora_dropout)

    def attach(self, model, cfg: TrainConfig, targets: list[str] | None = None, total_steps: int = 0):
        try:
            return bottleneck.attach(model, self.config_of(cfg))
        except ValueError as exc:
            raise UserError(str(exc)) from None

    def save(self, model, folder, cfg: TrainConfig) -> None:
        bottleneck.save(model, folder, self.config_of(cfg))

    def load(self, base, folder):
        return bottleneck.load(base, folder)


METHOD = Adapter()
