"""Item-kNN: cosine similarity between items' train-period user vectors (scikit-learn).

Ranking scores a candidate by its summed similarity to the items in the visible history (ties, such
as items never co-consumed with the history, broken by popularity). Preference and rating predict
item-kNN with baselines: the target's shrunk mean, plus the user's offset from item means, plus the
similarity-weighted residuals of the history items.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from sklearn.metrics.pairwise import cosine_similarity

from recpeft.baselines.base import Baseline, FitContext, value
from recpeft.baselines.popularity import ItemStats
from recpeft.tasks.examples import Example, RankingExample


class ItemKNN(Baseline):
    name = "item_knn"
    tasks = ("preference", "ranking", "rating")

    def __init__(self, shrink: float = 1.0, user_shrink: float = 2.0):
        self.shrink = shrink  # added to the similarity mass: few weak neighbours say little
        self.user_shrink = user_shrink

    def fit(self, ctx: FitContext) -> None:
        self.ctx = ctx
        users = {u: i for i, u in enumerate(sorted({x.user_id for x in ctx.interactions}))}
        pairs = {(users[x.user_id], ctx.index[x.item_id]) for x in ctx.interactions}
        rows, cols = zip(*sorted(pairs)) if pairs else ((), ())
        matrix = csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                            shape=(len(users), len(ctx.item_ids)))
        self.sim = cosine_similarity(matrix.T, dense_output=True).astype(np.float32)  # items x items
        np.fill_diagonal(self.sim, 0.0)
        counts = np.asarray(matrix.sum(axis=0)).ravel()
        self.tiebreak = 1e-6 * counts / max(1.0, counts.max())
        self.stats = ItemStats(ctx.interactions, "rating" if ctx.task == "rating" else "preference")

    def score_ranking(self, examples: list[RankingExample]) -> list[list[float]]:
        out = []
        for e in examples:
            hist = [self.ctx.index[x.item_id] for x in self.ctx.recent(e)]
            cands = [self.ctx.index[c] for c in e.candidates]
            score = self.sim[np.ix_(hist, cands)].sum(axis=0) if hist else np.zeros(len(cands))
            out.append((score + self.tiebreak[cands]).tolist())
        return out

    def _predict(self, e: Example) -> float:
        task = self.ctx.task
        hist = self.ctx.recent(e)
        base = {x.item_id: self.stats.mean(x.item_id) for x in hist}
        resid = np.array([value(x, task) - base[x.item_id] for x in hist])
        offset = resid.sum() / (len(hist) + self.user_shrink) if hist else 0.0
        target = self.ctx.index[e.target.item_id]
        weights = self.sim[[self.ctx.index[x.item_id] for x in hist], target] if hist else np.zeros(0)
        neighbour = float(weights @ (resid - offset)) / (float(weights.sum()) + self.shrink) if hist else 0.0
        return self.stats.mean(e.target.item_id) + offset + neighbour

    def score_preference(self, examples: list[Example]) -> list[float]:
        return [float(np.clip(self._predict(e), 1e-4, 1 - 1e-4)) for e in examples]

    def score_rating(self, examples: list[Example]) -> list[float]:
        return [float(np.clip(self._predict(e), 1.0, 5.0)) for e in examples]
