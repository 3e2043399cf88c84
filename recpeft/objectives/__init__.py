"""Tasks behind one interface, for the trainer and `recpeft eval`.

A task turns loaded data into encoded training rows and evaluation sets, gives the training loss of
a batch, and evaluates a model on an evaluation set into a metrics dict with one main metric (the
one early stopping follows). The example builders themselves live in recpeft/tasks.py, where the
classical baselines read the same splits and candidates.

    preference  Yes/No like prediction (TALLRec), AUC          click      the same on click labels
    rating      1-5 from the digit tokens, RMSE / MAE          ranking    1 + K candidates, NDCG@10
    interests   generated category list, F1 vs. the future
    instruction alpaca / TALLRec records as they are: Yes/No AUC, or LM loss + exact match
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..batches import Encoded
from ..config import TASKS
from ..data.schema import InstructionData, RecData
from ..domains import Domain
from ..errors import UserError
from ..tasks import subsample, with_item_stats



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
            data = with_item_stats(data)
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

    # -- shared -----------------------------------------------------------------------------------
    def splits(self) -> dict[str, list]:
        if self._splits is None:
            self._splits = self.build_splits()
        return self._splits

    def train_rows(self, samples: int = 0) -> list[Encoded]:
        """Encoded training rows from a seeded subset of `samples` training examples (0 = all)."""
        return self.encode_train(subsample(self.splits()["train"], samples, self.cfg.seed))

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


def task_name(name: str, data: RecData | InstructionData) -> str:
    """The task that runs for `name` on `data`. Instruction data (alpaca) only runs the instruction
    task, so the default `preference` selects it; other interaction tasks are refused."""
    if isinstance(data, InstructionData):
        if name in ("instruction", "preference"):
            return "instruction"
        raise UserError(f"data '{data.name}' is instruction data (alpaca): it trains and evaluates as it is, with "
                        f"--task instruction, not {name} (that task needs users, items and interactions)")
    if name == "instruction":
        raise UserError(f"--task instruction needs instruction data (alpaca / TALLRec JSON: instruction, input, "
                        f"output); data '{data.name}' holds interactions")
    return name


def get_task(name: str, data: RecData | InstructionData, domain: Domain, tokenizer, cfg) -> Task:
    """The task called `name` (as task_name resolves it for the data), bound to data, domain,
    tokenizer and settings."""
    from .instruction import InstructionTask
    from .interests import InterestsTask
    from .preference import ClickTask, PreferenceTask
    from .ranking import RankingTask
    from .rating import RatingTask

    classes = {t.name: t for t in (PreferenceTask, ClickTask, RatingTask, RankingTask, InterestsTask,
                                   InstructionTask)}
    if name not in classes:
        raise UserError(f"unknown task '{name}'; choose from {', '.join(TASKS)}")
    return classes[task_name(name, data)](data, domain, tokenizer, cfg)
