"""Interactive sessions: recommend, take the user's feedback, recommend again.

    s = rec.session(history=["Toy Story (1995)"], k=5)   # candidates: the adapter's catalogue
    shown = s.recommend()                                # [(Item, probability), ...], best first
    s.reject(1); s.critique("something darker"); s.recommend()

The feedback becomes part of the next prompt: an accepted item joins the liked history, a rejected one
the disliked history, and each critique a line "The user asks for: ...", after the history and before
the question (recpeft.tasks.prompts.profile_message). An item once shown is not shown again. Each turn
encodes its prompt prefix once and scores every remaining candidate against that KV cache
(recpeft.serving.prefix), so a turn costs one prefix plus the candidates' titles however long the
conversation is. The history window is the adapter's history_len; the last MAX_CRITIQUES critiques
are kept. `recpeft chat` (recpeft/cli/chat.py) and the HTTP API's /v1/sessions drive this class.

State is split from scoring (`request` / `take`) so that the HTTP server can score a turn through its
micro-batcher, with the same queue limits and deadlines as any other request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from recpeft.data.schema import Item
from recpeft.errors import UserError
from recpeft.tasks.profiles import as_profile

MAX_CRITIQUES = 5
MAX_CRITIQUE_CHARS = 300


@dataclass(frozen=True)
class TurnRequest:
    """What one turn scores: the arguments of Recommender.prepare."""

    history: list
    items: list[Item]
    profile: str | None
    critiques: tuple[str, ...]


class Session:
    """One user's conversation with one adapter (see the module docstring)."""

    def __init__(self, rec, candidates: Sequence, history: Sequence = (), profile=None, k: int = 5):
        from recpeft.serving.recommender import as_history, as_item

        if k < 1:
            raise UserError(f"k must be at least 1, got {k}")
        self.rec, self.k = rec, k
        self.history: list[tuple[Item, bool] | tuple[Item, float]] = [
            (r.item, r.rating if r.rating is not None else r.liked) for r in as_history(history)]
        self.profile = None if profile is None else as_profile(profile)
        unique: dict[str, Item] = {}
        for c in candidates:
            item = as_item(c)
            unique.setdefault(item.item_id, item)
        self.candidates = list(unique.values())
        if not self.candidates:
            raise UserError("the candidate list is empty; give at least one item to recommend from")
        self.critiques: list[str] = []
        self.shown: list[Item] = []
        self.current: list[tuple[Item, float]] = []
        self.turns = 0

    def remaining(self) -> list[Item]:
        """Candidates neither shown yet nor in the history."""
        done = {i.item_id for i in self.shown} | {item.item_id for item, _ in self.history}
        return [c for c in self.candidates if c.item_id not in done]

    def request(self) -> TurnRequest:
        return TurnRequest(list(self.history), self.remaining(), self.profile, tuple(self.critiques))

    def take(self, items: list[Item], scores: list[float]) -> list[tuple[Item, float]]:
        """Record a scored turn: the k best of items become the shown recommendations (none when no
        candidate was left to score)."""
        if not items:
            self.current = []
            return []
        order = sorted(range(len(items)), key=lambda i: -scores[i])[:self.k]  # stable: ties keep order
        self.current = [(items[i], scores[i]) for i in order]
        self.shown += [item for item, _ in self.current]
        self.turns += 1
        return self.current

    def recommend(self) -> list[tuple[Item, float]]:
        """The next k recommendations (fewer once the candidates run out; [] when none are left)."""
        req = self.request()
        if not req.items:
            return self.take([], [])
        prepared = self.rec.prepare(req.history, req.items, req.profile, req.critiques)
        return self.take(req.items, self.rec.score_prepared([prepared])[0])

    def find(self, item: int | str | Item) -> Item:
        """An item of this session: a 1-based position in the current recommendations, an Item, or an
        item id or title (case-insensitive) among the candidates."""
        if isinstance(item, int) and not isinstance(item, bool):
            if not 1 <= item <= len(self.current):
                raise UserError(f"no recommendation number {item}; the current ones are 1 to {len(self.current)}")
            return self.current[item - 1][0]
        key = item.item_id if isinstance(item, Item) else str(item).strip()
        for c in self.candidates:
            if c.item_id == key or c.title.lower() == key.lower():
                return c
        raise UserError(f"'{key}' is not among this session's candidates")

    def accept(self, item: int | str | Item) -> Item:
        """The user likes this item: it joins the liked history of the next prompts."""
        found = self.find(item)
        self._forget(found)
        self.history.append((found, True))
        return found

    def reject(self, item: int | str | Item) -> Item:
        """The user does not want this item: it joins the disliked history."""
        found = self.find(item)
        self._forget(found)
        self.history.append((found, False))
        return found

    def critique(self, text: str) -> str:
        """A free-text request for the next recommendations, e.g. "less violent", "something shorter".
        Saying the same again moves it to the end instead of repeating it."""
        text = _critique_text(text)
        self.critiques = ([c for c in self.critiques if c != text] + [text])[-MAX_CRITIQUES:]
        return text

    def feedback(self, accept: Sequence = (), reject: Sequence = (), critique: str | None = None) -> None:
        """Several pieces of feedback at once, all or nothing: every item and the critique are checked
        before any of them is applied (the HTTP API's feedback request)."""
        found = ([(self.find(ref), True) for ref in accept] + [(self.find(ref), False) for ref in reject])
        text = None if critique is None else _critique_text(critique)
        for item, liked in found:
            self._forget(item)
            self.history.append((item, liked))
        if text is not None:
            self.critique(text)

    def _forget(self, item: Item) -> None:
        """Feedback replaces earlier feedback on the same item."""
        self.history = [(i, mark) for i, mark in self.history if i.item_id != item.item_id]

    def state(self) -> dict:
        """A JSON-able summary: turns, feedback so far, and the current recommendations."""
        return {"turns": self.turns, "critiques": list(self.critiques),
                "liked": [i.title for i, mark in self.history if mark is True or (mark is not False and mark > 3)],
                "disliked": [i.title for i, mark in self.history if mark is False or (mark is not True and mark <= 3)],
                "current": [{"item_id": i.item_id, "title": i.title, "score": s} for i, s in self.current],
                "remaining": len(self.remaining())}


def _critique_text(text: str) -> str:
    text = " ".join(str(text).split())
    if not text:
        raise UserError("the critique is empty; say what to change, e.g. 'something shorter'")
    if len(text) > MAX_CRITIQUE_CHARS:
        raise UserError(f"a critique is at most {MAX_CRITIQUE_CHARS} characters, got {len(text)}")
    return text
