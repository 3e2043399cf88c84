"""The Houlsby bottleneck adapter (recpeft's own module, see bottleneck.py) behind the method interface."""

from __future__ import annotations

import contextlib

from ..config import TrainConfig
from ..errors import UserError
from . import bottleneck
from .bottleneck import PEFT_TYPE  # noqa: F401  (used to recognise saved folders)


def config_of(cfg: TrainConfig) -> bottleneck.BottleneckConfig:
    return bottleneck.BottleneckConfig(reduction_factor=cfg.reduction_factor, non_linearity=cfg.non_linearity,
                                       placement=cfg.placement, dropout=cfg.lora_dropout)


def attach(model, cfg: TrainConfig, targets: list[str] | None = None, total_steps: int = 0):
    try:
        return bottleneck.attach(model, config_of(cfg))
    except ValueError as exc:
        raise UserError(str(exc)) from None


def save(model, folder, cfg: TrainConfig) -> None:
    bottleneck.save(model, folder, config_of(cfg))


def load(base, folder):
    return bottleneck.load(base, folder)


def disabled(model):
    # An untrained bottleneck adapter is an exact identity (its up-projection starts at zero).
    return contextlib.nullcontext()
