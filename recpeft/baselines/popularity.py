"""Popularity: train-period interaction counts (ranking), smoothed item like-rate or mean rating
(preference, rating). Not personalised: the floor any personalised model should clear."""

from __future__ import annotations

import math
from collections import Counter

from recpeft.baselines.base import Baseline, FitContext, value
from recpeft.data.schema import Interaction
from recpeft.tasks.examples import Example, RankingExample


class ItemStats:
    """Per-item interaction counts and value sums over a set of interactions, with a shrunk mean.

    `mean(item)` = (sum + prior_weight * global mean) / (count + prior_weight): an item seen once
    does not get a like-rate of 0 or 1. `without` removes one interaction's own contribution, so a
    training example's features never contain its own label.
    """

    def __init__(self, interactions: list[Interaction], task: str, prior_weight: float = 5.0):
        self.task = task
        self.count: Counter[str] = Counter()
        self.total: Counter[str] = Counter()
        for x in interactions:
            self.count[x.item_id] += 1
            self.total[x.item_id] += value(x, task)
        n = sum(self.count.values())
        self.global_mean = sum(self.total.values()) / n if n else (3.0 if task == "rating" else 0.5)
        self.prior_weight = prior_weight

    def mean(self, item: str, without: Interaction | None = None) -> float:
        count, total = self.count[item], self.total[item]
        if without is not None and without.item_id == item and count:
            count, total = count - 1, total - value(without, self.task)
        return (total + self.prior_weight * self.global_mean) / (count + self.prior_weight)

    def log_count(self, item: str, without: Interaction | None = None) -> float:
        own = 1 if without is not None and without.item_id == item and self.count[item] else 0
        return math.log1p(self.count[item] - own)


class Popularity(Baseline):
    name = "popularity"
    tasks = ("preference", "ranking", "rating", "profile")

    def fit(self, ctx: FitContext) -> None:
        # Ranking counts every train-period interaction; preference/rating use liked or the rating.
        self.stats = ItemStats(ctx.interactions, "rating" if ctx.task == "rating" else "preference")

    def score_preference(self, examples: list[Example]) -> list[float]:
        return [self.stats.mean(e.target.item_id) for e in examples]

    score_rating = score_preference

    def score_ranking(self, examples: list[RankingExample]) -> list[list[float]]:
        return [[float(self.stats.count[c]) for c in e.candidates] for e in examples]
