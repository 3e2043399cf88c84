"""BPR matrix factorisation (Rendle et al. 2009) in torch, seeded: user and item embeddings trained
so that each train-period interaction outscores a uniformly sampled item. Ranking only."""

from __future__ import annotations

import torch

from recpeft.baselines.base import Baseline, FitContext
from recpeft.tasks.examples import RankingExample


class BPR(Baseline):
    name = "bpr"
    tasks = ("ranking",)

    def __init__(self, dim: int = 32, epochs: int = 30, batch_size: int = 1024, lr: float = 0.01,
                 weight_decay: float = 1e-5):
        self.dim, self.epochs, self.batch_size, self.lr, self.weight_decay = dim, epochs, batch_size, lr, weight_decay

    def fit(self, ctx: FitContext) -> None:
        self.ctx = ctx
        self.users = {u: i for i, u in enumerate(sorted({x.user_id for x in ctx.interactions}))}
        gen = torch.Generator().manual_seed(ctx.seed)
        n_users, n_items = len(self.users), len(ctx.item_ids)
        self.user_emb = torch.nn.Parameter(torch.randn(n_users + 1, self.dim, generator=gen) * 0.1)  # +1: unknown user
        self.item_emb = torch.nn.Parameter(torch.randn(n_items, self.dim, generator=gen) * 0.1)
        pairs = torch.tensor(sorted({(self.users[x.user_id], ctx.index[x.item_id]) for x in ctx.interactions}),
                             dtype=torch.long).reshape(-1, 2)
        opt = torch.optim.Adam([self.user_emb, self.item_emb], lr=self.lr)
        for _ in range(self.epochs if len(pairs) else 0):
            order = torch.randperm(len(pairs), generator=gen)
            negatives = torch.randint(n_items, (len(pairs),), generator=gen)
            for start in range(0, len(pairs), self.batch_size):
                idx = order[start:start + self.batch_size]
                u, pos, neg = self.user_emb[pairs[idx, 0]], self.item_emb[pairs[idx, 1]], self.item_emb[negatives[idx]]
                margin = (u * (pos - neg)).sum(-1)
                reg = self.weight_decay * (u.pow(2).sum() + pos.pow(2).sum() + neg.pow(2).sum()) / len(idx)
                loss = -torch.nn.functional.logsigmoid(margin).mean() + reg
                opt.zero_grad()
                loss.backward()
                opt.step()

    @torch.no_grad()
    def score_ranking(self, examples: list[RankingExample]) -> list[list[float]]:
        out = []
        for e in examples:
            # A user with no train period (never the case under min_history) gets the zero-ish extra row.
            u = self.user_emb[self.users.get(e.user_id, len(self.users))]
            cands = torch.tensor([self.ctx.index[c] for c in e.candidates])
            out.append((self.item_emb[cands] @ u).tolist())
        return out
