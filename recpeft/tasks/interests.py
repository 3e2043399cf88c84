"""Interest discovery: the model writes the user's favourite categories as a comma-separated list.

Training: language-model loss on interests_target(top categories of the user's liked history) after
the prompt (only the answer tokens and the end-of-sequence token count). Evaluation: short greedy
generation, batched and left-padded; parse_interests keeps the names of known categories, scored
with set_metrics (micro precision/recall/F1) against the categories of the items the user liked in
the held-out window right after the history. Main metric: F1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recpeft.errors import UserError
from recpeft.evaluation.metrics import set_metrics
from recpeft.evaluation.sharding import shared_map
from recpeft.tasks.base import EvalSet, Evaluation, Task
from recpeft.tasks.batches import Encoded, LengthBucketSampler, collate, fit
from recpeft.tasks.examples import interests_examples, item_categories, top_categories
from recpeft.tasks.prompts import TEXT_SYSTEM, interests_message, interests_target, parse_interests

N_INTERESTS = 3  # categories asked for and trained on
MAX_NEW_TOKENS = 16


def answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of each row's last `labels[i]` tokens (the answer; rows are left-padded, so
    every answer ends at the last position). Only the logits of those positions are computed."""
    n = batch["labels"]
    k = int(n.max())
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], logits_to_keep=k + 1, use_cache=False)
    logits = out.logits[:, :-1]  # position p predicts token p + 1: these predict the last k tokens
    mask = torch.arange(k, device=n.device)[None, :] >= (k - n)[:, None]
    return F.cross_entropy(logits[mask].float(), batch["input_ids"][:, -k:][mask])


@torch.no_grad()
def generate(model, tokenizer, rows: list[Encoded], batch_size: int = 16, max_new_tokens: int = MAX_NEW_TOKENS,
             device=None, progress=None) -> list[str]:
    """Greedy continuations of prompt rows, batched by length with left padding, in input order."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    texts = [""] * len(rows)

    def one(idx: list[int]) -> list[str]:
        batch = collate([rows[i] for i in idx], tokenizer.pad_token_id)
        out = model.generate(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                             max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        if progress is not None:
            progress.update(len(idx))
        return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)

    batches = list(LengthBucketSampler([len(r.input_ids) for r in rows], batch_size, shuffle=False))
    for idx, decoded in zip(batches, shared_map(one, batches)):  # each process its share, inside sharding.across
        for i, text in zip(idx, decoded):
            texts[i] = text
    model.train(was_training)
    return texts


class InterestsTask(Task):
    name = "interests"
    main_metric = "f1"
    template_id = "interests-v1"

    def check_data(self) -> None:
        self.known = {c for item in self.data.items.values() for c in item_categories(item)}
        if not self.known:
            raise UserError(f"the interests task needs item categories (genres, topics); data '{self.data.name}' "
                            "has none")

    def build_splits(self) -> dict[str, list]:
        splits = interests_examples(self.data)
        splits["train"] = [ex for ex in splits["train"] if top_categories(self.data, ex.history)]
        return splits

    def _prompt(self, ex, reserve: int = 0) -> list[int]:
        def message(n: int) -> str:
            recent = ex.history[-n:] if n else ()
            liked = [self.data.items[x.item_id] for x in recent if x.liked]
            disliked = [self.data.items[x.item_id] for x in recent if not x.liked]
            return interests_message(liked, disliked, self.domain, N_INTERESTS)

        return fit(self.tok, message, self.cfg.history_len, self.cfg.max_length, TEXT_SYSTEM, reserve)

    def encode_train(self, examples: list) -> list[Encoded]:
        rows = []
        for ex in examples:
            target = interests_target(top_categories(self.data, ex.history, N_INTERESTS))
            answer = self.tok(target, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            rows.append(Encoded(self._prompt(ex, reserve=len(answer)) + answer, len(answer)))
        return rows

    def encode_eval(self, examples: list) -> EvalSet:
        return EvalSet([Encoded(self._prompt(ex), 0) for ex in examples], examples,
                       {"truth": [ex.truth(self.data) for ex in examples]})

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return answer_loss(model, batch)

    def history_reference(self, evalset: EvalSet) -> dict[str, float]:
        """No model: name the N_INTERESTS most frequent liked categories of the history the prompt
        shows, scored like a generation. What the history alone gives, to read a model's F1 against."""
        window = self.cfg.history_len
        predicted = [set(top_categories(self.data, ex.history[-window:] if window else (), N_INTERESTS))
                     for ex in evalset.examples]
        return {**set_metrics(predicted, evalset.extra["truth"]), "n": len(predicted)}

    def evaluate(self, model, evalset: EvalSet, batch_size: int = 16, device=None, progress=None) -> Evaluation:
        texts = generate(model, self.tok, evalset.rows, batch_size, device=device, progress=progress)
        predicted = [set(parse_interests(t, self.known)) for t in texts]
        truth = evalset.extra["truth"]
        metrics = {**set_metrics(predicted, truth), "n": len(truth),
                   "no_known_category": sum(not p for p in predicted) / max(1, len(predicted))}
        return Evaluation(metrics, {"generated": texts, "predicted": [sorted(p) for p in predicted],
                                    "truth": [sorted(t) for t in truth]})
