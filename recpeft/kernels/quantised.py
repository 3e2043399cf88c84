"""A quantised frozen base (8-bit on CPU and CUDA, 4-bit on CPU): dequantise the weight, `F.linear`.

8-bit. On the CPU, bitsandbytes trains through `MatMul8bitFp`: dequantise the int8 weight, `F.linear`.
Its forward also stores the layer's input for a weight gradient. A frozen base never asks for one, yet
every quantised linear of every layer kept its input until the backward pass: on SmolLM2-135M that
made an 8-bit run's peak memory *higher* than the fp32 run's (experiments/results/memory.json).
In inference it switches to `MatMul8bitLt`, which also quantises the activations: a different
function from the one the adapter was trained through, 1.9x slower than dequantise + `F.linear` on
this CPU and further from the fp32 model (experiments/bench_int8_cpu.py: 4.40 s against 2.28 s for
8 x 110 tokens of SmolLM2-135M; max |logit - fp32| 3.66 against 0.80).

4-bit (nf4). bitsandbytes trains through `dequantize_4bit` + `F.linear` on the CPU too, but what it
does in inference depends on the CPU: where `has_avx512bf16()` is true (AMD Zen 4, Sapphire Rapids) an
eval-mode forward repacks the weight in place for a fused bf16 kernel, which crashed on a small model
("shape '[32, 0]' is invalid", issue 14) and computes in bf16, not the function the adapter was trained
through. Elsewhere it does not. Here both CPUs run the training function, so a CPU feature never
changes a score.

On CUDA, bitsandbytes' int8 layers run `MatMul8bitLt` in training too: it quantises every input
row to int8 and keeps a fp16 copy of each layer's input, so an 8-bit run's peak on the H200 was above
the bf16 run's (22.7 against 19.8 GiB at batch 64, issue 15) and slower. `FrozenInt8Linear` runs there
as on the CPU: the int8 weight de-quantised to the activations' dtype (bf16) into a reused buffer, one
bf16 GEMM, nothing kept; weights stay int8 in memory. bitsandbytes' CUDA nf4 path already de-quantises
and is left alone.

`FrozenInt8Linear` / `FrozenNF4Linear` compute that one function, train and eval alike, with the same
input gradient, and save nothing for the backward pass but a reference to the layer (whose quantised
weight exists anyway). The int8 weight is de-quantised into one buffer per shape; the 4-bit one into a
fresh tensor (bitsandbytes has no CPU `out=` variant for it). Trainable fp16 int8 weights (not recpeft's
frozen base) go to bitsandbytes' own path. Swapped in by class, so peft still sees a `Linear8bitLt` /
`Linear4bit`, by `recpeft.kernels.apply` on every base with bitsandbytes layers, also with the optional
kernels switched off: this is the function adapters on a quantised base are trained and scored through.
"""

from __future__ import annotations

import threading

import bitsandbytes as bnb  # imported only where a quantised base is loaded (models.load_base)
import torch
import torch.nn.functional as F
from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module

_scratch = threading.local()


def _buffer(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """A buffer reused by every layer whose weight has this shape (per thread).

    A fresh multi-MiB tensor per layer and pass, freed a moment later between activations that live
    until the backward pass, leaves holes in the heap that glibc keeps. The weight is used at once
    and never saved, so one buffer per shape serves all layers.
    """
    buffers = _scratch.__dict__.setdefault("buffers", {})
    key = (tuple(shape), dtype, device)
    if key not in buffers:
        buffers[key] = torch.empty(tuple(shape), dtype=dtype, device=device)
    return buffers[key]


class _FrozenMatmul(torch.autograd.Function):
    """y = x W^T + b with W = layer.dequantised(): keeps no activation, returns only the input gradient."""

    @staticmethod
    def forward(ctx, x, layer, bias):
        ctx.layer, ctx.x_shape = layer, x.shape
        return F.linear(x, layer.dequantised(x.dtype), bias)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return grad.matmul(ctx.layer.dequantised(grad.dtype)).view(ctx.x_shape), None, None


class FrozenInt8Linear(bnb.nn.Linear8bitLt):
    """A frozen Linear8bitLt that dequantises and saves no activations, on CPU and CUDA (see the module doc)."""

    def dequantised(self, dtype: torch.dtype) -> torch.Tensor:
        cb, scb = self.state.CB, self.state.SCB
        # The arithmetic of bitsandbytes' own dequantisation, so outputs match it bit for bit.
        return _buffer(cb.shape, dtype, cb.device).copy_(cb).mul_(scb.unsqueeze(1).mul(1.0 / 127.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.state.has_fp16_weights:  # trainable fp16 weights: not a frozen base
            return super().forward(x)
        if self.weight.CB is not None:  # first call: bitsandbytes moves the int8 weight into .state
            self.init_8bit_state()
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return _FrozenMatmul.apply(x, self, bias)


class FrozenNF4Linear(bnb.nn.Linear4bit):
    """A frozen Linear4bit that on the CPU dequantises (bitsandbytes' training function) on every CPU."""

    def dequantised(self, dtype: torch.dtype) -> torch.Tensor:
        state = self.weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):  # repacked by a bitsandbytes forward before the swap
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            self.weight.data, state = _convert_weight_packed_for_cpu_inverse(self.weight.data, state)
            self.weight.quant_state = state
        # A fresh tensor per call: bitsandbytes has no CPU `out=` variant of dequantize_4bit to reuse a buffer.
        w = bnb.functional.dequantize_4bit(self.weight.data, state)
        return w if w.dtype == dtype else w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        fix_4bit_weight_quant_state_from_module(self)
        dtype = x.dtype
        if self.compute_dtype is not None:  # as bitsandbytes: compute in compute_dtype, answer in x's dtype
            x = x.to(self.compute_dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return _FrozenMatmul.apply(x, self, bias).to(dtype)


_SWAPS = {bnb.nn.Linear8bitLt: FrozenInt8Linear, bnb.nn.Linear4bit: FrozenNF4Linear}


def use_frozen(model) -> int:
    """Swap every bitsandbytes Linear8bitLt / Linear4bit of `model` for its frozen class. Returns how many."""
    n = 0
    for module in model.modules():
        swap = _SWAPS.get(type(module))
        if swap is not None:
            module.__class__ = swap
            n += 1
    return n
