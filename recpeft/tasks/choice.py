"""Next-item ranking as one multiple-choice question: LlamaRec's verbaliser (Yue et al., 2023).

The ranking task asks one Yes/No question per candidate. This one lists the candidates under index letters
(A, B, C, ...) after the history and reads the letters' logits at the answer position: one forward ranks
them all, and the model compares the candidates with each other in its attention rather than judging each
alone. A candidate's score is its letter's probability (softmax over the listed letters).

Training is the same softmax: cross-entropy over the letters' logits, the true item's letter the label.
The list order is a seeded shuffle of (true item, negatives) per example, so a letter says nothing by
itself. The examples and candidates are the ranking task's (tasks.ranking_examples), which the classical
baselines score too; main metric NDCG@10, the cold-start slice as cold_*. At most 20 candidates
(prompts.CHOICE_LETTERS): --negatives 19 or fewer. A question is never cut: the history shrinks to fit
--max-length, and a question too long without any history is a UserError (20 ML-100k titles take ~450
tokens, more than the default 320). A longer list would be a prompt of many titles, where a
retrieval stage should cut the catalogue first (LlamaRec ranks a retriever's top 20).
"""

from __future__ import annotations

import random

import torch

from recpeft.errors import UserError
from recpeft.evaluation.metrics import ranking_metrics
from recpeft.evaluation.scoring import all_answer_logits
from recpeft.tasks.base import EvalSet, Evaluation
from recpeft.tasks.batches import Encoded, fit
from recpeft.tasks.examples import RankingExample, cold_start, liked_disliked
from recpeft.tasks.prompts import CHOICE_LETTERS, CHOICE_SYSTEM, answer_token_ids, choice_message, render
from recpeft.tasks.ranking import COLD_MAX_COUNT, RankingTask, cold_start_metrics


def listed_order(ex: RankingExample, seed: int) -> list[int]:
    """The order ex's candidates are listed in: order[j] is the index in ex.candidates of the j-th letter's
    candidate (a seeded shuffle per example, the same in training, evaluation and every run)."""
    order = list(range(len(ex.candidates)))
    random.Random(f"{seed}/choice/{ex.user_id}/{ex.timestamp}").shuffle(order)
    return order


class ChoiceTask(RankingTask):
    name = "choice"
    template_id = "choice-v1"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.answers = tuple(CHOICE_LETTERS[: 1 + self.cfg.negatives])
        self.answer_ids = answer_token_ids(self.tok, self.answers)

    def encode_one(self, ex: RankingExample) -> tuple[Encoded, int]:
        """The question with ex's candidates in their listed order (the label: the true item's letter), and
        the tokens it needs with no history at all (more than --max-length: the question does not fit)."""
        order = listed_order(ex, self.cfg.seed)
        listed = [self.data.items[ex.candidates[k]] for k in order]

        def message(n: int) -> str:
            return choice_message(*liked_disliked(self.data, ex.history, n), listed, self.domain)

        ids = fit(self.tok, message, self.cfg.history_len, self.cfg.max_length, system=CHOICE_SYSTEM)
        need = len(ids)
        if need >= self.cfg.max_length:  # fit() may have cut the front: measure the question without history
            need = len(self.tok(render(self.tok, message(0), CHOICE_SYSTEM), add_special_tokens=False)["input_ids"])
        return Encoded(ids, order.index(0)), need

    def encode_train(self, examples: list) -> list[Encoded]:
        """One question per example. A question longer than --max-length even without history is refused:
        cutting it would drop candidates (and the instructions) while its label still names a letter."""
        encoded = [self.encode_one(ex) for ex in examples]
        need = max((n for _, n in encoded), default=0)
        if need > self.cfg.max_length:
            too_long = sum(n > self.cfg.max_length for _, n in encoded)
            raise UserError(f"{too_long} of {len(encoded)} choice questions on data '{self.data.name}' need more than "
                            f"--max-length {self.cfg.max_length} tokens with no history at all (the longest: {need}), "
                            f"for the {1 + self.cfg.negatives} candidates' titles; raise --max-length to at least "
                            f"{need} plus room for the history (e.g. {need + 150}), or lower --negatives")
        return [row for row, _ in encoded]

    def encode_eval(self, examples: list) -> EvalSet:
        return EvalSet(self.encode_train(examples), examples,
                       {"cold": cold_start(examples, self.item_counts(), COLD_MAX_COUNT)})

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Softmax cross-entropy over the letters (PreferenceTask's loss, with letters as the answers)."""
        return super(RankingTask, self).loss(model, batch)

    def evaluate(self, model, evalset: EvalSet, batch_size: int = 16, device=None, progress=None,
                 cached: bool = True) -> Evaluation:
        """One forward per example; each candidate's score is its letter's probability, returned in
        candidate order (true item first), as ranking_metrics reads it. `cached` is the ranking task's
        option and changes nothing here: there is no per-candidate suffix to cache."""
        logits = all_answer_logits(model, evalset.rows, self.answer_ids, self.tok.pad_token_id, batch_size, device,
                                   progress)
        scores = []
        for ex, row in zip(evalset.examples, logits):
            order = listed_order(ex, self.cfg.seed)
            probs = torch.softmax(row[: len(order)], dim=-1).tolist()
            by_candidate = [0.0] * len(order)
            for letter, k in enumerate(order):
                by_candidate[k] = probs[letter]
            scores.append(by_candidate)
        metrics = {**ranking_metrics(scores), "n": len(scores), **cold_start_metrics(scores, evalset.extra["cold"])}
        return Evaluation(metrics, {"scores": scores, "cold": evalset.extra["cold"]})
