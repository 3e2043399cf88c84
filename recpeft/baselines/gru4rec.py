"""A small GRU4Rec-style sequential model in torch (seeded, CPU-sized).

Ranking: a GRU reads a user's train-period item sequence and learns to predict every next item
(full softmax over the catalogue, output embeddings tied to the input ones); a candidate's score
is its embedding dotted with the state after the visible history.
Preference / rating (TALLRec's adaptation of sequential recommenders): the GRU reads the visible
history with each item's feedback (liked/disliked, or its rating) and a small head scores the
target from [state, target, state * target]; trained on the supervised training examples only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from recpeft.baselines.base import Baseline, FitContext, label
from recpeft.data.schema import Interaction
from recpeft.tasks.examples import Example, RankingExample


class _GRU(nn.GRU):
    """The sequence encoder: (batch, time, dim) inputs -> states; right padding never reaches earlier positions."""

    def __init__(self, dim: int):
        super().__init__(dim, dim, batch_first=True)

    def forward(self, x: torch.Tensor, items: torch.Tensor) -> torch.Tensor:  # items: which positions pad (0)
        return super().forward(x)[0]


class _Net(nn.Module):
    def __init__(self, n_items: int, dim: int, dropout: float, encoder: Callable[[], nn.Module]):
        super().__init__()
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=0)  # item index + 1; 0 pads
        self.feedback = nn.Embedding(8, dim, padding_idx=0)  # 0: none, 1-2: disliked/liked, 3-7: rating 1-5
        self.encoder = encoder()  # _GRU, or SASRec's causal transformer
        self.drop = nn.Dropout(dropout)
        self.head = nn.Sequential(nn.Linear(3 * dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def states(self, items: torch.Tensor, feedback: torch.Tensor) -> torch.Tensor:
        """(batch, time, dim) states; the state at position t depends only on the items at positions <= t."""
        return self.encoder(self.drop(self.item(items) + self.feedback(feedback)), items)

    def last(self, items: torch.Tensor, feedback: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.states(items, feedback)[torch.arange(len(items)), lengths - 1]

    def pointwise(self, state: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = self.item(target)
        return self.head(torch.cat([state, t, state * t], dim=-1)).squeeze(-1)


class GRU4Rec(Baseline):
    name = "gru4rec"
    tasks = ("preference", "ranking", "rating")

    def __init__(self, dim: int = 64, epochs: int = 8, pointwise_epochs: int = 2, batch_size: int = 128,
                 lr: float = 3e-3, weight_decay: float = 1e-5, dropout: float = 0.2, max_len: int = 50,
                 min_steps: int = 300):
        # epochs: next-item passes over the train sequences (ranking); pointwise_epochs: passes over
        # the supervised examples (preference/rating); either is stretched to at least min_steps updates.
        self.dim, self.epochs, self.pointwise_epochs, self.batch_size, self.lr = (
            dim, epochs, pointwise_epochs, batch_size, lr)
        self.weight_decay, self.dropout, self.max_len, self.min_steps = weight_decay, dropout, max_len, min_steps

    def _encoder(self) -> nn.Module:
        """The sequence encoder _Net runs over the embedded items (SASRec swaps in a transformer)."""
        return _GRU(self.dim)

    def _recent(self, example: Example | RankingExample) -> tuple[Interaction, ...]:
        """The history the model reads to score an example."""
        return self.ctx.recent(example)

    def _feedback(self, x: Interaction) -> int:
        if self.ctx.task == "rating":
            return 2 + int(round(x.rating)) if x.rating is not None else 0
        return 0 if self.ctx.task == "ranking" else 1 + int(x.liked)

    def _batch(self, histories: list[tuple[Interaction, ...]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([max(1, len(h)) for h in histories])
        items = torch.zeros(len(histories), int(lengths.max()), dtype=torch.long)
        feedback = torch.zeros_like(items)
        for row, h in enumerate(histories):
            items[row, :len(h)] = torch.tensor([self.ctx.index[x.item_id] + 1 for x in h], dtype=torch.long)
            feedback[row, :len(h)] = torch.tensor([self._feedback(x) for x in h], dtype=torch.long)
        return items, feedback, lengths

    def fit(self, ctx: FitContext) -> None:
        self.ctx = ctx
        with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's RNG
            torch.manual_seed(ctx.seed)
            self.net = _Net(len(ctx.item_ids), self.dim, self.dropout, self._encoder)
            opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            self.net.train()
            if ctx.task == "ranking":
                self._fit_next_item(opt)
            else:
                self._fit_pointwise(opt)
            self.net.eval()

    def _epochs(self, epochs: int, n: int) -> int:
        return max(epochs, math.ceil(self.min_steps / math.ceil(n / self.batch_size)))

    def _fit_next_item(self, opt: torch.optim.Optimizer) -> None:
        windows = []
        for events in self.ctx.sequences().values():
            for start in range(0, max(1, len(events) - 1), self.max_len):
                w = events[start:start + self.max_len + 1]
                if len(w) >= 2:
                    windows.append(tuple(w))
        if not windows:
            return
        items, feedback, _ = self._batch(windows)
        for _ in range(self._epochs(self.epochs, len(windows))):
            for idx in torch.randperm(len(windows)).split(self.batch_size):
                width = int((items[idx] > 0).sum(1).max())  # trim the batch's all-padding tail
                batch, fb = items[idx, :width], feedback[idx, :width]
                states = self.net.states(batch[:, :-1], fb[:, :-1])
                logits = states @ self.net.item.weight[1:].T
                targets = batch[:, 1:] - 1  # padding becomes -1, ignored
                loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                   ignore_index=-1)
                opt.zero_grad()
                loss.backward()
                opt.step()

    def _fit_pointwise(self, opt: torch.optim.Optimizer) -> None:
        train = self.ctx.train
        if not train:
            return
        rating = self.ctx.task == "rating"
        y = torch.tensor([label(e, self.ctx.task) for e in train])
        encoded = self._encode(train)
        for _ in range(self._epochs(self.pointwise_epochs, len(train))):
            for idx in torch.randperm(len(train)).split(self.batch_size):
                out = self._pointwise(*(t[idx] for t in encoded))
                loss = (nn.functional.mse_loss(out + 3.0, y[idx]) if rating
                        else nn.functional.binary_cross_entropy_with_logits(out, y[idx]))
                opt.zero_grad()
                loss.backward()
                opt.step()

    def _encode(self, examples: list[Example]) -> tuple[torch.Tensor, ...]:
        items, feedback, lengths = self._batch([self._recent(e) for e in examples])
        return items, feedback, lengths, torch.tensor([self.ctx.index[e.target.item_id] + 1 for e in examples])

    def _pointwise(self, items: torch.Tensor, feedback: torch.Tensor, lengths: torch.Tensor,
                   target: torch.Tensor) -> torch.Tensor:
        return self.net.pointwise(self.net.last(items, feedback, lengths), target)

    @torch.no_grad()
    def _chunks(self, examples, fn) -> list:
        out: list = []
        for start in range(0, len(examples), 512):
            out += fn(examples[start:start + 512])
        return out

    def score_preference(self, examples: list[Example]) -> list[float]:
        return self._chunks(examples, lambda xs: torch.sigmoid(self._pointwise(*self._encode(xs))).tolist())

    def score_rating(self, examples: list[Example]) -> list[float]:
        return self._chunks(examples, lambda xs: (self._pointwise(*self._encode(xs)) + 3.0).clamp(1, 5).tolist())

    def score_ranking(self, examples: list[RankingExample]) -> list[list[float]]:
        def score(xs: list[RankingExample]) -> list[list[float]]:
            state = self.net.last(*self._batch([self._recent(e) for e in xs]))
            cands = self.net.item(torch.tensor([[self.ctx.index[c] + 1 for c in e.candidates] for e in xs]))
            return (cands @ state.unsqueeze(-1)).squeeze(-1).tolist()
        return self._chunks(examples, score)
