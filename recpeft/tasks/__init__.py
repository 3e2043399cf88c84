"""Tasks behind one interface, for the trainer and `recpeft eval`.

A task turns loaded data into encoded training rows and evaluation sets, gives the training loss of
a batch, and evaluates a model on an evaluation set into a metrics dict with one main metric (the
one early stopping follows). The example builders themselves live in recpeft/tasks/examples.py, where the
classical baselines read the same splits and candidates.

    preference  Yes/No like prediction (TALLRec), AUC          click      the same on click labels
    rating      1-5 from the digit tokens, RMSE / MAE          ranking    1 + K candidates, NDCG@10
    profile     ranking for held-out users known by a profile text (cold start), NDCG@10
    choice      ranking as one multiple-choice question, the candidates under letters (LlamaRec), NDCG@10
    interests   generated category list, F1 vs. the future
    instruction alpaca / TALLRec records as they are: Yes/No AUC, or LM loss + exact match
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from recpeft.data.schema import InstructionData, RecData
from recpeft.errors import UserError, did_you_mean

if TYPE_CHECKING:
    from recpeft.domains import Domain
    from recpeft.tasks.base import Task

# The task registry: name -> "module:class", imported on use (the CLI reads the names without torch).
TASKS: dict[str, str] = {
    "preference": "recpeft.tasks.preference:PreferenceTask",
    "click": "recpeft.tasks.preference:ClickTask",
    "rating": "recpeft.tasks.rating:RatingTask",
    "ranking": "recpeft.tasks.ranking:RankingTask",
    "choice": "recpeft.tasks.choice:ChoiceTask",
    "profile": "recpeft.tasks.profile:ProfileTask",
    "interests": "recpeft.tasks.interests:InterestsTask",
    "instruction": "recpeft.tasks.instruction:InstructionTask",
}


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
    if name not in TASKS:
        raise UserError(f"unknown task '{name}'{did_you_mean(name, TASKS)}; choose from {', '.join(TASKS)}")
    return task_class(task_name(name, data))(data, domain, tokenizer, cfg)


def task_class(name: str) -> type[Task]:
    """The class registered as `name` in TASKS (imported on use)."""
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)
