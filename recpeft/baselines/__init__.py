"""Classical baselines on exactly the LLM's splits and candidates; one entry point, `run_baselines`.

Every baseline fits only on the train period (per-user temporal split of recpeft.tasks.examples) and, to score
a validation or test target, reads only that user's history before the target, cut to the same
`history_len` window the LLM's prompt shows. Preference and rating score the same (user, target)
pairs as the LLM; ranking scores the same seeded candidate lists.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from recpeft.baselines.base import SCORED_AS, TASKS, Baseline, FitContext, cold_slice, label, train_interactions
from recpeft.baselines.bpr import BPR
from recpeft.baselines.chance import Random
from recpeft.baselines.gru4rec import GRU4Rec
from recpeft.baselines.itemknn import ItemKNN
from recpeft.baselines.logreg import LogReg
from recpeft.baselines.popularity import Popularity
from recpeft.baselines.profile import GenrePopularity, GroupGenrePopularity, GroupPopularity
from recpeft.baselines.sasrec import SASRec
from recpeft.config import TrainConfig
from recpeft.data.schema import RecData
from recpeft.errors import UserError
from recpeft.evaluation.metrics import binary_metrics, ranking_metrics, rating_metrics
from recpeft.tasks.examples import preference_examples, ranking_examples, subsample
from recpeft.tasks.profiles import profile_examples

REGISTRY: dict[str, type[Baseline]] = {cls.name: cls for cls in (Random, Popularity, ItemKNN, BPR, GRU4Rec, SASRec,
                                                                   LogReg, GroupPopularity, GenrePopularity,
                                                                   GroupGenrePopularity)}

__all__ = ["REGISTRY", "TASKS", "Baseline", "FitContext", "baseline_report", "format_report", "names_for",
           "run_baselines"]

TRAIN_DEFAULTS = TrainConfig()  # the same history length and negatives as `recpeft train`


def names_for(task: str) -> list[str]:
    """The registered baselines that support a task, in registry order."""
    return [name for name, cls in REGISTRY.items() if task in cls.tasks]


def check_names(task: str, models: list[str] | None) -> list[str]:
    """The baselines to run for a task (default: all that support it); unknown names or tasks are UserErrors."""
    if task not in TASKS:
        raise UserError(f"unknown task '{task}'; baselines support {', '.join(TASKS)}")
    names = list(models) if models else names_for(task)
    for name in names:
        if name not in REGISTRY:
            raise UserError(f"unknown baseline '{name}'; known: {', '.join(REGISTRY)}")
        if task not in REGISTRY[name].tasks:
            raise UserError(f"baseline '{name}' does not do {task}; it does {', '.join(REGISTRY[name].tasks)}")
    return names


def _examples(data: RecData, task: str, negatives: int, seed: int, profile: tuple[str, int]) -> dict[str, list]:
    if task == "profile":
        return profile_examples(data, *profile, negatives=negatives, seed=seed)
    if task == "ranking":
        return ranking_examples(data, negatives=negatives, seed=seed)
    splits = preference_examples(data)
    if task == "rating":
        splits = {s: [e for e in xs if e.target.rating is not None] for s, xs in splits.items()}
    return splits


def _visible(train: list, history_len: int) -> list:
    """The interactions a model trained on these examples sees: targets plus visible histories."""
    seen = {}
    for e in train:
        for x in (e.history[-history_len:] if history_len else e.history) + (e.target,):
            seen[(x.user_id, x.item_id, x.timestamp)] = x
    return sorted(seen.values(), key=lambda x: (x.user_id, x.timestamp, x.item_id))


def _metrics(model: Baseline, task: str, examples: list) -> dict | None:
    if not examples:
        return None
    if task in ("ranking", "profile"):
        return {**ranking_metrics(model.score_ranking(examples)), "n": len(examples)}
    truth = [label(e, task) for e in examples]
    if task == "rating":
        return {**rating_metrics(model.score_rating(examples), truth), "n": len(examples)}
    return binary_metrics([int(t) for t in truth], model.score_preference(examples))


def run_baselines(data: RecData, task: str, models: list[str] | None = None, *,
                  negatives: int = TRAIN_DEFAULTS.negatives, seed: int = 0, train_samples: int = 0,
                  history_len: int = TRAIN_DEFAULTS.history_len, cold_max_train: int = 2,
                  params: dict[str, dict] | None = None, test_limit: int = 0, cold_limit: int = 0,
                  profile_from: str = TRAIN_DEFAULTS.profile_from, profile_items: int = TRAIN_DEFAULTS.profile_items,
                  log: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Fit each baseline on the train period and score the valid and test splits (plus the cold-start slice).

    task: preference (like/click, AUC), rating (RMSE/MAE), ranking (1 true + `negatives` seeded
    candidates; HR/NDCG/MRR; choice, which lists the same candidates in one prompt, is scored as ranking) or
    profile (the same metrics for held-out users known by a profile made
    `profile_from` their demographics and/or their first `profile_items` events; fitted on the training
    users' interactions, recpeft/tasks/profiles.py).
    `train_samples` N > 0 is the few-shot mode of preference/rating: every
    model sees only the same seeded N training examples the LLM gets (`recpeft.tasks.examples.subsample`),
    their targets and visible histories, and nothing else of the train period. The cold-start slice
    holds the test targets whose item has at most `cold_max_train` train-period interactions.
    `params` overrides a baseline's constructor arguments, e.g. {"gru4rec": {"epochs": 5}}.
    `test_limit` / `cold_limit` N > 0 score only the seeded N-example subsets of the test split / the
    cold-start slice that an LLM evaluation with `limit=N` and the same seed scores.

    Returns {name: {"valid", "test", "test_cold_start": metrics or None, "fit_seconds",
    "score_seconds"[, "note"]}}.
    """
    task = SCORED_AS.get(task, task)
    names = check_names(task, models)
    if train_samples and task in ("ranking", "profile"):
        raise UserError("--train-samples (few-shot) applies to the preference and rating tasks")
    if train_samples < 0 or history_len < 0 or negatives < 1:
        raise UserError("train samples and history length must be >= 0, negatives >= 1")
    splits = _examples(data, task, negatives, seed, (profile_from, profile_items))
    if not splits["test"]:
        what = "rated " if task == "rating" else ""
        raise UserError(f"no {what}test examples for {task} in {data.name} (users need at least 4 {what}events)")
    period = train_interactions(data, task)
    if train_samples:
        train = subsample(splits["train"], train_samples, seed)
        interactions = _visible(train, history_len)
    else:
        train, interactions = splits["train"], period
    cold = subsample(cold_slice(splits["test"], period, cold_max_train), cold_limit, seed)
    test = subsample(splits["test"], test_limit, seed)
    results: dict[str, dict] = {}
    for name in names:
        model = REGISTRY[name](**(params or {}).get(name, {}))
        start = time.perf_counter()
        model.fit(FitContext(data, task, interactions, train, history_len=history_len, seed=seed,
                             profile_from=profile_from))
        fitted = time.perf_counter()
        out = {"valid": _metrics(model, task, splits["valid"]), "test": _metrics(model, task, test),
               "test_cold_start": _metrics(model, task, cold)}
        out.update(fit_seconds=round(fitted - start, 3), score_seconds=round(time.perf_counter() - fitted, 3))
        if model.note:
            out["note"] = model.note
        results[name] = out
        if log:
            log(f"{name}: fit {out['fit_seconds']:.1f} s, score {out['score_seconds']:.1f} s")
    return results


from recpeft.baselines.report import baseline_report, format_report  # noqa: E402  (report imports run_baselines)
