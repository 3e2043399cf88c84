"""Interactions -> supervised examples. Preference prediction, TALLRec protocol, temporal split.

Per user, interactions are sorted by time; the last `test_per_user` become test targets, the
`valid_per_user` before them validation targets, and the rest training targets. A target's history
is only what the user did before it, so no example ever looks into its own future. Instruction
records (alpaca) have no users or time: instruction_splits splits them by file name or at random.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from dataclasses import dataclass

from recpeft.data.schema import Instruction, InstructionData, Interaction, Item, RecData
from recpeft.errors import UserError
from recpeft.tasks.prompts import PreferencePrompt

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
        liked, disliked = liked_disliked(data, self.history, history_len)
        return PreferencePrompt(liked=liked, disliked=disliked, target=data.items[self.target.item_id])


def liked_disliked(data: RecData, history: tuple[Interaction, ...], history_len: int) -> tuple[list, list]:
    """The items of the `history_len` most recent events (0 = none), split into liked and disliked."""
    recent = history[-history_len:] if history_len else ()
    return ([data.items[x.item_id] for x in recent if x.liked],
            [data.items[x.item_id] for x in recent if not x.liked])


def split_user(events: list[Interaction], valid_per_user: int, test_per_user: int) -> list[str]:
    """Split names for one user's time-sorted events: train ... valid ... test."""
    n = len(events)
    n_test = min(test_per_user, max(0, n - 1))
    n_valid = min(valid_per_user, max(0, n - 1 - n_test))
    return ["train"] * (n - n_valid - n_test) + ["valid"] * n_valid + ["test"] * n_test


def user_timelines(data: RecData) -> dict[str, list[Interaction]]:
    """Every user's interactions sorted by (time, item), users in sorted order."""
    by_user: dict[str, list[Interaction]] = defaultdict(list)
    for x in data.interactions:
        by_user[x.user_id].append(x)
    return {user: sorted(by_user[user], key=lambda x: (x.timestamp, x.item_id)) for user in sorted(by_user)}


def preference_examples(
    data: RecData, valid_per_user: int = 2, test_per_user: int = 2, min_history: int = 3
) -> dict[str, list[Example]]:
    out: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for user, events in user_timelines(data).items():
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
    all_items = sorted(data.items)
    out: dict[str, list[RankingExample]] = {s: [] for s in SPLITS}
    for user, events in user_timelines(data).items():
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


def train_item_counts(data: RecData) -> dict[str, int]:
    """How often each item occurs in the training part of the leave-one-out split (every user's events
    but the last two), i.e. what a model could have learnt about it before validation and test."""
    counts: dict[str, int] = defaultdict(int)
    for events in user_timelines(data).values():
        for x, split in zip(events, split_user(events, 1, 1)):
            if split == "train":
                counts[x.item_id] += 1
    return dict(counts)


def with_item_stats(data: RecData, min_count: int = 3, counted: list[Interaction] | None = None) -> RecData:
    """A copy of data whose item titles carry the item's like-rate among training events, "[72% liked]".

    Collaborative signal in words, for a model too small to infer item quality from titles alone.
    Only events in every user's training part of the preference split (all but their last 4) count,
    so no validation or test label leaks into any prompt; `counted` replaces them with other training
    events (the profile task's: its training users' interactions). Items with fewer than min_count
    such events get no tag: the rate would be noise.
    """
    if counted is None:
        counted = [x for events in user_timelines(data).values()
                   for x, split in zip(events, split_user(events, 2, 2)) if split == "train"]
    likes: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for x in counted:
        likes[x.item_id][0] += int(x.liked)
        likes[x.item_id][1] += 1
    items = {}
    for item_id, item in data.items.items():
        liked, n = likes.get(item_id, (0, 0))
        tag = f" [{round(100 * liked / n)}% liked]" if n >= min_count else ""
        items[item_id] = dataclasses.replace(item, title=item.title + tag)
    return dataclasses.replace(data, name=f"{data.name}+item-stats", items=items)


def cold_start(examples: list[RankingExample], counts: dict[str, int], max_count: int = 2) -> list[bool]:
    """Which ranking examples are cold-start: their true next item has <= max_count training interactions."""
    return [counts.get(ex.candidates[0], 0) <= max_count for ex in examples]


def item_categories(item: Item) -> list[str]:
    """An item's category labels (MovieLens genres, an Amazon category path, a MIND topic), deduplicated."""
    return list(dict.fromkeys(c.strip() for c in item.categories if c.strip()))


def top_categories(data: RecData, events: tuple[Interaction, ...] | list[Interaction], n: int = 3) -> list[str]:
    """The n categories most frequent among the liked events (ties: the more recent first)."""
    count: dict[str, int] = defaultdict(int)
    last: dict[str, int] = {}
    for pos, x in enumerate(events):
        if x.liked:
            for c in item_categories(data.items[x.item_id]):
                count[c] += 1
                last[c] = pos
    return sorted(count, key=lambda c: (-count[c], -last[c], c))[:n]


@dataclass(frozen=True)
class InterestsExample:
    """Interest discovery: a user's history, and the liked items of the period right after it."""

    user_id: str
    split: str
    history: tuple[Interaction, ...]  # oldest first
    future: tuple[Interaction, ...]  # the held-out window after the history (empty for training examples)

    def truth(self, data: RecData) -> set[str]:
        """Categories of the liked future items: what a good interest profile should name."""
        return {c for x in self.future if x.liked for c in item_categories(data.items[x.item_id])}


def interests_examples(data: RecData, window: int = 5, min_history: int = 3) -> dict[str, list[InterestsExample]]:
    """Per user, by time: the last `window` events are the test future (history = all before them),
    the `window` before those the validation future; every earlier position >= min_history is a
    training example (its target, top_categories of its history, is built by the task). Users whose
    evaluation window holds no liked item are left out of that split (nothing to recall)."""
    out: dict[str, list[InterestsExample]] = {s: [] for s in SPLITS}
    for user, timeline in user_timelines(data).items():
        events = tuple(timeline)
        cut = len(events) - 2 * window
        if cut < min_history:
            continue
        for split, start in (("valid", cut), ("test", cut + window)):
            ex = InterestsExample(user, split, events[:start], events[start:start + window])
            if ex.truth(data):
                out[split].append(ex)
        out["train"] += [InterestsExample(user, "train", events[:i], ()) for i in range(min_history, cut + 1)]
    return out


def instruction_splits(data: InstructionData, seed: int = 0) -> dict[str, list[Instruction]]:
    """Train / valid / test records of instruction data, as they are.

    Records from files named train / valid / test keep that split (TALLRec's layout); with no valid
    file, a seeded 10% of train validates. Data with no split names at all is split 80/10/10,
    seeded. Some records named and others not is an error: the split of the rest would be a guess.
    """
    named = [x for x in data.examples if x.split is not None]
    if not named:
        order = list(range(len(data.examples)))
        random.Random(seed).shuffle(order)
        k = max(1, round(len(order) / 10)) if len(order) >= 3 else 0
        parts = {"valid": order[:k], "test": order[k:2 * k], "train": order[2 * k:]}
        return {name: [data.examples[i] for i in sorted(idx)] for name, idx in parts.items()}
    if len(named) < len(data.examples):
        stray = next(x for x in data.examples if x.split is None)
        raise UserError("this file's name is not train / valid / test while other files' are; name every file "
                        "by its split, or pass one file", stray.source.rsplit(":", 1)[0])
    splits = {name: data.split(name) for name in ("train", "valid", "test")}
    if not splits["valid"] and len(splits["train"]) >= 2:
        held = set(random.Random(seed).sample(range(len(splits["train"])), max(1, round(len(splits["train"]) / 10))))
        splits["valid"] = [x for i, x in enumerate(splits["train"]) if i in held]
        splits["train"] = [x for i, x in enumerate(splits["train"]) if i not in held]
    return splits
