"""Instruction data (alpaca / TALLRec JSON) trained as it is: each record's instruction and input are
the prompt (chat-rendered, not reworded), its output the target.

When every output starts with Yes or No (TALLRec), the task is the preference task on those labels:
the Yes/No verbaliser loss and AUC, from PreferenceTask. Otherwise it is generative: LM loss on the
output tokens, and evaluation reports the mean answer-token loss (the main metric, lower is better)
and the exact match of the first line of a greedy answer with the first line of the output.
Splits: recpeft.tasks.examples.instruction_splits (file names, else seeded 80/10/10).
"""

from __future__ import annotations

import math

import torch

from recpeft.data.schema import Instruction
from recpeft.errors import UserError
from recpeft.evaluation.sharding import shared_map
from recpeft.tasks.base import EvalSet, Evaluation, Task
from recpeft.tasks.batches import Encoded, LengthBucketSampler, collate, fit
from recpeft.tasks.examples import instruction_splits
from recpeft.tasks.interests import answer_loss, generate
from recpeft.tasks.preference import PreferenceTask
from recpeft.tasks.prompts import TEXT_SYSTEM, answer_token_ids

MAX_NEW_TOKENS = 64  # cap on a generated answer; exact match only needs the first line


def first_line(text: str) -> str:
    """The first non-empty line, whitespace collapsed: what exact match compares."""
    return next((" ".join(line.split()) for line in text.strip().splitlines() if line.strip()), "")


@torch.no_grad()
def mean_answer_loss(model, rows: list[Encoded], pad_id: int, batch_size: int = 16, device=None) -> float:
    """Cross-entropy per answer token over all rows (each row's label = its answer length)."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device

    def one(idx: list[int]) -> tuple[float, int]:
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in idx], pad_id).items()}
        n = int(batch["labels"].sum())
        return answer_loss(model, batch).item() * n, n

    batches = list(LengthBucketSampler([len(r.input_ids) for r in rows], batch_size, shuffle=False))
    sums = shared_map(one, batches)  # each process its share, inside sharding.across; summed in batch order
    total, tokens = sum(s for s, _ in sums), sum(n for _, n in sums)
    model.train(was_training)
    return total / tokens if tokens else math.nan


class InstructionTask(PreferenceTask):
    name = "instruction"
    template_id = "instruction-v1"

    def __init__(self, data, domain, tokenizer, cfg):
        if getattr(cfg, "item_stats", False):
            raise UserError("--item-stats tags catalogue items with their like-rate; instruction data has no "
                            "catalogue")
        Task.__init__(self, data, domain, tokenizer, cfg)
        self.yes_no = all(x.label is not None for x in data.examples)
        # Instance attributes: the metric depends on the data (AUC for Yes/No, answer loss otherwise).
        self.main_metric, self.higher_is_better = ("auc", True) if self.yes_no else ("loss", False)
        self.answer_ids = answer_token_ids(self.tok, self.answers) if self.yes_no else []

    def build_splits(self) -> dict[str, list]:
        return instruction_splits(self.data, self.cfg.seed)

    def _prompt(self, x: Instruction, reserve: int = 0) -> list[int]:
        """The record's instruction (and input, when there is one) as the user message; a prompt too
        long for max_length loses its beginning, so the question at its end survives."""
        message = f"{x.instruction}\n\n{x.input}" if x.input.strip() else x.instruction
        return fit(self.tok, lambda n: message, 0, self.cfg.max_length, TEXT_SYSTEM, reserve)

    def _answer(self, x: Instruction) -> list[int]:
        ids = self.tok(x.output, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        return ids[: self.cfg.max_length - 1]

    def encode_train(self, examples: list) -> list[Encoded]:
        if self.yes_no:
            return [Encoded(self._prompt(x), x.label) for x in examples]
        rows = []
        for x in examples:
            answer = self._answer(x)
            rows.append(Encoded(self._prompt(x, reserve=len(answer)) + answer, len(answer)))
        return rows

    def encode_eval(self, examples: list) -> EvalSet:
        if self.yes_no:
            return EvalSet(self.encode_train(examples), examples)
        longest = max((len(self.tok(first_line(x.output), add_special_tokens=False)["input_ids"]) for x in examples),
                      default=0)
        return EvalSet([Encoded(self._prompt(x), 0) for x in examples], examples,
                       {"scored": self.encode_train(examples), "max_new_tokens": min(MAX_NEW_TOKENS, longest + 2)})

    def check_rows(self, train: list[Encoded], valid: EvalSet) -> None:
        if not train or not len(valid):
            raise UserError(f"data '{self.data.name}' yields {len(train)} training and {len(valid)} validation "
                            "records; give train and valid files, or at least 3 records to split")
        if self.yes_no:
            for name, rows in (("training", train), ("validation", valid.rows)):
                if len({r.label for r in rows}) < 2:
                    raise UserError(f"data '{self.data.name}': every {name} record answers the same (all Yes or "
                                    "all No); Yes/No training needs both")

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return super().loss(model, batch) if self.yes_no else answer_loss(model, batch)

    def evaluate(self, model, evalset: EvalSet, batch_size: int = 16, device=None, progress=None) -> Evaluation:
        if self.yes_no:
            return super().evaluate(model, evalset, batch_size, device, progress)
        loss = mean_answer_loss(model, evalset.extra["scored"], self.tok.pad_token_id, batch_size, device)
        texts = generate(model, self.tok, evalset.rows, batch_size, evalset.extra["max_new_tokens"], device, progress)
        expected = [x.output for x in evalset.examples]
        hits = [first_line(t) == first_line(o) for t, o in zip(texts, expected)]
        metrics = {"loss": loss, "exact_match": sum(hits) / len(hits) if hits else math.nan, "n": len(hits)}
        return Evaluation(metrics, {"generated": texts, "expected": expected})

    def verbalizer(self) -> dict | None:
        return super().verbalizer() if self.yes_no else None
