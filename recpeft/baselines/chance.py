"""Seeded uniform random scores: the chance level every other baseline is measured against."""

from __future__ import annotations

import numpy as np

from recpeft.baselines.base import Baseline, FitContext
from recpeft.tasks.examples import Example, RankingExample


class Random(Baseline):
    name = "random"
    tasks = ("preference", "ranking", "rating", "profile")

    def fit(self, ctx: FitContext) -> None:
        self.rng = np.random.default_rng(ctx.seed)

    def score_preference(self, examples: list[Example]) -> list[float]:
        return self.rng.uniform(size=len(examples)).tolist()

    def score_rating(self, examples: list[Example]) -> list[float]:
        return self.rng.uniform(1, 5, size=len(examples)).tolist()

    def score_ranking(self, examples: list[RankingExample]) -> list[list[float]]:
        return [self.rng.uniform(size=len(e.candidates)).tolist() for e in examples]
