"""The pieces a training run builds before its loop: accelerator, activation checkpointing, optimiser
and learning-rate schedule."""

from __future__ import annotations

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import parse_flag_from_env
from transformers import get_cosine_schedule_with_warmup

from recpeft.config import TrainConfig
from recpeft.training import tracking


def process_on_cuda() -> bool:
    """Whether this process runs on CUDA, as accelerate will place it (ACCELERATE_USE_CPU = CPU even with a GPU)."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device.type == "cuda"


def make_accelerator(cfg: TrainConfig, bits: int, save: bool) -> Accelerator:
    """The run's Accelerator. On CUDA a 16/8/4-bit base runs under bf16 autocast: the adapter keeps fp32
    weights (peft's default) but its matmuls run in bf16 like the base's (they ran as fp32 GEMMs on the
    H200, issue 15). The device is the one accelerate gives this process: its PartialState, built as
    AcceleratorState builds it (ACCELERATE_USE_CPU = cpu; a plain PartialState() would miss gloo DDP on
    CPU) and then shared by the Accelerator, so a CPU run on a CUDA machine gets no autocast."""
    mixed = "bf16" if process_on_cuda() and bits != 32 else "no"
    return Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=mixed,
                       **tracking.accelerator_kwargs(cfg, save))


def enable_gradient_checkpointing(model) -> None:
    """Activation checkpointing (non-reentrant), so the frozen base keeps no activations for backward.

    Not peft's prepare_model_for_kbit_training: it up-casts every bf16 weight of a quantised model
    (embeddings included) to fp32, which on the H200 made the 8-bit run's peak 1.4-2x the bf16 run's
    (experiments/results/gpu_check.json). bf16 stays bf16, as in a bf16 run.
    """
    # transformers 5.x renamed it (the old name warns on every run); older 5.x have only the old one
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()


def split_fusion(trainable: list[torch.nn.Parameter],
                 fusion: list[torch.nn.Parameter] = ()) -> list[list[torch.nn.Parameter]]:
    """The trainable parameters as [adapter] or, with --fusion, [adapter, fusion projector]: the groups that
    get learning rates and gradient clipping of their own."""
    own = {id(p) for p in fusion}
    groups = [[p for p in trainable if id(p) not in own], [p for p in trainable if id(p) in own]]
    return [g for g in groups if g]


def make_optimizer(groups: list[list[torch.nn.Parameter]], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over split_fusion's groups; weight decay on matrices only (biases and norms keep theirs at
    zero). The fusion projector (second group) runs at --lr x --fusion-lr-scale."""
    param_groups = []
    for params, lr in zip(groups, (cfg.lr, cfg.lr * cfg.fusion_lr_scale)):
        param_groups += [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay, "lr": lr},
                         {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr}]
    return torch.optim.AdamW(param_groups, lr=cfg.lr)


def clip_gradients(accelerator, groups: list[list[torch.nn.Parameter]], max_norm: float) -> list[torch.Tensor]:
    """Clip each of split_fusion's groups to `max_norm` on its own and return their norms before clipping (as
    tensors: reading them would make every training step wait for the GPU).
    The projector's gradients are ~40x LoRA's (experiments/fusion_grads.py): under one joint norm they alone
    would set each step's clip factor, so a spike in the projector's gradient would shrink that step's adapter
    gradient too (Adam's normalisation then reweights that step against the others). Twice through accelerate
    is safe: recpeft runs bf16 or fp32, never fp16, so there is no GradScaler to unscale twice."""
    return [accelerator.clip_grad_norm_(params, max_norm) for params in groups]


def make_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    """Linear warm-up then cosine decay. Not prepared by accelerate on purpose: the loop steps it once per
    optimiser step, whatever the process count."""
    return get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
