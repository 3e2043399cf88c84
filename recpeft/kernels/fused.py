"""Llama's RMSNorm and rotary embeddings with closed-form backward passes.

In Hugging Face's eager Llama code, autograd differentiates RMSNorm and the rotary embedding op by
op: the norm's backward walks pow, mean, rsqrt and two products (seven passes over the activations),
and the rotary's `rotate_half` (two slices, a negation, a concatenation) comes back as zero-filled
buffers, copies and adds. On a CPU these element-wise passes were most of the step time that is not
a matmul. Written out by hand, each backward is a few passes:

- RMSNorm y = w·x·r, r = (mean(x²) + eps)^-½:  dx = r·(g·w) − x·r³·mean(g·w·x)
- rotary y = x·cos + rotate_half(x)·sin (cos and sin repeat across the two halves): dx is the same
  rotation backwards, g·cos − rotate_half(g)·sin, and nothing but cos and sin is saved.

`use_fused(model)`, called by `recpeft.kernels.apply`, swaps the classes of a model's LlamaRMSNorm and
LlamaAttention modules for subclasses that use these (in place: parameters, state-dict keys and hooks
are unchanged). The forward results are the same as transformers' (the norm's bit for bit); gradients
agree to float rounding. Only fp32 activations take the hand-written norm: bf16 ones keep
transformers' code, which computes the norm in fp32 and rounds it back.
"""

from __future__ import annotations

import torch

from recpeft.kernels._transformers import (
    LlamaAttention,
    LlamaRMSNorm,
    available,
    eager_attention_forward,
    rotate_half,
    sdpa_attention_forward,
)

# The attention implementations FusedLlamaAttention calls itself; none when transformers' internals moved.
ATTENTION = {"sdpa": sdpa_attention_forward, "eager": eager_attention_forward} if available() else {}


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, rstd, weight)
        return (x * rstd).mul_(weight)

    @staticmethod
    def backward(ctx, grad):
        x, rstd, weight = ctx.saved_tensors
        gw = grad * weight
        dx = dw = None
        if ctx.needs_input_grad[0]:
            coef = (gw * x).sum(-1, keepdim=True).mul_(rstd.pow(3)).div_(x.shape[-1])
            dx = torch.addcmul(gw.mul_(rstd), x, coef, value=-1)
        if ctx.needs_input_grad[1]:
            dw = (grad * x * rstd).reshape(-1, x.shape[-1]).sum(0)
        return dx, dw, None


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, -sin), None, None


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [batch, heads, length, head_dim] rotated by cos, sin [batch, 1, length, head_dim] (no gradient
    to cos and sin: they are functions of the positions only)."""
    return _Rotary.apply(x, cos.detach(), sin.detach())


class FusedRMSNorm(LlamaRMSNorm):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.dtype != torch.float32 or self.weight.dtype != torch.float32:
            return super().forward(hidden_states)
        return _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)


class FusedLlamaAttention(LlamaAttention):
    """transformers' LlamaAttention.forward with the rotary embedding above. With last_query_only
    (recpeft.kernels.last_position), only the last position queries: keys and values still come from all."""

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, last_query_only=False,
                **kwargs):
        attention = ATTENTION.get(self.config._attn_implementation)
        if attention is None:  # switched to another implementation after loading (never narrowed then)
            return super().forward(hidden_states, position_embeddings, attention_mask, **kwargs)
        cache = pop_cache(kwargs)
        queries = slice(-1, None) if last_query_only else slice(None)
        # contiguous: on a strided view, matmul picks its kernel by whether the weight requires grad, so a
        # trained adapter and the same adapter reloaded frozen would round differently
        query_states = hidden_states[:, queries].contiguous()
        query = self.q_proj(query_states).view(*query_states.shape[:-1], -1, self.head_dim).transpose(1, 2)
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        cos, sin = (t.unsqueeze(1) for t in position_embeddings)
        query, key = rotary(query, cos[:, :, queries], sin[:, :, queries]), rotary(key, cos, sin)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
        if attention_mask is not None:
            attention_mask = attention_mask[:, :, queries]  # the querying rows
        out, weights = attention(self, query, key, value, attention_mask,
                                 dropout=self.attention_dropout if self.training else 0.0, scaling=self.scaling,
                                 **kwargs)
        return self.o_proj(out.reshape(*query_states.shape[:-1], -1).contiguous()), weights


def pop_cache(kwargs: dict):
    """The KV cache argument, under its current name (`cache`) or the one transformers 5 deprecated
    (`past_key_values`)."""
    cache = kwargs.pop("cache", None)
    legacy = kwargs.pop("past_key_values", None)
    return cache if cache is not None else legacy


def use_fused(model) -> int:
    """Swap the model's LlamaRMSNorm and LlamaAttention modules (exact types only: a subclass or another
    family is left as it is) for the fused ones. Attention is swapped only for sdpa or eager. Returns
    how many modules were swapped."""
    swapped = 0
    for module in model.modules():
        if type(module) is LlamaRMSNorm:
            module.__class__ = FusedRMSNorm
        elif type(module) is LlamaAttention and module.config._attn_implementation in ATTENTION:
            module.__class__ = FusedLlamaAttention
        else:
            continue
        swapped += 1
    return swapped
