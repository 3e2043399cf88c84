"""Evaluation slices shared by the LLM and the baselines: the train period and the cold-start slice.

Both follow the per-user temporal split of recpeft.tasks: a user's last `test_per_user` events are
test targets, the `valid_per_user` before them validation targets, and everything earlier is the
train period, which is all any model may fit on.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from .data.schema import Interaction, RecData
from .tasks import Example, RankingExample, split_user

# How many events per user each protocol holds out (valid, test): the builders' defaults.
HOLDOUT = {"preference": (2, 2), "ranking": (1, 1)}


def protocol_of(examples: list[Example] | list[RankingExample]) -> str:
    """'ranking' for leave-one-out ranking examples, 'preference' for (user, target) examples."""
    return "ranking" if examples and isinstance(examples[0], RankingExample) else "preference"


def train_interactions(data: RecData, valid_per_user: int, test_per_user: int) -> list[Interaction]:
    """Every interaction in its user's train period (before any valid/test target), sorted by user and time."""
    by_user: dict[str, list[Interaction]] = defaultdict(list)
    for x in data.interactions:
        by_user[x.user_id].append(x)
    out: list[Interaction] = []
    for user in sorted(by_user):
        events = sorted(by_user[user], key=lambda x: (x.timestamp, x.item_id))
        out += [x for x, s in zip(events, split_user(events, valid_per_user, test_per_user)) if s == "train"]
    return out


def target_item(example: Example | RankingExample) -> str:
    return example.candidates[0] if isinstance(example, RankingExample) else example.target.item_id


def cold_start(examples: list[Example] | list[RankingExample], data: RecData, max_train: int = 2,
               valid_per_user: int | None = None, test_per_user: int | None = None) -> list:
    """The examples whose target item has at most `max_train` interactions in the train period.

    The hold-out sizes default to the protocol the examples come from (ranking: 1 + 1, preference: 2 + 2);
    pass them when the examples were built with other sizes.
    """
    default_valid, default_test = HOLDOUT[protocol_of(examples)]
    counts = Counter(x.item_id for x in train_interactions(
        data, default_valid if valid_per_user is None else valid_per_user,
        default_test if test_per_user is None else test_per_user))
    return [e for e in examples if counts[target_item(e)] <= max_train]
