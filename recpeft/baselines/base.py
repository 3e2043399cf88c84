"""What every baseline gets to fit on, and the interface it implements.

A baseline fits on a `FitContext` (the train period's interactions and the supervised training
examples, nothing later) and then scores examples: a like probability per preference example, a
rating per rating example, or one score per candidate for a ranking example (true item first).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ..data.schema import Interaction, Item, RecData
from ..tasks import Example, RankingExample

TASKS = ("preference", "ranking", "rating")


@dataclass
class FitContext:
    """Everything a baseline may learn from.

    `interactions` is the train period visible to the model (for few-shot preference: only the
    sampled training examples' targets and visible histories); `train` holds the supervised
    examples. `history_len` is how much of a history a model may read when it scores (0 = all),
    the same window the LLM's prompt shows.
    """

    data: RecData
    task: str
    interactions: list[Interaction]
    train: list[Example] | list[RankingExample]
    history_len: int = 10
    seed: int = 0
    item_ids: list[str] = field(init=False)
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.item_ids = sorted(self.data.items)
        self.index = {item: i for i, item in enumerate(self.item_ids)}

    def recent(self, example: Example | RankingExample) -> tuple[Interaction, ...]:
        """The part of an example's history a model may read: its last `history_len` events."""
        return example.history[-self.history_len:] if self.history_len else example.history

    def sequences(self) -> dict[str, list[Interaction]]:
        """The train-period interactions per user, oldest first."""
        out: dict[str, list[Interaction]] = defaultdict(list)
        for x in sorted(self.interactions, key=lambda x: (x.user_id, x.timestamp, x.item_id)):
            out[x.user_id].append(x)
        return dict(out)


def value(x: Interaction, task: str) -> float:
    """What a preference/rating model predicts for an interaction: liked (0/1) or the rating."""
    if task == "rating":
        return float(x.rating)  # rating examples are filtered to rated targets upstream
    return float(x.liked)


def label(example: Example, task: str) -> float:
    return value(example.target, task)


def categories(item: Item) -> list[str]:
    """An item's category labels (MovieLens genres, an Amazon category path, a MIND topic)."""
    return list(item.categories)


class Baseline:
    """Interface: set `name` and `tasks`, implement `fit` and the `score_*` methods of those tasks."""

    name: str = ""
    tasks: tuple[str, ...] = ()
    note: str = ""  # set by fit when something about the fit should be reported with the metrics

    def fit(self, ctx: FitContext) -> None:
        raise NotImplementedError

    def score_preference(self, examples: list[Example]) -> list[float]:
        """Probability that the user likes each example's target."""
        raise NotImplementedError

    def score_rating(self, examples: list[Example]) -> list[float]:
        """Predicted 1-5 rating of each example's target."""
        raise NotImplementedError

    def score_ranking(self, examples: list[RankingExample]) -> list[list[float]]:
        """One score per candidate (higher = more likely the next item), in candidate order."""
        raise NotImplementedError
