"""The trainable part of fusion: a projector from item vectors to soft input tokens, and the embedding
layer that places them.

Each item in a prompt is followed by `tokens` virtual token ids past the vocabulary (recpeft.fusion.tokens
writes them). The base model's input embedding is switched in place to `FusedEmbedding`: real ids are
looked up as before, and a virtual id's embedding is the projector's output for that item, row j of its
`tokens`. Everything downstream (attention masks, positions, the cached prefix's KV cache, DDP) sees
ordinary input ids; the one other path that knows of fusion is cached scoring, which hands the prefix's ids
to the history context (`prefix_context`). Written by hand because it is this wiring, not a
model: the projector itself is torch's Linear / MLP.

With context "history" an item's token also sees the items before it in the same prompt: the projector reads
[v, v * h], v the item's (standardised) vector and h the mean of the vectors of the items marked earlier in
the sequence, liked and disliked alike. The target, written last, so carries how it relates to the items
shown before it (experiments/sample_oracle.py: a logistic regression on [v, v * h] reaches 0.72 AUC on the
sample's test pairs, on v alone 0.58). It is causal, like the LM: a cached prefix's items are the context
of the suffix's (`prefix_context`), so cached and full scoring agree.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn


class ItemFusion(nn.Module):
    """Frozen item vectors (row 0: a learned 'unknown' vector for items without one) and the projector."""

    def __init__(self, vectors: torch.Tensor, hidden: int, tokens: int = 1, projector: str = "mlp",
                 scale: float = 1.0, context: str = "none", anchor: torch.Tensor | None = None):
        super().__init__()
        dim = vectors.shape[1]
        self.tokens, self.hidden, self.context = tokens, hidden, context
        inputs = 2 * dim if context == "history" else dim
        table = vectors.float().clone()  # a copy: a one-row table stays as given, not aliased
        # Standardised per dimension: ALS factors are ~0.1 and feature files anything, and the projector should
        # see inputs of unit scale whatever the source. The statistics come from the table itself, so a loaded
        # adapter recomputes exactly what training used.
        if len(table) > 1:
            table = (table - table.mean(0)) / table.std(0, unbiased=False).clamp_min(1e-6)
        self.register_buffer("table", table, persistent=False)
        self.unknown = nn.Parameter(torch.zeros(dim))
        out = tokens * hidden
        self.projector = (nn.Linear(inputs, out) if projector == "linear" else
                          nn.Sequential(nn.Linear(inputs, hidden), nn.GELU(), nn.Linear(hidden, out)))
        # Zero-initialised output (as LoRA's B): an untrained projector gives every item the same token, the
        # anchor below, so training starts from one plain word per item instead of from random embeddings. A
        # random init started the sample's validation AUC off the text model's and ended 0.07 below it (seed 42).
        last = self.projector if projector == "linear" else self.projector[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        # Adam moves every weight by about lr a step, so the output would move by ~lr x fan-in (576 inputs in the
        # MLP): the 1/sqrt(fan-in) readout multiplier makes that ~1% of a word a step at lr 1e-3, and
        # --fusion-lr-scale sets how far the tokens go (fusion_token_scale reports it).
        self.readout = 1.0 / math.sqrt(last.in_features)
        # the base model's own embedding scale, so a trained projector's tokens live where word embeddings do
        self.register_buffer("scale", torch.tensor(float(scale)))
        # The projector's output is added to an anchor: a word-like embedding (embedding_stats: the mean word
        # direction at the embeddings' RMS). Each layer RMS-normalises its input, so a bare token's size does
        # not matter, only its direction: a zero-started bare token is a full-size arbitrary direction from the
        # first step on, whatever the readout. Against an anchor, the projector's part is a perturbation whose
        # size (token_scale) means what it says. Zeros: adapters saved before the anchor (bare tokens).
        self.register_buffer("anchor", torch.zeros(hidden) if anchor is None else anchor.detach().float().clone())

    def vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """[*rows.shape, dim] the items' standardised vectors (row 0 = unknown item, r >= 1 = table row r - 1)."""
        known = self.table[(rows - 1).clamp(min=0)].to(self.unknown.dtype)  # a gather: no copy of the whole table
        return torch.where((rows > 0).unsqueeze(-1), known, self.unknown)

    def history(self, offsets: torch.Tensor) -> torch.Tensor:
        """[batch, seq, dim] for virtual-id offsets [batch, seq] (< 0: a real token): at each position, the
        mean vector of the items that start before the item there (zero when there are none)."""
        virtual = offsets >= 0
        start = virtual & (offsets % self.tokens == 0)
        v = self.vectors(offsets.clamp(min=0) // self.tokens)
        total, count = (v * start.unsqueeze(-1)).cumsum(1), start.cumsum(1)
        # The tokens of one item follow its start: all counted up to here but the item itself, when its start is
        # in the sequence (a prompt cut from the left may keep an item's last tokens only).
        back = torch.arange(offsets.shape[1], device=offsets.device) - offsets.clamp(min=0) % self.tokens
        own = virtual & (back >= 0) & start.gather(1, back.clamp(min=0))
        return (total - v * own.unsqueeze(-1)) / (count - own.long()).clamp(min=1).unsqueeze(-1)

    def forward(self, rows: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """[n, tokens, hidden] soft tokens for item rows (0 = unknown item, r >= 1 = table row r - 1); with
        context "history", `history` [n, dim] is each one's mean earlier item (None: no earlier item)."""
        x = self.vectors(rows)
        if self.context == "history":
            x = torch.cat([x, x * (torch.zeros_like(x) if history is None else history.to(x.dtype))], -1)
        out = (self.projector(x) * (self.scale * self.readout)).view(len(rows), self.tokens, self.hidden)
        return out + self.anchor.to(out.dtype)

    @torch.no_grad()
    def token_scale(self, limit: int = 4096) -> float:
        """RMS of the projector's part of the items' soft tokens (each item with another as its history) over the
        word embeddings' RMS: how far training moved them from the anchor (experiments/README.md (h))."""
        rows = torch.arange(1, min(len(self.table), limit) + 1, device=self.table.device)
        history = self.vectors(rows.roll(1)) if self.context == "history" else None
        moved = self(rows, history).float() - self.anchor
        return float(moved.pow(2).mean().sqrt() / self.scale.clamp_min(1e-12))


class FusedEmbedding(nn.Embedding):
    """An nn.Embedding whose ids past its vocabulary are items' soft tokens (see the module docstring).
    Installed by changing the class of the model's own embedding: its weight, and any tie to the LM head,
    stay as they were."""

    recpeft_fusion: ItemFusion | None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        virtual = ids >= self.num_embeddings
        if not virtual.any():
            return super().forward(ids)
        fusion = self.recpeft_fusion
        if fusion is None:
            raise RuntimeError("item soft tokens in the input, but no fusion module is active")
        out = super().forward(ids.masked_fill(virtual, 0))  # the model's own lookup (Gemma's scales it)
        history = None
        if fusion.context == "history":
            owner, prefix = _PREFIX.get()
            full = ids if owner is not self else torch.cat([prefix.to(ids.device), ids], 1)
            offsets = torch.where(full >= self.num_embeddings, full - self.num_embeddings, -1)
            history = fusion.history(offsets)[:, -ids.shape[1]:][virtual]
        offset = ids[virtual] - self.num_embeddings
        soft = fusion(torch.div(offset, fusion.tokens, rounding_mode="floor"), history)  # [n, tokens, hidden]
        picked = soft[torch.arange(len(offset), device=ids.device), offset % fusion.tokens]
        return out.masked_scatter(virtual.unsqueeze(-1), picked.to(out.dtype))


_FUSED: dict[type, type] = {nn.Embedding: FusedEmbedding}


def install(model, fusion: ItemFusion | None) -> FusedEmbedding:
    """Switch the model's input embedding to FusedEmbedding (once) and make `fusion` its active module. A
    subclass of nn.Embedding (Gemma's scaled embedding) gets a FusedEmbedding subclass of itself, so its
    own forward still does the lookup."""
    emb = model.get_input_embeddings()
    kind = type(emb)
    if not isinstance(emb, FusedEmbedding):
        if not issubclass(kind, nn.Embedding):
            raise TypeError(f"fusion needs an nn.Embedding input layer, found {kind.__name__}")
        if kind not in _FUSED:
            _FUSED[kind] = type(f"Fused{kind.__name__}", (FusedEmbedding, kind), {})
        emb.__class__ = _FUSED[kind]
    if fusion is not None:
        fusion.to(emb.weight.device)
    emb.recpeft_fusion = fusion  # a submodule: its parameters are the model's (trained, checkpointed, DDP-synced)
    return emb


# (embedding, [batch, prefix] ids) while a batch runs against a cached prefix: a ContextVar, as answer_rows and
# last_position use, so another thread's forward on the same model is not affected
_PREFIX: ContextVar[tuple[nn.Module | None, torch.Tensor | None]] = ContextVar("recpeft_fusion_prefix",
                                                                             default=(None, None))


@contextmanager
def prefix_context(model, prefix_ids: torch.Tensor):
    """While a batch runs against a cached prefix ([batch, prefix] ids, one row per batch row), fusion's
    history context counts the prefix's items too. A no-op for a model without fusion."""
    model = getattr(model, "module", model)  # DDP
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if get is not None else None
    if not isinstance(emb, FusedEmbedding):
        yield
        return
    token = _PREFIX.set((emb, prefix_ids))
    try:
        yield
    finally:
        _PREFIX.reset(token)


@torch.no_grad()
def embedding_stats(model) -> tuple[float, torch.Tensor]:
    """(scale, anchor) of the model's input embedding, from one pass over its first 8,192 ids: scale is the
    root-mean-square of its outputs (a model may scale its lookups, as Gemma does); anchor [hidden] is the
    mean word embedding's direction at that RMS, a generic word for soft tokens to start from and move away
    from (ItemFusion's anchor)."""
    words = _word_embeddings(model)
    scale, mean = words.pow(2).mean().sqrt(), words.mean(0)
    return float(scale), (mean * (scale / mean.pow(2).mean().sqrt().clamp_min(1e-12))).cpu()


def _word_embeddings(model) -> torch.Tensor:
    """The input embedding's outputs for the first 8,192 ids (through its own forward: Gemma scales them)."""
    emb = model.get_input_embeddings()
    ids = torch.arange(min(emb.num_embeddings, 8192), device=emb.weight.device)
    return emb(ids).float()
