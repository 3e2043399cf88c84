"""AdaLoRA through peft: SVD-shaped LoRA whose rank budget shrinks from init_r towards target_r.

peft adds AdaLoRA's orthogonality penalty only when the model computes its own LM loss; recpeft
computes a verbaliser loss outside the model, so `extra_loss` adds the same penalty here. The rank
allocator's running state goes into checkpoints, the final budget is applied before saving, and the
ranks are reported in the run's metrics: all through the Method hooks (methods/base.py).
"""

from __future__ import annotations

import torch
from peft import AdaLoraConfig

from recpeft.config import TrainConfig
from recpeft.errors import UserError
from recpeft.methods.base import MethodState
from recpeft.methods.lora import Lora, wrap
from recpeft.methods.settings import AdaLoraSettings, LoraSettings


def schedule(cfg: AdaLoraSettings | TrainConfig, total_steps: int) -> tuple[int, int]:
    """(tinit, tfinal): the configured values, or 10% / 20% of the run, leaving room to prune.

    Defaults that leave no pruning steps in a short run shrink; values the user set are never
    changed behind their back: if they leave no room, that is a UserError.
    """
    tinit = cfg.tinit or max(1, total_steps // 10)
    tfinal = cfg.tfinal or max(1, total_steps // 5)
    if tinit + tfinal >= total_steps:
        if cfg.tinit or cfg.tfinal:
            raise UserError(f"AdaLoRA: tinit {tinit} + tfinal {tfinal} leave no step for rank pruning in a "
                            f"{total_steps}-step run; lower --tinit/--tfinal (0 = 10% / 20% of the run) "
                            "or train longer")
        tinit, tfinal = 0, max(0, total_steps // 4)
    return tinit, tfinal


def match_ranknum_dtype(model):
    """Give each layer's fp32 `ranknum` the base's compute dtype.

    peft's 8-bit AdaLoRA layer casts its update back to the input dtype, then divides by `ranknum`;
    an fp32 ranknum turns a bf16 activation into fp32 there, and attention then fails on mixed q/k/v
    dtypes (seen on the H200 with a bf16 8-bit base). ranknum holds a small integer: exact in bf16.
    """
    dtype = model.get_input_embeddings().weight.dtype
    if dtype != torch.float32:
        for name, p in model.named_parameters():
            if "ranknum" in name:
                p.data = p.data.to(dtype)
    return model


def ranks(model) -> dict[str, int]:
    """Current rank of each adapted layer: the non-zero singular values it keeps."""
    return {name.replace(".lora_E.default", ""): int((p != 0).sum())
            for name, p in model.named_parameters() if "lora_E" in name}


def apply_rank_pattern(model) -> None:
    """Zero the singular values the final budget pruned, so in-memory weights equal what is saved."""
    pattern = model.peft_config[model.active_adapter].rank_pattern
    if not pattern:
        return
    # peft keys the pattern by parameter name without the "base_model.model." prefix
    bare = {k.replace("base_model.model.", "", 1): m for k, m in pattern.items()}
    with torch.no_grad():
        for name, p in model.named_parameters():
            key = name.replace("base_model.model.", "", 1)
            # with or without the adapter name, as peft itself accepts (mask_using_rank_pattern)
            mask = (bare.get(key, bare.get(key.replace(f".{model.active_adapter}", ""))) if "lora_E" in name
                    else None)
            if mask is not None:
                p[~torch.tensor(mask, dtype=torch.bool).view(p.shape[0], *([1] * (p.ndim - 1)))] = 0

def allocator_state(model) -> tuple[dict[str, torch.Tensor], dict]:
    """The rank allocator's running importance scores (tensors) and the current rank pattern (JSON):
    what `update_and_allocate` carries from one step to the next, for an exact resume."""
    alloc = model.base_model.rankallocator
    tensors = {f"{kind}/{name}": t.detach().cpu().contiguous()
               for kind in ("ipt", "exp_avg_ipt", "exp_avg_unc") for name, t in getattr(alloc, kind).items()}
    pattern = model.peft_config[model.active_adapter].rank_pattern
    return tensors, {"rank_pattern": {k: [bool(b) for b in v] for k, v in pattern.items()} if pattern else None}


def load_allocator_state(model, tensors: dict[str, torch.Tensor], extra: dict) -> None:
    """Put back what allocator_state saved."""
    alloc = model.base_model.rankallocator
    device = next(model.parameters()).device
    for kind in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
        getattr(alloc, kind).clear()
    for key, t in tensors.items():
        kind, name = key.split("/", 1)
        getattr(alloc, kind)[name] = t.to(device)
    model.peft_config[model.active_adapter].rank_pattern = extra.get("rank_pattern")


class AdaLora(Lora):
    # Same peft save/load/disable contract as LoRA; the hooks below are AdaLoRA's own.
    name, peft_type, settings = "adalora", "ADALORA", AdaLoraSettings
    checkpoint_name = "adalora"  # adalora.safetensors: the allocator's importance scores

    def attach(self, model, cfg: TrainConfig, targets: list[str], total_steps: int):
        o, lo = self.options(cfg), LoraSettings.of(cfg)  # LoRA's alpha and dropout apply too
        tinit, tfinal = schedule(o, total_steps)
        config = AdaLoraConfig(init_r=o.init_r, target_r=o.target_r, tinit=tinit, tfinal=tfinal,
                               deltaT=o.delta_t, orth_reg_weight=o.orth_reg_weight, total_step=total_steps,
                               lora_alpha=lo.lora_alpha, lora_dropout=lo.lora_dropout, target_modules=targets,
                               task_type="CAUSAL_LM")
        return match_ranknum_dtype(wrap(model, config))

    def load(self, base, folder):
        return match_ranknum_dtype(super().load(base, folder))

    def extra_loss(self, model) -> torch.Tensor:
        """orth_reg_weight * mean over adapted layers of ||P^T P - I||_F + ||Q Q^T - I||_F."""
        weight = model.peft_config[model.active_adapter].orth_reg_weight
        terms = []
        for name, p in model.named_parameters():
            if ("lora_A" in name or "lora_B" in name) and p.requires_grad:
                para = p @ p.T if "lora_A" in name else p.T @ p
                eye = torch.eye(*para.size(), out=torch.empty_like(para))
                terms.append(torch.norm(para - eye, p="fro"))
        return weight * torch.stack(terms).mean() if terms else torch.zeros(())

    def after_step(self, model, step: int) -> None:
        model.base_model.update_and_allocate(step)  # re-allocate the rank budget

    def checkpoint_state(self, model) -> MethodState:
        return allocator_state(model)

    def restore_checkpoint_state(self, model, tensors, extra) -> None:
        load_allocator_state(model, tensors, extra)

    def finalise(self, model) -> None:
        apply_rank_pattern(model)  # the saved file holds only the final budget's ranks

    def report(self, model, cfg: TrainConfig) -> dict:
        found = ranks(model)
        return {"ranks": found, "rank_budget": {"init": self.options(cfg).init_r * len(found),
                                                "final": sum(found.values())}}


METHOD = AdaLora()
extra_loss, after_step = METHOD.extra_loss, METHOD.after_step
