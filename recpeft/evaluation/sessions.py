"""Interactive sessions measured with a simulated user (issue 17.3; experiments/session_sim.py runs it).

Each simulated user has a hidden target: their true next item of the ranking task's test split, among
that example's candidates (the target and its seeded negatives, as `ranking_examples` draws them). Every
turn the system shows k items it has not shown before. If the target is among them the session is a hit
at that turn; otherwise the user passes over them and asks for one of the target's categories in words
(`category_critique`: "more Film-Noir"), the next category of the target at each turn, cycling. Passed-over
items are never shown again, and are not written into the prompt as dislikes: k of them per turn would
push the user's real history out of the prompt's history window.

Scorers, all on the same users, candidates and critiques:
- llm: a Session of the adapter, whose prompt carries the critiques (recpeft.serving.session);
- one_shot: the adapter's first ranking, paged k at a time with no feedback: what more turns give
  without understanding the critique;
- filter: a classical scorer (popularity or item-kNN on the train period) whose next page keeps the
  candidates of the critiqued categories first, the baseline a practitioner would build without an LLM.
hit@k after t turns = share of users whose target was shown within their first t turns.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from recpeft.data.schema import RecData
from recpeft.tasks.examples import RankingExample, item_categories
from recpeft.tasks.prompts import category_critique


@dataclass
class Simulated:
    """One simulated user's session: the turn of the hit (0 = never) and the critiques given."""

    hit_turn: int
    critiques: list[str]


def critiques_for(data: RecData, ex: RankingExample, turns: int) -> list[str]:
    """The categories the user asks for after turns 1, 2, ...: the target's, in a seeded order, cycling."""
    cats = item_categories(data.items[ex.candidates[0]])
    random.Random(f"session-sim/{ex.user_id}/{ex.timestamp}").shuffle(cats)
    return [cats[t % len(cats)] for t in range(turns - 1)] if cats else []


def hit_rates(results: Sequence[Simulated], turns: int) -> list[float]:
    """hit@k after 1..turns turns."""
    n = max(1, len(results))
    return [sum(1 for r in results if 0 < r.hit_turn <= t) / n for t in range(1, turns + 1)]


def paged(scores: Sequence[float], target_index: int, k: int, turns: int) -> int:
    """The turn at which a fixed ranking shown k at a time reaches the target (0 = not within turns)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    rank = order.index(target_index)
    return rank // k + 1 if rank < k * turns else 0


def simulate_filter(data: RecData, examples: Sequence[RankingExample], scores: Sequence[Sequence[float]], k: int,
                    turns: int) -> list[Simulated]:
    """The non-LLM session: rank by the classical scores; after each critique, items of more of the
    critiqued categories first (then by score), never an item shown before."""
    out = []
    for ex, row in zip(examples, scores):
        asked = critiques_for(data, ex, turns)
        shown: set[int] = set()
        hit = 0
        for t in range(turns):
            wanted = set(asked[:t])
            left = [i for i in range(len(ex.candidates)) if i not in shown]
            match = {i: len(wanted & set(item_categories(data.items[ex.candidates[i]]))) for i in left}
            page = sorted(left, key=lambda i: (-match[i], -row[i]))[:k]
            shown.update(page)
            if 0 in page:
                hit = t + 1
                break
        out.append(Simulated(hit, [category_critique(c) for c in asked]))
    return out


def simulate_llm(rec, data: RecData, examples: Sequence[RankingExample], k: int, turns: int,
                 users_per_call: int = 16, progress: Callable[[int], None] | None = None
                 ) -> tuple[list[Simulated], list[list[float]]]:
    """The adapter's sessions, all users in lockstep (each turn's prompts scored users_per_call at a time
    through the shared cached-prefix path). Returns the sessions and every user's first-turn scores of
    all candidates (for the one-shot reference)."""
    from recpeft.errors import UserError
    from recpeft.serving.session import Session

    if getattr(rec, "choice", False):  # its list would show the target first, under "A", every time
        raise UserError(f"adapter '{rec.name}' is a choice adapter (--task choice); the session simulation scores "
                        "pointwise ranking adapters (--task ranking)")
    sessions = []
    for ex in examples:
        history = [(data.items[x.item_id], x.liked) for x in ex.history]
        sessions.append(Session(rec, [data.items[c] for c in ex.candidates], history, k=k))
    asked = [critiques_for(data, ex, turns) for ex in examples]
    results = [Simulated(0, []) for _ in examples]
    first: list[list[float]] = [[] for _ in examples]
    active = list(range(len(examples)))
    for t in range(turns):
        for start in range(0, len(active), users_per_call):
            group = [u for u in active[start:start + users_per_call] if sessions[u].remaining()]
            requests = [sessions[u].request() for u in group]
            prepared = [rec.prepare(r.history, r.items, r.profile, r.critiques) for r in requests]
            for u, req, probs in zip(group, requests, rec.score_prepared(prepared)):
                if t == 0:
                    first[u] = probs
                shown = sessions[u].take(req.items, probs)
                if any(item.item_id == examples[u].candidates[0] for item, _ in shown):
                    results[u].hit_turn = t + 1
            if progress is not None:
                progress(sum(len(r.items) for r in requests))
        active = [u for u in active if not results[u].hit_turn]
        if t + 1 < turns:
            for u in active:
                if t < len(asked[u]):
                    critique = category_critique(asked[u][t])
                    sessions[u].critique(critique)
                    results[u].critiques.append(critique)
    return results, first
