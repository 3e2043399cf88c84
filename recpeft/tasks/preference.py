"""Preference (TALLRec) and click prediction: a Yes/No question per (history, target) pair.

Loss = cross-entropy over the Yes/No logits at the answer position, the same quantity scoring turns
into P(Yes). Main metric: ROC AUC. `click` is the same task on click labels (MIND impressions, the
news sample); `preference` takes either (rating > 3 or a click is a like).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recpeft.errors import UserError
from recpeft.evaluation.metrics import binary_metrics
from recpeft.evaluation.scoring import answer_logits, score
from recpeft.tasks.base import EvalSet, Evaluation, Task
from recpeft.tasks.batches import Encoded, encode
from recpeft.tasks.examples import preference_examples
from recpeft.tasks.prompts import TEMPLATE_ID, answer_token_ids


class PreferenceTask(Task):
    name = "preference"
    main_metric = "auc"
    template_id = TEMPLATE_ID
    answers = ("No", "Yes")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.answer_ids = answer_token_ids(self.tok, self.answers)

    def build_splits(self) -> dict[str, list]:
        return preference_examples(self.data)

    def encode_train(self, examples: list) -> list[Encoded]:
        return encode(examples, self.data, self.domain, self.tok, self.cfg.history_len, self.cfg.max_length)

    def encode_eval(self, examples: list) -> EvalSet:
        return EvalSet(self.encode_train(examples), examples)

    def check_rows(self, train: list[Encoded], valid: EvalSet) -> None:
        super().check_rows(train, valid)
        for name, rows in (("training", train), ("validation", valid.rows)):
            if len({r.label for r in rows}) < 2:
                raise UserError(f"data '{self.data.name}': every {name} example has the same label; {self.name} "
                                "training needs likes and dislikes (ratings > 3 and <= 3, or clicks 1 and 0)")

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(answer_logits(model, batch, self.answer_ids), batch["labels"])

    def evaluate(self, model, evalset: EvalSet, batch_size: int = 16, device=None, progress=None) -> Evaluation:
        probs = score(model, evalset.rows, self.answer_ids, self.tok.pad_token_id, batch_size, device, progress)
        labels = [r.label for r in evalset.rows]
        outputs = {"labels": labels, "scores": probs}
        # the users too: a user's pairs share a history, so an interval should resample users (paired_gain.py);
        # instruction records (a subclass) belong to no user
        users = [getattr(e, "user_id", None) for e in evalset.examples]
        if None not in users:
            outputs["users"] = users
        return Evaluation(binary_metrics(labels, probs), outputs)

    def verbalizer(self) -> dict:
        return {"answers": list(self.answers), "token_ids": self.answer_ids}


class ClickTask(PreferenceTask):
    name = "click"

    def check_data(self) -> None:
        if not any(x.click is not None for x in self.data.interactions):
            raise UserError(f"the click task needs click labels (MIND impressions, the news sample); data "
                            f"'{self.data.name}' has none. Use --task preference for ratings")
