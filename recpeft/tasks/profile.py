"""Cold-start ranking from a profile: a user known only by a few words about themselves.

The same pointwise Yes/No scoring as the ranking task (1 true item + K negatives, NDCG@10), but the
prompt shows the user's profile (recpeft/tasks/profiles.py) instead of a history, and the users it is
evaluated on are held out entirely: none of their interactions is in training. The cold-start item
slice (cold_*) counts the training users' interactions.
"""

from __future__ import annotations

from recpeft.data.schema import Item, RecData
from recpeft.errors import UserError
from recpeft.serving.prefix import SENTINEL
from recpeft.tasks.base import EvalSet
from recpeft.tasks.batches import Encoded, fit
from recpeft.tasks.examples import cold_start, with_item_stats
from recpeft.tasks.profiles import ProfileExample, profile_examples, training_users_interactions
from recpeft.tasks.prompts import profile_message
from recpeft.tasks.ranking import COLD_MAX_COUNT, TRAIN_NEGATIVES, RankingTask


class ProfileTask(RankingTask):
    name = "profile"
    template_id = "profile-v1"

    def with_item_stats(self, data: RecData) -> RecData:
        """Like-rates among the training users' interactions only: held-out users' never count."""
        return with_item_stats(data, counted=training_users_interactions(data))

    def check_data(self) -> None:
        source = self.cfg.profile_from
        if "demographics" in source and (not self.data.users or self.data.name.startswith("movielens-1m")):
            why = ("codes ages and occupations as numbers" if self.data.users else
                   "has no user attributes (MovieLens-100k's u.user)")
            raise UserError(f"data '{self.data.name}' {why}, and --profile-from {source} words them as text; use "
                            "--profile-from genres")
        if "genres" in source and not any(i.categories for i in self.data.items.values()):
            raise UserError(f"data '{self.data.name}' has no item categories, which --profile-from {source} needs; "
                            "use --profile-from demographics")

    def build_splits(self) -> dict[str, list]:
        return profile_examples(self.data, self.cfg.profile_from, self.cfg.profile_items, self.cfg.negatives,
                                self.cfg.seed)

    def _rows(self, examples: list[ProfileExample], width: int = 0) -> list[Encoded]:
        """One row per candidate (the first `width` of each example's, 0 = all), label 1 for the true item."""
        rows = []
        for ex in examples:
            for k, item in enumerate(ex.candidates[:width] if width else ex.candidates):
                message = profile_message(ex.profile, [], [], self.data.items[item], self.domain)
                rows.append(Encoded(fit(self.tok, lambda _n, m=message: m, 0, self.cfg.max_length), int(k == 0)))
        return rows

    def encode_train(self, examples: list) -> list[Encoded]:
        return self._rows(examples, 1 + TRAIN_NEGATIVES)

    def encode_eval(self, examples: list) -> EvalSet:
        return EvalSet(self._rows(examples), examples,
                       {"cold": cold_start(examples, self.item_counts(), COLD_MAX_COUNT)})

    def item_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for x in training_users_interactions(self.data):
            counts[x.item_id] = counts.get(x.item_id, 0) + 1
        return counts

    def prefix_message(self, ex: ProfileExample) -> str:
        return profile_message(ex.profile, [], [], Item(SENTINEL, SENTINEL), self.domain)
