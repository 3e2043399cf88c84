"""Rating prediction: the answer is one digit, 1-5.

Loss = cross-entropy over the five digit tokens' logits at the answer position (class = the true
rating). The prediction is the expectation of the digit under their softmax, so it is continuous
and RMSE rewards calibrated uncertainty. Main metric: RMSE (lower is better); MAE too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recpeft.errors import UserError
from recpeft.evaluation.metrics import rating_metrics
from recpeft.evaluation.scoring import all_answer_logits, answer_logits
from recpeft.tasks.base import EvalSet, Evaluation, Task
from recpeft.tasks.batches import Encoded, fit
from recpeft.tasks.examples import preference_examples
from recpeft.tasks.prompts import RATING_ANSWERS, RATING_SYSTEM, answer_token_ids, rating_message

DIGITS = torch.arange(1, len(RATING_ANSWERS) + 1, dtype=torch.float32)


def expected_rating(logits: torch.Tensor) -> torch.Tensor:
    """[batch, 5] digit logits -> [batch] expected rating, sum_k k * softmax(logits)_k."""
    return torch.softmax(logits.float(), dim=-1) @ DIGITS.to(logits.device)


def rating_class(rating: float) -> int:
    """The digit class (0-4) of a rating: rounded, clamped to 1-5."""
    return min(len(RATING_ANSWERS), max(1, round(rating))) - 1


class RatingTask(Task):
    name = "rating"
    main_metric = "rmse"
    higher_is_better = False
    template_id = "rating-v1"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.answer_ids = answer_token_ids(self.tok, RATING_ANSWERS)

    def check_data(self) -> None:
        if not any(x.rating is not None for x in self.data.interactions):
            raise UserError(f"the rating task needs 1-5 ratings (MovieLens, Amazon reviews, the video and ecommerce "
                            f"samples); data '{self.data.name}' has none")

    def build_splits(self) -> dict[str, list]:
        return {s: [ex for ex in xs if ex.target.rating is not None]
                for s, xs in preference_examples(self.data).items()}

    def _message(self, ex, n: int) -> str:
        rated = [x for x in ex.history if x.rating is not None][-n:] if n else []
        return rating_message([(self.data.items[x.item_id], x.rating) for x in rated],
                              self.data.items[ex.target.item_id], self.domain)

    def encode_train(self, examples: list) -> list[Encoded]:
        return [Encoded(fit(self.tok, lambda n, ex=ex: self._message(ex, n), self.cfg.history_len,
                            self.cfg.max_length, RATING_SYSTEM), rating_class(ex.target.rating))
                for ex in examples]

    def encode_eval(self, examples: list) -> EvalSet:
        return EvalSet(self.encode_train(examples), examples, {"ratings": [ex.target.rating for ex in examples]})

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(answer_logits(model, batch, self.answer_ids), batch["labels"])

    def evaluate(self, model, evalset: EvalSet, batch_size: int = 16, device=None, progress=None) -> Evaluation:
        logits = all_answer_logits(model, evalset.rows, self.answer_ids, self.tok.pad_token_id, batch_size, device,
                                   progress)
        predicted = expected_rating(logits).tolist()
        actual = evalset.extra["ratings"]
        metrics = {**rating_metrics(predicted, actual), "n": len(actual)}
        return Evaluation(metrics, {"ratings": actual, "predicted": predicted})

    def verbalizer(self) -> dict:
        return {"answers": list(RATING_ANSWERS), "token_ids": self.answer_ids}
