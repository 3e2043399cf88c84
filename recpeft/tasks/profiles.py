"""Cold-start users described in words: profile texts, and the held-out-user split of the profile task.

A profile is what a new user can say about themselves before they have any history, e.g.
"I am a 24-year-old man; occupation: technician. I like Sci-Fi, Action and Thriller." It is built from
structured fields (`render_profile`: age, gender, occupation, likes) or given as free text. Training
renders each training user's profile with the same function that renders a structured profile at
serving time, so an adapter reads the same wording in both.

The profile task's split is by user, not by time: a user is a training, validation or test user by a
hash of their id (fixed, so every seed evaluates the same users, and the same users whatever the data
file's order). Test users contribute nothing to training. For every user, the profile is made from
their demographics (MovieLens u.user) and the categories of their first `profile_items` events, which
stand for what the user says they like; the targets come after those events:
- a training user gives one example per liked event after the first k, with seeded negatives;
- a validation or test user gives one example: their first liked event after the first k, against
  negatives drawn by an RNG seeded by the user alone (the same candidates for every training seed).
Negatives are items the user never interacted with, as in `ranking_examples`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recpeft.data.schema import Interaction, RecData
from recpeft.errors import UserError
from recpeft.tasks.examples import SPLITS, top_categories, user_timelines

PROFILE_FIELDS = ("age", "gender", "occupation", "likes")
PROFILE_SOURCES = ("demographics+genres", "demographics", "genres")
SHARES = {"valid": 0.10, "test": 0.35}  # of users; 342 test users on ML-100k (943 users)
LIKES_SHOWN = 3
_GENDERS = {"m": "man", "male": "man", "man": "man", "f": "woman", "female": "woman", "woman": "woman"}
_SILENT_OCCUPATIONS = {"", "none", "other"}  # say nothing rather than "occupation: none"


def user_split(user_id: str) -> str:
    """'train', 'valid' or 'test' for a user, from a hash of the id alone."""
    u = int(hashlib.sha256(f"recpeft/profile-users/{user_id}".encode()).hexdigest()[:8], 16) / 16**8
    if u < SHARES["test"]:
        return "test"
    return "valid" if u < SHARES["test"] + SHARES["valid"] else "train"


def _age(value: Any) -> int:
    try:
        age = int(str(value).strip())
    except ValueError:
        raise UserError(f"profile age must be a whole number of years, got {value!r}") from None
    if not 1 <= age <= 120:
        raise UserError(f"profile age must be between 1 and 120, got {age}")
    return age


def _likes(value: Any) -> list[str]:
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple)) or not all(isinstance(p, str) for p in parts):
        raise UserError(f"profile likes must be a list of names or a comma-separated string, got {value!r}")
    return [p.strip() for p in parts if p.strip()]


def render_profile(fields: Mapping[str, Any]) -> str:
    """Profile text from fields (any of PROFILE_FIELDS; None or empty = not given):
    {"age": 24, "gender": "M", "occupation": "technician", "likes": ["Sci-Fi", "Action"]} ->
    "I am a 24-year-old man; occupation: technician. I like Sci-Fi and Action." """
    unknown = [k for k in fields if k not in PROFILE_FIELDS]
    if unknown:
        raise UserError(f"unknown profile field(s) {', '.join(map(repr, unknown))}; known: {', '.join(PROFILE_FIELDS)}")
    given = {k: v for k, v in fields.items() if v is not None and str(v).strip() != "" and v != []}
    sentences = []
    age = _age(given["age"]) if "age" in given else None
    gender = None
    if "gender" in given:
        gender = _GENDERS.get(str(given["gender"]).strip().lower())
        if gender is None:
            raise UserError(f"profile gender must be one of {', '.join(sorted(set(_GENDERS)))}, "
                            f"got {given['gender']!r}")
    occupation = str(given.get("occupation", "")).strip()
    who = (f"a {age}-year-old {gender}" if age and gender else f"a {gender}" if gender
           else f"{age} years old" if age else "")
    job = f"occupation: {occupation}" if occupation.lower() not in _SILENT_OCCUPATIONS else ""
    if who or job:
        sentences.append("I am " + "; ".join(p for p in (who, job) if p) if who else job[0].upper() + job[1:])
    likes = _likes(given["likes"]) if "likes" in given else []
    if likes:
        sentences.append("I like " + (", ".join(likes[:-1]) + " and " + likes[-1] if len(likes) > 1 else likes[0]))
    return ". ".join(sentences) + "." if sentences else ""


def as_profile(profile: str | Mapping[str, Any]) -> str:
    """The text of a profile given as free text or as fields; an empty one is a UserError."""
    if isinstance(profile, Mapping):
        text = render_profile(profile)
    elif isinstance(profile, str):
        text = " ".join(profile.split())
    else:
        raise UserError(f"a profile is a text or a mapping of {', '.join(PROFILE_FIELDS)}, "
                        f"got {type(profile).__name__}")
    if not text:
        raise UserError("the profile is empty; describe the user in a few words, or give age, gender, occupation "
                        "or likes")
    return text


def data_profile(data: RecData, user_id: str, seen: tuple[Interaction, ...], source: str) -> str:
    """A user's profile text from the data: demographics and/or the top categories of `seen` ('' if nothing)."""
    fields: dict[str, Any] = {}
    if "demographics" in source:
        attrs = data.users.get(user_id, {})
        fields.update({k: attrs.get(k) for k in ("age", "gender", "occupation")})
    if "genres" in source:
        fields["likes"] = top_categories(data, seen, LIKES_SHOWN)
    try:
        return render_profile(fields)
    except UserError:  # a malformed attribute in the file: this user has no usable demographics
        return render_profile({"likes": fields.get("likes")})


@dataclass(frozen=True)
class ProfileExample:
    """A user known only by a profile: the true item first among the candidates, then the negatives."""

    user_id: str
    split: str
    profile: str
    seen: tuple[Interaction, ...]  # the first events, which the profile's likes summarise
    candidates: tuple[str, ...]


def profile_examples(data: RecData, source: str = PROFILE_SOURCES[0], items: int = 5, negatives: int = 19,
                     seed: int = 0) -> dict[str, list[ProfileExample]]:
    """Examples of the profile task per split (see the module docstring)."""
    if source not in PROFILE_SOURCES:
        raise UserError(f"unknown profile source '{source}'; choose from {', '.join(PROFILE_SOURCES)}")
    all_items = sorted(data.items)
    out: dict[str, list[ProfileExample]] = {s: [] for s in SPLITS}
    for user, events in user_timelines(data).items():
        seen, later = tuple(events[:items]), events[items:]
        profile = data_profile(data, user, seen, source)
        interacted = {x.item_id for x in events}
        pool = [i for i in all_items if i not in interacted]
        if not profile or len(pool) < negatives:
            continue
        split = user_split(user)
        if split == "train":
            for i, x in enumerate(later):
                if x.liked:
                    negs = random.Random(f"{seed}/{user}/profile/{i}").sample(pool, negatives)
                    out[split].append(ProfileExample(user, split, profile, seen, (x.item_id, *negs)))
            continue
        target = next((x for x in later if x.liked), None)
        if target is not None:
            negs = random.Random(f"profile-eval/{user}").sample(pool, negatives)
            out[split].append(ProfileExample(user, split, profile, seen, (target.item_id, *negs)))
    return out


def training_users_interactions(data: RecData) -> list[Interaction]:
    """Every interaction of the profile task's training users: what its baselines may fit on."""
    return [x for x in data.interactions if user_split(x.user_id) == "train"]
