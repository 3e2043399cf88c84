"""TALLRec's classical feature baseline: logistic regression (preference) or ridge regression
(rating) on item and history features, scikit-learn.

Features of a (user, target) example: the target's shrunk like-rate (or mean rating) and log count
in the fitted train period, the user's like-rate over the visible history and over the history items
sharing a category with the target (shrunk, plus how many there are), and the target's category
one-hots. A training example's own label is taken out of its item's statistics (leave-one-out).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from recpeft.baselines.base import Baseline, FitContext, label, value
from recpeft.baselines.popularity import ItemStats
from recpeft.tasks.examples import Example
from recpeft.tasks.examples import item_categories as categories


class LogReg(Baseline):
    name = "logreg"
    tasks = ("preference", "rating")

    def __init__(self, max_categories: int = 50, prior_weight: float = 2.0, C: float = 1.0):
        self.max_categories, self.prior_weight, self.C = max_categories, prior_weight, C

    def fit(self, ctx: FitContext) -> None:
        self.ctx = ctx
        self.stats = ItemStats(ctx.interactions, ctx.task)
        freq = Counter(c for x in ctx.interactions for c in categories(ctx.data.items[x.item_id]))
        self.vocab = {c: i for i, (c, _) in enumerate(sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))
                                                        [:self.max_categories])}
        self.constant, self.note = None, ""
        y = np.array([label(e, ctx.task) for e in ctx.train])
        if ctx.task == "preference" and len(set(y.tolist())) < 2:
            # A tiny few-shot sample can hold one class only: predict its shrunk rate, and say so.
            self.constant = (y.sum() + 1) / (len(y) + 2)
            self.note = f"all {len(y)} training labels are {int(y[0])}: constant prediction"
            return
        if not len(y):
            self.constant = self.stats.global_mean
            return
        model = Ridge(alpha=1.0) if ctx.task == "rating" else LogisticRegression(C=self.C, max_iter=2000)
        self.model = make_pipeline(StandardScaler(), model)
        self.model.fit(self.features(ctx.train, leave_out=True), y)

    def features(self, examples: list[Example], leave_out: bool = False) -> np.ndarray:
        task, items = self.ctx.task, self.ctx.data.items
        g, w = self.stats.global_mean, self.prior_weight
        rows = np.zeros((len(examples), 6 + len(self.vocab)))
        for r, e in enumerate(examples):
            own = e.target if leave_out else None
            hist = self.ctx.recent(e)
            target_cats = set(categories(items[e.target.item_id]))
            same = [value(x, task) for x in hist if target_cats & set(categories(items[x.item_id]))]
            values = [value(x, task) for x in hist]
            rows[r, :6] = [self.stats.mean(e.target.item_id, own), self.stats.log_count(e.target.item_id, own),
                           (sum(values) + w * g) / (len(values) + w), (sum(same) + w * g) / (len(same) + w),
                           len(same), len(values)]
            for c in target_cats:
                if c in self.vocab:
                    rows[r, 6 + self.vocab[c]] = 1.0
        return rows

    def score_preference(self, examples: list[Example]) -> list[float]:
        if self.constant is not None:
            return [float(self.constant)] * len(examples)
        return self.model.predict_proba(self.features(examples))[:, 1].tolist()

    def score_rating(self, examples: list[Example]) -> list[float]:
        if self.constant is not None:
            return [float(self.constant)] * len(examples)
        return np.clip(self.model.predict(self.features(examples)), 1, 5).tolist()
