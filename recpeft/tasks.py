"""Interactions -> supervised examples. Preference prediction, TALLRec protocol, temporal split.

Per user, interactions are sorted by time; the last `test_per_user` become test targets, the
`valid_per_user` before them validation targets, and the rest training targets. A target's history
is only what the user did before it, so no example ever looks into its own future.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from .data.schema import Interaction, RecData
from .prompts import PreferencePrompt

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Example:
    user_id: str
    split: str
    timestamp: int
    history: tuple[Interaction, ...]  # oldest first, all strictly before the target
    target: Interaction
    label: int  # 1 = liked / clicked

    def prompt(self, data: RecData, history_len: int) -> PreferencePrompt:
        recent = self.history[-history_len:] if history_len else ()
        return PreferencePrompt(
            liked=[data.items[x.item_id] for x in recent if x.liked],
            disliked=[data.items[x.item_id] for x in recent if not x.liked],
            target=data.items[self.target.item_id],
        )


def split_user(events: list[Interaction], valid_per_user: int, test_per_user: int) -> list[str]:
    """Split names for one user's time-sorted events: train ... valid ... test."""
    n = len(events)
    n_test = min(test_per_user, max(0, n - 1))
    n_valid = min(valid_per_user, max(0, n - 1 - n_test))
    return ["train"] * (n - n_valid - n_test) + ["valid"] * n_valid + ["test"] * n_test


def preference_examples(
    data: RecData, valid_per_user: int = 2, test_per_user: int = 2, min_history: int = 3
) -> dict[str, list[Example]]:
    by_user: dict[str, list[Interaction]] = defaultdict(list)
    for x in data.interactions:
        by_user[x.user_id].append(x)
    out: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for user in sorted(by_user):
        events = sorted(by_user[user], key=lambda x: (x.timestamp, x.item_id))
        for i, (x, split) in enumerate(zip(events, split_user(events, valid_per_user, test_per_user))):
            if i < min_history:
                continue
            out[split].append(Example(user, split, x.timestamp, tuple(events[:i]), x, int(x.liked)))
    return out


def subsample(examples: list[Example], n: int, seed: int) -> list[Example]:
    """A fixed, seeded subset (n = 0 keeps all), in the original order."""
    if n <= 0 or n >= len(examples):
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


@dataclass(frozen=True)
class RankingExample:
    """Leave-one-out next-item ranking: the true next item plus sampled negatives, scored pointwise."""

    user_id: str
    split: str
    timestamp: int
    history: tuple[Interaction, ...]  # oldest first, all strictly before the target
    candidates: tuple[str, ...]  # item ids; candidates[0] is the true next item, the rest negatives


def ranking_examples(data: RecData, negatives: int = 19, seed: int = 0, min_history: int = 3,
                     train_per_user: int = 0) -> dict[str, list[RankingExample]]:
    """Per user, by time: the last item is test, the one before it valid, earlier ones train.

    Negatives are drawn uniformly, without replacement, from items the user never interacted with,
    by an RNG seeded from (seed, user, position), so every scorer — LLM or baseline — sees exactly the
    same candidates. `train_per_user` > 0 keeps only each user's most recent training targets.
    """
    by_user: dict[str, list[Interaction]] = defaultdict(list)
    for x in data.interactions:
        by_user[x.user_id].append(x)
    all_items = sorted(data.items)
    out: dict[str, list[RankingExample]] = {s: [] for s in SPLITS}
    for user in sorted(by_user):
        events = sorted(by_user[user], key=lambda x: (x.timestamp, x.item_id))
        seen = {x.item_id for x in events}
        pool = [i for i in all_items if i not in seen]
        if len(pool) < negatives:
            continue
        splits = split_user(events, 1, 1)
        train_idx = [i for i, s in enumerate(splits) if s == "train" and i >= min_history]
        keep = set(train_idx[-train_per_user:] if train_per_user else train_idx)
        for i, (x, split) in enumerate(zip(events, splits)):
            if i < min_history or (split == "train" and i not in keep):
                continue
            rng = random.Random(f"{seed}/{user}/{i}")
            negs = tuple(rng.sample(pool, negatives))
            out[split].append(RankingExample(user, split, x.timestamp, tuple(events[:i]), (x.item_id,) + negs))
    return out
