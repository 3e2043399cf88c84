"""Houlsby bottleneck adapters (Houlsby et al. 2019) on a frozen decoder.

peft has no bottleneck tuner, so this module inserts the adapters itself: the last linear of each
sub-layer is wrapped so the adapter sees the sub-layer's output before the residual add.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from recpeft.methods.settings import PLACEMENTS

PEFT_TYPE = "RECPEFT_BOTTLENECK"
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "mistral", "gpt2")

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
_PLACEMENTS = PLACEMENTS  # the names live in settings.py, which the CLI imports without torch

# Per architecture: where the decoder blocks live, and the last linear of the attention and MLP sub-layers.
_LAYOUT = {
    "llama": ("model.layers", "self_attn.o_proj", "mlp.down_proj"),
    "qwen2": ("model.layers", "self_attn.o_proj", "mlp.down_proj"),
    "mistral": ("model.layers", "self_attn.o_proj", "mlp.down_proj"),
    "gpt2": ("transformer.h", "attn.c_proj", "mlp.c_proj"),
}


@dataclass
class BottleneckConfig:
    reduction_factor: int = 16  # bottleneck size = hidden_size // reduction_factor (at least 1)
    non_linearity: str = "relu"
    placement: str = "houlsby"  # houlsby: after attention and MLP; pfeiffer: after the MLP only
    dropout: float = 0.0
    target_layers: list[int] | None = None  # None = every decoder block

    def __post_init__(self):
        # Fail at configuration time, not half-way through attaching.
        if self.non_linearity not in _ACTIVATIONS:
            raise ValueError(f"non_linearity must be one of {', '.join(_ACTIVATIONS)}; got {self.non_linearity!r}")
        if self.placement not in _PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(_PLACEMENTS)}; got {self.placement!r}")
        if int(self.reduction_factor) < 1:
            raise ValueError(f"reduction_factor must be >= 1; got {self.reduction_factor}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BottleneckConfig:
        d = {k: v for k, v in d.items() if k not in ("peft_type", "base_model_name_or_path")}
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown bottleneck config keys: {sorted(unknown)}")
        return cls(**d)


class BottleneckAdapter(nn.Module):
    """x + up(act(down(x))); up starts at zero so an untrained adapter is an exact identity."""

    def __init__(self, hidden_size: int, bottleneck: int, non_linearity: str = "relu", dropout: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        if non_linearity not in _ACTIVATIONS:
            raise ValueError(f"non_linearity must be one of {', '.join(_ACTIVATIONS)}; got {non_linearity!r}")
        self.down = nn.Linear(hidden_size, bottleneck, device=device, dtype=dtype)
        self.act = _ACTIVATIONS[non_linearity]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, hidden_size, device=device, dtype=dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.dropout(self.act(self.down(x))))


class AdapterWrapped(nn.Module):
    """adapter(base_layer(x)); `site` is the wrapped layer's path in the bare model, used for stable keys."""

    def __init__(self, base_layer: nn.Module, adapter: BottleneckAdapter, site: str):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter
        self.site = site

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        # Quantised bases output a dtype other than the adapter's: compute in the adapter's, hand back theirs.
        return self.adapter(y.to(self.adapter.up.weight.dtype)).to(y.dtype)


def _bare(model) -> nn.Module:
    # A PeftModel (or similar) keeps the transformers model one level down.
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _out_features(layer: nn.Module) -> int:
    # nn.Linear (and bitsandbytes subclasses) say out_features; gpt2's Conv1D says nf.
    if hasattr(layer, "out_features"):
        return layer.out_features
    if hasattr(layer, "nf"):
        return layer.nf
    raise ValueError(f"cannot read the output size of {type(layer).__name__}")


def _plan(model, config: BottleneckConfig) -> list[tuple[nn.Module, str, AdapterWrapped]]:
    """Build (parent, attribute, wrapper) for every insertion site, without touching the model yet."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"bottleneck adapters support {', '.join(SUPPORTED_ARCHITECTURES)}; got {model_type}")
    root = _bare(model)
    if any(isinstance(m, AdapterWrapped) for m in root.modules()):
        raise ValueError("bottleneck adapters are already attached to this model")
    blocks_path, attn_path, mlp_path = _LAYOUT[model_type]
    blocks = root.get_submodule(blocks_path)
    layers = range(len(blocks)) if config.target_layers is None else config.target_layers
    bad = [i for i in layers if not 0 <= i < len(blocks)]
    if bad:
        raise ValueError(f"target_layers {bad} out of range for a model with {len(blocks)} blocks")
    sub_paths = (attn_path, mlp_path) if config.placement == "houlsby" else (mlp_path,)

    plan = []
    for i in sorted(set(layers)):
        for sub in sub_paths:
            parent_path, attr = sub.rsplit(".", 1)
            parent = blocks[i].get_submodule(parent_path)
            layer = getattr(parent, attr)
            hidden = _out_features(layer)
            w = layer.weight
            # int8/4-bit weights cannot host trainable parameters: those adapters train in float32.
            dtype = w.dtype if w.dtype.is_floating_point else torch.float32
            adapter = BottleneckAdapter(hidden, max(1, hidden // config.reduction_factor), config.non_linearity,
                                        config.dropout, device=w.device, dtype=dtype)
            plan.append((parent, attr, AdapterWrapped(layer, adapter, f"{blocks_path}.{i}.{sub}")))
    return plan


def _install(model, plan) -> None:
    # Freeze before installing, so only the new adapter parameters stay trainable.
    for p in model.parameters():
        p.requires_grad_(False)
    for parent, attr, wrapper in plan:
        setattr(parent, attr, wrapper)


def _named_adapter_params(wrappers) -> dict[str, nn.Parameter]:
    return {f"{w.site}.adapter.{name}": p for w in wrappers for name, p in w.adapter.named_parameters()}


def attach(model, config: BottleneckConfig):
    """Freeze every base parameter and insert bottleneck adapters; returns the same model object."""
    _install(model, _plan(model, config))
    return model


def _wrappers(model) -> list[AdapterWrapped]:
    return [m for m in _bare(model).modules() if isinstance(m, AdapterWrapped)]


def adapter_state_dict(model) -> dict[str, torch.Tensor]:
    """Adapter parameters only, keyed by their path in the bare model (no wrapper prefixes)."""
    return {k: p.detach() for k, p in _named_adapter_params(_wrappers(model)).items()}


def trainable_parameters(model) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def save(model, folder, config: BottleneckConfig) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: t.cpu().contiguous() for k, t in adapter_state_dict(model).items()}
    if not state:
        raise ValueError("no bottleneck adapters attached to this model")
    safetensors.torch.save_file(state, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps({"peft_type": PEFT_TYPE, **config.to_dict()}, indent=2) + "\n")


def load(model, folder):
    """Attach adapters described by folder and load their weights; the model is untouched if anything mismatches."""
    _install(model, load_plan(model, folder))
    return model


def load_plan(model, folder) -> list[tuple[nn.Module, str, AdapterWrapped]]:
    """The adapters of folder, weights loaded, ready to install; the model itself is not changed."""
    folder = Path(folder)
    raw = json.loads((folder / CONFIG_FILE).read_text())
    if raw.get("peft_type", PEFT_TYPE) != PEFT_TYPE:
        raise ValueError(f"{folder} holds a {raw['peft_type']} adapter, not {PEFT_TYPE}")
    config = BottleneckConfig.from_dict(raw)
    plan = _plan(model, config)
    expected = _named_adapter_params([w for _, _, w in plan])
    state = safetensors.torch.load_file(str(folder / WEIGHTS_FILE))  # safetensors: no pickle involved

    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"adapter weights in {folder} do not match the model: "
                         f"missing keys {missing}, unexpected keys {unexpected}")
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(p.shape)}"
             for k, p in expected.items() if state[k].shape != p.shape]
    if wrong:
        raise ValueError(f"adapter weight shapes in {folder} do not match the model: {'; '.join(wrong)}")

    with torch.no_grad():
        for k, p in expected.items():
            p.copy_(state[k])  # copy_ moves to the parameter's device and dtype
    return plan


def install(plan) -> None:
    """Put a loaded plan's adapters in place, each around whatever module now sits at its site."""
    for parent, attr, wrapper in plan:
        wrapper.base_layer = getattr(parent, attr)
        setattr(parent, attr, wrapper)


def uninstall(plan) -> None:
    """Take a plan's adapters out again, restoring the modules they wrapped."""
    for parent, attr, wrapper in plan:
        if getattr(parent, attr) is wrapper:
            setattr(parent, attr, wrapper.base_layer)
