"""The task interface: what a task gives the trainer and `recpeft eval` (see tasks/__init__.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from recpeft.data.schema import RecData
from recpeft.domains import Domain
from recpeft.errors import UserError
from recpeft.tasks.batches import Encoded
from recpeft.tasks.examples import subsample, with_item_stats


@dataclass
class EvalSet:
    """What one evaluation scores: encoded rows plus what the task needs to turn scores into metrics."""

    rows: list[Encoded]
    examples: list[Any]  # the task's examples, one per evaluated case
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)


@dataclass
class Evaluation:
    metrics: dict[str, float]  # always holds the task's main metric and "n"
    outputs: dict[str, list] = field(default_factory=dict)  # per-example scores, for plots (ROC)


class Task:
    """Base class. Subclasses set the class attributes and implement the four methods below."""

    name: str = ""
    main_metric: str = ""
    higher_is_better: bool = True
    template_id: str = ""

    def __init__(self, data: RecData, domain: Domain, tokenizer, cfg):
        """cfg: anything with history_len, max_length, negatives and seed (a TrainConfig)."""
        if getattr(cfg, "item_stats", False):
            data = self.with_item_stats(data)
        self.data, self.domain, self.tok, self.cfg = data, domain, tokenizer, cfg
        self.check_data()
        self._splits: dict[str, list] | None = None

    # -- to implement ---------------------------------------------------------------------------
    def check_data(self) -> None:
        """Raise a UserError if the data cannot support this task (e.g. ratings missing)."""

    def build_splits(self) -> dict[str, list]:
        """Examples per split ("train", "valid", "test")."""
        raise NotImplementedError

    def encode_train(self, examples: list) -> list[Encoded]:
        raise NotImplementedError

    def encode_eval(self, examples: list) -> EvalSet:
        raise NotImplementedError

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model, evalset: EvalSet, batch_size: int = 16, device=None, progress=None) -> Evaluation:
        raise NotImplementedError

    def verbalizer(self) -> dict[str, Any] | None:
        """Answer words and token ids, for recpeft.json (None for generative tasks)."""
        return None

    def with_item_stats(self, data: RecData) -> RecData:
        """--item-stats: item titles tagged with their like-rate among the events this task trains on."""
        return with_item_stats(data)

    # -- shared -----------------------------------------------------------------------------------
    def splits(self) -> dict[str, list]:
        if self._splits is None:
            self._splits = self.build_splits()
        return self._splits

    def train_examples(self, samples: int = 0) -> list:
        """The training examples a run trains on: with dp_max_examples_per_user K > 0 (user-level DP) at most
        K per user (recpeft/training/privacy.py: cap_per_user), then a seeded subset of `samples` (0 = all)."""
        examples = self.splits()["train"]
        cap = getattr(self.cfg, "dp_max_examples_per_user", 0)
        if cap:
            from recpeft.training.privacy import cap_per_user

            examples = cap_per_user(examples, cap, self.cfg.seed)
        return subsample(examples, samples, self.cfg.seed)

    def train_rows(self, samples: int = 0) -> list[Encoded]:
        """Encoded training rows of train_examples(samples)."""
        return self.encode_train(self.train_examples(samples))

    def eval_set(self, split: str, limit: int = 0, where=None) -> EvalSet:
        """A seeded subset of `limit` examples (0 = all) of one split, encoded for evaluation;
        `where(example)` keeps only the examples it is true for (a slice), before subsampling."""
        if split not in ("train", "valid", "test"):
            raise UserError(f"unknown split '{split}'; choose from train, valid, test")
        examples = [ex for ex in self.splits()[split] if where is None or where(ex)]
        return self.encode_eval(subsample(examples, limit, self.cfg.seed))

    def better(self, new: float, old: float) -> bool:
        """Is `new` an improvement on `old` in the main metric? (NaN never is; anything beats NaN.)"""
        if math.isnan(new):
            return False
        if math.isnan(old):
            return True
        return new > old if self.higher_is_better else new < old

    def check_rows(self, train: list[Encoded], valid: EvalSet) -> None:
        """Refuse data that leaves nothing to train or validate on."""
        if not train or not len(valid):
            raise UserError(f"data '{self.data.name}' yields {len(train)} training rows and {len(valid)} validation "
                            f"examples for the {self.name} task; need users with longer histories")
