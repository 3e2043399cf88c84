"""Next-item ranking: leave-one-out, the true next item against K sampled negatives, scored pointwise.

Each candidate gets the preference prompt with itself as the target, and its score is P(Yes); the
history and question come first, so a user's candidates share one prompt prefix. Training is
pointwise too: the true next item is a Yes, TRAIN_NEGATIVES of its sampled negatives are No. With
--critique-share, some training prompts also carry a critique naming a category of the true item, the
line a chat session adds (recpeft.serving.session), so that the adapter learns to follow one.
Candidates come from tasks.ranking_examples, the function the classical baselines use, so both see
exactly the same lists. Main metric: NDCG@10; the cold-start slice (true item with <= 2 training
interactions) is reported as cold_* metrics.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from recpeft.data.schema import Interaction, Item
from recpeft.evaluation.metrics import ranking_metrics
from recpeft.evaluation.scoring import answer_logits
from recpeft.evaluation.sharding import chunks, shared_map
from recpeft.serving.prefix import SENTINEL, cached_answer_logits_many, split_prompt
from recpeft.tasks.base import EvalSet, Evaluation
from recpeft.tasks.batches import Encoded, EncodedGroup, fit
from recpeft.tasks.examples import (
    Example,
    RankingExample,
    cold_start,
    item_categories,
    liked_disliked,
    ranking_examples,
    train_item_counts,
)
from recpeft.tasks.preference import PreferenceTask
from recpeft.tasks.prompts import PreferencePrompt, category_critique, profile_message, render, user_message

TRAIN_NEGATIVES = 1  # No-rows per Yes-row in training: balanced classes, one prefix read twice
COLD_MAX_COUNT = 2
# Users scored together through the cached prefix: their candidates share forwards, fewer and fuller than
# one user's (experiments/bench_ranking_eval.py measures it against one user per call).
USERS_PER_CALL = 16


def candidate_examples(ex: RankingExample, n_candidates: int | None = None) -> list[Example]:
    """One preference Example per candidate (label 1 for the true next item, 0 for the negatives)."""
    cands = ex.candidates[:n_candidates] if n_candidates else ex.candidates
    return [Example(ex.user_id, ex.split, ex.timestamp, ex.history,
                    Interaction(ex.user_id, item, ex.timestamp, click=int(k == 0)), int(k == 0))
            for k, item in enumerate(cands)]


def cold_start_metrics(scores: list[list[float]], cold: list[bool]) -> dict[str, float]:
    """ranking_metrics on the cold-start rows only, keys prefixed cold_; just cold_n when there are none."""
    rows = [s for s, c in zip(scores, cold) if c]
    out: dict[str, float] = {"cold_n": len(rows)}
    if rows:
        out.update({f"cold_{k}": v for k, v in ranking_metrics(rows).items()})
    return out


class RankingTask(PreferenceTask):
    name = "ranking"
    main_metric = "ndcg@10"
    template_id = "rank-v1"  # the preference prompt, one per candidate

    def build_splits(self) -> dict[str, list]:
        return ranking_examples(self.data, negatives=self.cfg.negatives, seed=self.cfg.seed)

    def encode_train(self, examples: list) -> list[Encoded] | list[EncodedGroup]:
        """Pointwise: the true item's row and TRAIN_NEGATIVES negatives' rows per example. Listwise
        (--ranking-loss listwise): one group per example, the true item and --list-negatives negatives."""
        if self.listwise:
            return [EncodedGroup(tuple(self.candidate_rows(ex, 1 + self.cfg.list_negatives))) for ex in examples]
        return [row for ex in examples for row in self.candidate_rows(ex, 1 + TRAIN_NEGATIVES)]

    @property
    def listwise(self) -> bool:
        return getattr(self.cfg, "ranking_loss", "pointwise") == "listwise"

    def candidate_rows(self, ex: RankingExample, n: int) -> list[Encoded]:
        """The training rows of ex's first n candidates (true item first), with its critique (--critique-share)."""
        cands = candidate_examples(ex, n)
        critique = self.critique(ex) if getattr(self.cfg, "critique_share", 0.0) else None
        if critique is None:
            return super().encode_train(cands)
        rows = []
        for c in cands:
            target = self.data.items[c.target.item_id]
            ids = fit(self.tok, lambda n, c=c, t=target, q=critique: profile_message(
                None, *liked_disliked(self.data, c.history, n), t, self.domain, (q,)),
                self.cfg.history_len, self.cfg.max_length)
            rows.append(Encoded(ids, c.label))
        return rows

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pointwise: Yes/No cross-entropy per row. Listwise: softmax cross-entropy over each group's scores
        (logit Yes - logit No, the log-odds whose order P(Yes) ranks by), the true item first."""
        size = batch.get("group_size")
        if not size:
            return super().loss(model, batch)
        logits = answer_logits(model, batch, self.answer_ids)
        scores = (logits[:, -1] - logits[:, 0]).view(-1, int(size))
        return F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long, device=scores.device))

    def critique(self, ex: RankingExample) -> str | None:
        """For --critique-share: a critique naming one of the true item's categories, for a seeded share of
        the training examples (None for the others and for items without categories)."""
        rng = random.Random(f"{self.cfg.seed}/critique/{ex.user_id}/{ex.timestamp}/{ex.candidates[0]}")
        categories = item_categories(self.data.items[ex.candidates[0]])
        if rng.random() >= self.cfg.critique_share or not categories:
            return None
        return category_critique(rng.choice(categories))

    def encode_eval(self, examples: list) -> EvalSet:
        flat = [c for ex in examples for c in candidate_examples(ex)]
        return EvalSet(super().encode_train(flat), examples,
                       {"cold": cold_start(examples, self.item_counts(), COLD_MAX_COUNT)})

    def item_counts(self) -> dict[str, int]:
        """Training interactions per item, which decide the cold-start slice."""
        return train_item_counts(self.data)

    def cold_eval_set(self, split: str = "test", limit: int = 0) -> EvalSet:
        """Only the cold-start examples of a split (true item with <= COLD_MAX_COUNT training interactions):
        a slice big enough to compare on, where a random subset of the split holds few of them."""
        counts = self.item_counts()
        return self.eval_set(split, limit, where=lambda ex: counts.get(ex.candidates[0], 0) <= COLD_MAX_COUNT)

    def check_rows(self, train: list[Encoded], valid: EvalSet) -> None:
        super(PreferenceTask, self).check_rows(train, valid)  # labels are 1 and 0 by construction

    def evaluate(self, model, evalset: EvalSet, batch_size: int = 16, device=None, progress=None,
                 cached: bool = True) -> Evaluation:
        """cached: each user's prefix (history + question) runs once and its KV cache serves all of the
        user's candidates (recpeft.serving.prefix); False scores every candidate's full prompt (the reference)."""
        if cached:
            # USERS_PER_CALL users at a time, each process its share of the chunks (inside sharding.across)
            groups = chunks(evalset.examples, USERS_PER_CALL)
            parts = shared_map(lambda group: self._cached_scores(model, group, progress), groups)
            scores = [s for part in parts for s in part]
        else:
            probs = super().evaluate(model, evalset, batch_size, device, progress).outputs["scores"]
            width = len(evalset.rows) // max(1, len(evalset.examples))
            scores = [probs[i:i + width] for i in range(0, len(probs), width)]
        metrics = {**ranking_metrics(scores), "n": len(scores), **cold_start_metrics(scores, evalset.extra["cold"])}
        return Evaluation(metrics, {"scores": scores, "cold": evalset.extra["cold"]})

    def _cached_scores(self, model, examples: list, progress=None) -> list[list[float]]:
        """P(Yes) for each candidate of each example, in candidate order: each example's prefix runs once and
        serves its candidates, and the examples' candidates share forwards (cached_answer_logits_many)."""
        was_training = model.training
        model.eval()
        requests = []
        for ex in examples:
            split = split_prompt(self.tok, render(self.tok, self.prefix_message(ex)))
            requests.append((split.prefix_ids, [split.suffix_ids(self.tok, self.data.items[c].text())
                                                for c in ex.candidates]))
        logits = cached_answer_logits_many(model, requests, self.answer_ids, self.tok.pad_token_id)
        model.train(was_training)
        if progress is not None:
            progress.update(len(examples))  # the bar counts users, like its total
        return [torch.softmax(x, dim=-1)[:, -1].tolist() for x in logits]

    def prefix_message(self, ex: RankingExample) -> str:
        """The user message of ex's prompts with the target left as the SENTINEL (split_prompt cuts there)."""
        liked, disliked = liked_disliked(self.data, ex.history, self.cfg.history_len)
        return user_message(PreferencePrompt(liked, disliked, Item(SENTINEL, SENTINEL)), self.domain)
