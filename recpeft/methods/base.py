"""The method protocol: everything the trainer and the loaders ask of a parameter-efficient method.

Each method is one `Method` subclass with one instance (its module's `METHOD`). What a method needs
beyond attach/save/load is declared here with a do-nothing default, so the trainer calls every hook
unconditionally and never asks which method it runs.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:  # recpeft.config imports the method registry: no import back at run time
    from recpeft.config import TrainConfig
    from recpeft.methods.settings import MethodSettings

# (tensors, JSON) a method keeps in a checkpoint: tensors go to <checkpoint_name>.safetensors, the JSON
# part to the checkpoint's state.json under the same name.
MethodState = tuple[dict[str, torch.Tensor], dict[str, Any]]


class Method:
    """A parameter-efficient method behind one interface. Subclasses set `name` and `peft_type` and
    implement attach/save/load; the hooks below default to doing nothing."""

    name: ClassVar[str]
    peft_type: ClassVar[str]  # what its saved adapter_config.json records (methods.method_of reads it)
    # The settings dataclass (recpeft/methods/settings.py) its own options are read through.
    settings: ClassVar[type[MethodSettings]]
    # Stem of the checkpoint file holding checkpoint_state()'s tensors; None: no state of its own.
    checkpoint_name: ClassVar[str | None] = None

    def __repr__(self) -> str:
        return f"<recpeft method {self.name}>"

    def options(self, cfg: TrainConfig) -> MethodSettings:
        """The method's own settings, read from cfg."""
        return self.settings.of(cfg)

    # ------------------------------------------------------------------ required

    def attach(self, model, cfg: TrainConfig, targets: list[str], total_steps: int):
        """The model with the method attached and its base frozen."""
        raise NotImplementedError

    def save(self, model, folder, cfg: TrainConfig) -> None:
        """Write adapter_model.safetensors + adapter_config.json into folder."""
        raise NotImplementedError

    def load(self, base, folder):
        """base with the adapter saved in folder attached."""
        raise NotImplementedError

    # ------------------------------------------------------------------ optional, declared

    def disabled(self, model):
        """A context in which the model behaves like its base (default: it already does)."""
        return contextlib.nullcontext()

    def extra_loss(self, model) -> torch.Tensor | None:
        """A term added to the task loss of every micro-batch; None for none."""
        return None

    def after_step(self, model, step: int) -> None:
        """Called after every optimiser step (step = the number of steps done)."""

    def checkpoint_state(self, model) -> MethodState | None:
        """What the method carries from step to step besides the trainable weights, for an exact resume."""
        return None

    def restore_checkpoint_state(self, model, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        """Put back what checkpoint_state() saved."""

    def finalise(self, model) -> None:
        """Called on the final (best) weights before they are scored on test and saved."""

    def report(self, model, cfg: TrainConfig) -> dict[str, Any]:
        """Method-specific entries for the run's metrics (and so recpeft.json)."""
        return {}
