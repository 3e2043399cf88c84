"""One base model, many adapters, switched per call (hot-swap).

LoRA adapters share one peft `PeftModel` and are switched with `set_adapter`. peft cannot hold LoRA and
AdaLoRA in one model (and its mixed model cannot load AdaLoRA's rank pattern), so an AdaLoRA adapter is
loaded by peft on its own, turned into the LoRA adapter it equals at inference (per layer A' = A * E,
the kept singular values, and B' = B * scaling / ranknum, at that layer's rank) and added to the same
PeftModel. Bottleneck adapters are recpeft's own modules: switching one in wraps its sites, switching it
out restores them, and the peft layers are disabled while it is active.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import torch

from recpeft.errors import UserError
from recpeft.kernels.last_position import decoder_layers
from recpeft.methods import bottleneck, method_of


def adalora_as_lora(base, folder: str | Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], object]:
    """{module name: (A', B')} of the LoRA adapter equal to the AdaLoRA adapter in folder, and its config.

    Loads the adapter onto `base` with peft (which applies the saved rank pattern), reads it, and unloads
    it again, leaving `base` as it was. Layers whose whole rank was pruned are left out.
    """
    from peft import PeftModel
    from peft.tuners.adalora.layer import AdaLoraLayer

    model = PeftModel.from_pretrained(base, str(folder))
    weights = {}
    for name, module in model.base_model.model.named_modules():
        if isinstance(module, AdaLoraLayer) and "default" in module.lora_A:
            a, e, b = module.lora_A["default"], module.lora_E["default"], module.lora_B["default"]
            if a.shape[0] == 0:
                continue
            scale = module.scaling["default"] / (module.ranknum["default"] + 1e-5)
            weights[name] = ((a * e).detach().clone(), (b * scale).detach().clone())
    config = model.peft_config["default"]
    model.unload()
    return weights, config


def lora_config_for(weights: dict[str, tuple[torch.Tensor, torch.Tensor]]):
    """A LoRA config with each module's own rank and alpha = rank, so peft's scaling is exactly 1."""
    from peft import LoraConfig

    ranks = {name: a.shape[0] for name, (a, _) in weights.items()}
    top = max(ranks.values())
    # rank_pattern keys are regexes matched at the end of the module name: anchor them to whole names
    pattern = {name.replace(".", r"\."): r for name, r in ranks.items()}
    return LoraConfig(r=top, lora_alpha=top, target_modules=sorted(ranks), rank_pattern=pattern,
                      alpha_pattern=dict(pattern), lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      inference_mode=True)


class AdapterBank:
    """A base model with named adapters of any of the three methods; `use(name)` activates one.

    Calls are serialised by a lock: the active adapter is state of the one shared model. Inside peft each
    adapter is named by its position (`adapter_0`, ...), never by the caller's name: peft refuses names
    with ".", and a folder's name (`adapters/news-v1.2`) must never matter.
    """

    def __init__(self, base, folders: dict[str, str | Path], fusions: dict | None = None):
        """fusions: {name: recpeft.fusion.Fusion} of the adapters trained with --fusion (switched with them)."""
        from peft import PeftModel, get_peft_model

        self.base = base
        self.fusions = {name: f for name, f in (fusions or {}).items() if f is not None}
        for fusion in self.fusions.values():
            fusion.attach(base, trainable=False)  # installs the fused embedding once; _switch picks the module
        self.peft = None
        self.methods = {name: method_of(folder) for name, folder in folders.items()}
        self.slots = {name: f"adapter_{i}" for i, name in enumerate(folders)}  # the names peft sees
        self.plans: dict[str, list] = {}
        self.lock = threading.RLock()
        self.active: str | None = None
        self._installed: list | None = None

        def add_lora(name: str, load=None, config=None):
            name = self.slots[name]
            if self.peft is None:
                self.peft = (PeftModel.from_pretrained(base, str(load), adapter_name=name) if load
                             else get_peft_model(base, config, adapter_name=name))
            elif load:
                self.peft.load_adapter(str(load), adapter_name=name)
            else:
                self.peft.add_adapter(name, config)

        # AdaLoRA first: reading one needs the bare base, before any LoRA layer is injected.
        converted = {name: adalora_as_lora(base, folders[name])
                     for name, m in self.methods.items() if m == "adalora"}
        for name, (weights, _) in converted.items():
            if not weights:
                raise UserError("this AdaLoRA adapter kept rank 0 in every layer; it changes nothing",
                                str(folders[name]))
            add_lora(name, config=lora_config_for(weights))
            slot = self.slots[name]
            with torch.no_grad():
                for module_name, module in self.peft.base_model.model.named_modules():
                    if module_name in weights and hasattr(module, "lora_A") and slot in module.lora_A:
                        a, b = weights[module_name]
                        module.lora_A[slot].weight.copy_(a)
                        module.lora_B[slot].weight.copy_(b)
        for name, method in self.methods.items():
            if method == "lora":
                add_lora(name, load=folders[name])
        # Bottleneck adapters last, so each wraps whatever (peft) module sits at its site at switch time.
        for name, method in self.methods.items():
            if method == "adapter":
                try:
                    self.plans[name] = bottleneck.load_plan(base, folders[name])
                except ValueError as exc:
                    raise UserError(str(exc), str(folders[name])) from None
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def model(self):
        """The module to call: the PeftModel when any LoRA/AdaLoRA adapter is loaded, else the base."""
        return self.peft if self.peft is not None else self.base

    def _switch(self, name: str) -> None:
        if name == self.active:
            return
        if name not in self.methods:
            raise UserError(f"unknown adapter '{name}'; loaded: {', '.join(self.methods)}")
        if self.fusions:
            from recpeft.fusion.module import install

            install(self.base, self.fusions[name].module if name in self.fusions else None)
        if self._installed is not None:
            bottleneck.uninstall(self._installed)
            self._installed = None
        if self.methods[name] == "adapter":
            if self.peft is not None:
                self.peft.base_model.disable_adapter_layers()
            bottleneck.install(self.plans[name])
            self._installed = self.plans[name]
        else:
            self.peft.base_model.enable_adapter_layers()
            self.peft.set_adapter(self.slots[name])
        self.active = name

    @contextlib.contextmanager
    def use(self, name: str, interrupt=None):
        """Hold the model with adapter `name` active; yields the module to call.

        interrupt: a function called before every decoder layer runs; it raises (`Cancelled`) to stop
        the call there. A thread cannot be killed, so this is how a server stops work nobody waits for.
        """
        with self.lock:
            self._switch(name)
            if interrupt is None:
                yield self.model
                return
            interrupt()

            def hook(*_):  # returns None: a pre-hook's return value would replace the layer's input
                interrupt()

            layers = decoder_layers(self.model) or [self.model]  # another layout: once, before the whole call
            hooks = [layer.register_forward_pre_hook(hook) for layer in layers]
            try:
                yield self.model
            finally:
                for h in hooks:
                    h.remove()


class Cancelled(Exception):
    """Raised by an `interrupt` function to stop a model call between two decoder layers."""
