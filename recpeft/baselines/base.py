"""What every baseline gets to fit on, and the interface it implements.

A baseline fits on a `FitContext` (the train period's interactions and the supervised training
examples, nothing later) and then scores examples: a like probability per preference example, a
rating per rating example, or one score per candidate for a ranking example (true item first).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from recpeft.data.schema import Interaction, RecData
from recpeft.tasks.examples import Example, RankingExample, split_user, user_timelines
from recpeft.tasks.profiles import ProfileExample, training_users_interactions

TASKS = ("preference", "ranking", "rating", "profile")
# the choice task asks about the ranking task's very lists (recpeft/tasks/choice.py): its baselines are ranking's
SCORED_AS = {"choice": "ranking"}
# Events per user each protocol holds out (valid, test), as recpeft.tasks.examples builds them.
# choice ranks the ranking task's lists; interests holds out two windows of 5 (tasks.examples.interests_examples).
HOLDOUT = {"preference": (2, 2), "rating": (2, 2), "ranking": (1, 1), "choice": (1, 1), "interests": (5, 5)}


def train_interactions(data: RecData, task: str) -> list[Interaction]:
    """Every interaction in its user's train period (before any valid/test target of the task's split);
    for the profile task, every interaction of its training users."""
    if task == "profile":
        return training_users_interactions(data)
    out: list[Interaction] = []
    for events in user_timelines(data).values():
        out += [x for x, s in zip(events, split_user(events, *HOLDOUT[task])) if s == "train"]
    return out


def target_item(example: Example | RankingExample | ProfileExample) -> str:
    return example.candidates[0] if hasattr(example, "candidates") else example.target.item_id


def cold_slice(examples: list, train: list[Interaction], max_train: int = 2) -> list:
    """The examples whose target item has at most `max_train` interactions in the train period. For
    ranking this is recpeft.tasks.examples.cold_start with train_item_counts (the LLM's slice); it also
    serves preference/rating, whose train period ends two events earlier."""
    counts = Counter(x.item_id for x in train)
    return [e for e in examples if counts[target_item(e)] <= max_train]


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
    profile_from: str = "demographics+genres"  # the profile task: what a held-out user's profile says
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
