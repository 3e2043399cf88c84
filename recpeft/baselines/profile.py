"""Cold-start baselines of the profile task: how a practitioner ranks a brand-new user's candidates when
all they know is the user's demographics and a few liked genres (what the LLM's profile says).

Every one fits on the training users' interactions only (recpeft.tasks.profiles.training_users_interactions);
a held-out user is known by what their profile says (`profile_from`): their demographics and/or the top
genres of the liked ones among their first events. A part the profile lacks is not used (the group is
everyone; the genre overlap is 0), so a baseline never knows more about the user than the LLM:
- group_popularity: interaction counts among training users of the same gender and age band (everyone's
  for a group never seen), the global count breaking ties;
- genre_popularity: how many of the profile's liked genres the candidate has, then global popularity;
- group_genre_popularity: the same genre overlap first, then the group's popularity.
Global popularity and random are the shared `popularity` and `random` baselines.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from recpeft.baselines.base import Baseline, FitContext
from recpeft.tasks.examples import item_categories, top_categories
from recpeft.tasks.profiles import LIKES_SHOWN, ProfileExample

AGE_BANDS = (18, 25, 35, 45, 50, 56)  # MovieLens-1M's bands: under 18, 18-24, ..., 56+


def group_of(attrs: dict[str, str]) -> tuple[str, int]:
    """(gender, age band index) of a user's attributes; unknown parts are '' and -1."""
    try:
        age = int(attrs.get("age", ""))
        band = sum(age >= b for b in AGE_BANDS)
    except ValueError:
        band = -1
    return attrs.get("gender", "").strip().upper(), band


class _ProfileBaseline(Baseline):
    tasks = ("profile",)

    def fit(self, ctx: FitContext) -> None:
        self.data = ctx.data
        self.by_demographics, self.by_genres = "demographics" in ctx.profile_from, "genres" in ctx.profile_from
        self.counts: Counter[str] = Counter(x.item_id for x in ctx.interactions)
        self.by_group: dict[tuple, Counter[str]] = defaultdict(Counter)
        for x in ctx.interactions:
            self.by_group[group_of(ctx.data.users.get(x.user_id, {}))][x.item_id] += 1
        self.top = max(self.counts.values(), default=0) + 1

    def group_counts(self, ex: ProfileExample) -> Counter[str]:
        if not self.by_demographics:
            return self.counts
        return self.by_group.get(group_of(self.data.users.get(ex.user_id, {}))) or self.counts

    def overlap(self, ex: ProfileExample, item: str) -> int:
        if not self.by_genres:
            return 0
        liked = set(top_categories(self.data, ex.seen, LIKES_SHOWN))
        return len(liked & set(item_categories(self.data.items[item])))

    def score_ranking(self, examples: list[ProfileExample]) -> list[list[float]]:
        return [[self.score(e, c) for c in e.candidates] for e in examples]

    def score(self, ex: ProfileExample, item: str) -> float:
        raise NotImplementedError


class GroupPopularity(_ProfileBaseline):
    name = "group_popularity"

    def score(self, ex: ProfileExample, item: str) -> float:
        return self.group_counts(ex)[item] + self.counts[item] / self.top


class GenrePopularity(_ProfileBaseline):
    name = "genre_popularity"

    def score(self, ex: ProfileExample, item: str) -> float:
        return self.overlap(ex, item) + self.counts[item] / self.top


class GroupGenrePopularity(_ProfileBaseline):
    name = "group_genre_popularity"

    def score(self, ex: ProfileExample, item: str) -> float:
        group = self.group_counts(ex)
        return self.overlap(ex, item) + group[item] / (max(group.values(), default=0) + 1)
