"""An 8-bit base on the CPU: bitsandbytes' int8 weights, used the way its CPU training path uses them.

On the CPU, bitsandbytes trains through `MatMul8bitFp`: dequantise the int8 weight, `F.linear`. Its
forward also stores the layer's input for a weight gradient. A frozen base never asks for one, yet
every quantised linear of every layer kept its input until the backward pass: on SmolLM2-135M that
made an 8-bit run's peak memory *higher* than the fp32 run's (experiments/results/memory.json).
In inference it switches to `MatMul8bitLt`, which also quantises the activations: a different
function from the one the adapter was trained through, 1.9x slower than dequantise + `F.linear` on
this CPU and further from the fp32 model (experiments/bench_int8_cpu.py: 4.40 s against 2.28 s for
8 x 110 tokens of SmolLM2-135M; max |logit - fp32| 3.66 against 0.80).

`FrozenInt8Linear` computes that one function, train and eval alike, with the same input gradient,
and saves nothing for the backward pass but the layer's own int8 weight. Swapped in by class, so peft
still sees a `Linear8bitLt`; a CUDA input or trainable fp16 weights go to bitsandbytes' own path.
"""

from __future__ import annotations

import threading

import bitsandbytes as bnb  # imported only where an 8-bit base is loaded (models.load_base)
import torch
import torch.nn.functional as F

_scratch = threading.local()


def _dequantise(cb: torch.Tensor, scb: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The full-precision weight, in a buffer reused by every layer of the same shape (per thread).

    A fresh multi-MiB tensor per layer and pass, freed a moment later between activations that live
    until the backward pass, leaves holes in the heap that glibc keeps. The weight is used at once
    and never saved, so one buffer per shape serves all layers.
    """
    buffers = _scratch.__dict__.setdefault("buffers", {})
    key = (tuple(cb.shape), dtype, cb.device)
    if key not in buffers:
        buffers[key] = torch.empty(cb.shape, dtype=dtype, device=cb.device)
    # The arithmetic of bitsandbytes' own dequantisation, so outputs match it bit for bit.
    return buffers[key].copy_(cb).mul_(scb.unsqueeze(1).mul(1.0 / 127.0))


class _FrozenInt8Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cb, scb, bias):
        ctx.save_for_backward(cb, scb)  # the layer's own int8 weight and scales: no new memory
        ctx.x_shape = x.shape
        return F.linear(x, _dequantise(cb, scb, x.dtype), bias)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        cb, scb = ctx.saved_tensors
        return grad.matmul(_dequantise(cb, scb, grad.dtype)).view(ctx.x_shape), None, None, None


class FrozenInt8Linear(bnb.nn.Linear8bitLt):
    """A frozen Linear8bitLt that on the CPU dequantises and saves no activations (see the module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or self.state.has_fp16_weights:  # CUDA, or trainable fp16 weights
            return super().forward(x)
        if self.weight.CB is not None:  # first call: bitsandbytes moves the int8 weight into .state
            self.init_8bit_state()
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return _FrozenInt8Matmul.apply(x, self.state.CB, self.state.SCB, bias)


def use_on_cpu(model) -> int:
    """Swap every bitsandbytes Linear8bitLt of `model` for FrozenInt8Linear. Returns how many."""
    n = 0
    for module in model.modules():
        if type(module) is bnb.nn.Linear8bitLt:
            module.__class__ = FrozenInt8Linear
            n += 1
    return n
