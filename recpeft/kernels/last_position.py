"""The last decoder block, computed at the last position only.

Scoring and the verbaliser losses read the final hidden state at one position (`logits_to_keep=1`;
left padding makes it the last one). Every block but the last must run at every position, since the
next block attends to all of them; in the last block, only the keys and values are needed everywhere.
Its query, attention output, output projection and MLP matter at the last position alone: on
SmolLM2-135M that is 94% of the block, 3% of a forward and backward pass.

`use_last_position(model)`, called by `recpeft.kernels.apply` when the base is loaded, swaps the last
block's class in place for a subclass (and its attention's for `fused.FusedLlamaAttention`, which can
query one position), so parameters, state-dict keys, hooks and adapters wrapped around its linears are
unchanged. Inside `last_position(model)` that block returns the one position ([batch, 1, hidden]) and
skips the rest; outside the context it runs the stock forward. The context narrows only a block
apply() prepared, so with the kernels switched off (RECPEFT_KERNELS=off) nothing is narrowed. The
block layout is Llama's (SmolLM2, Llama); any other block is left alone and computes everything,
which gives the same scores.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar

import torch

from recpeft.kernels._transformers import LlamaAttention, LlamaDecoderLayer
from recpeft.kernels.fused import ATTENTION, FusedLlamaAttention

_ACTIVE: ContextVar[bool] = ContextVar("recpeft_last_position", default=False)


class LastPositionLlamaLayer(LlamaDecoderLayer):
    """A LlamaDecoderLayer that, when called inside `last_position`, returns the last position only."""

    def __call__(self, *args, **kwargs):
        # Decided here, not in forward: under gradient checkpointing the backward pass re-runs forward
        # outside the caller's context, with the keyword arguments of this call.
        if _ACTIVE.get():
            kwargs["last_position_only"] = True
        return super().__call__(*args, **kwargs)

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, last_position_only=False,
                **kwargs):
        if not last_position_only:
            return super().forward(hidden_states, attention_mask=attention_mask,
                                   position_embeddings=position_embeddings, **kwargs)
        out, _ = self.self_attn(self.input_layernorm(hidden_states), attention_mask=attention_mask,
                                position_embeddings=position_embeddings, last_query_only=True, **kwargs)
        hidden = hidden_states[:, -1:] + out
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


def decoder_layers(model) -> list[torch.nn.Module]:
    """The decoder blocks (`model.model.layers` under a DDP or peft wrapper), or [] for another layout."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    get_base = getattr(inner, "get_base_model", None)  # peft; the Houlsby adapter edits the model in place
    base = get_base() if callable(get_base) else inner
    layers = getattr(getattr(base, "model", None), "layers", None)
    return list(layers) if isinstance(layers, torch.nn.ModuleList) else []


def _last_block(model) -> torch.nn.Module | None:
    layers = decoder_layers(model)
    return layers[-1] if layers else None


def use_last_position(model) -> bool:
    """Prepare the model's last block for `last_position` (a Llama block with stock or fused attention;
    any other is left alone). Returns whether the last block is now one that can be narrowed."""
    block = _last_block(model)
    if type(block) is LlamaDecoderLayer and type(block.self_attn) in (LlamaAttention, FusedLlamaAttention):
        block.self_attn.__class__ = FusedLlamaAttention  # the attention that can query one position
        block.__class__ = LastPositionLlamaLayer
    return isinstance(block, LastPositionLlamaLayer)


@contextlib.contextmanager
def last_position(model):
    """While active, the model's last block computes the last position only; the caller must read the
    final hidden state there alone (`logits_to_keep=1`, no hidden states returned). Yields whether the
    block is narrowed: False unless `use_last_position` prepared it (kernels off, a layout other than
    Llama's) or for an attention other than sdpa or eager."""
    block = _last_block(model)
    # Decided by the class apply() installed, never swapped here: the kernels switch covers narrowing too.
    if not (isinstance(block, LastPositionLlamaLayer) and isinstance(block.self_attn, FusedLlamaAttention)
            and block.self_attn.config._attn_implementation in ATTENTION):
        yield False
        return
    token = _ACTIVE.set(True)
    try:
        yield True
    finally:
        _ACTIVE.reset(token)
