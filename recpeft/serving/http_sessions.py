"""Interactive sessions over HTTP: the server keeps each session's state (recpeft.serving.session).

    POST   /v1/sessions            {domain, candidates, history?, profile?, k?}  -> the first recommendations
    POST   /v1/sessions/{id}       {accept?, reject?, critique?}                 -> the next recommendations
    GET    /v1/sessions/{id}       the session's feedback so far and its current recommendations
    DELETE /v1/sessions/{id}       end it

Server-side state is bounded: at most `--max-sessions` sessions (the least recently used one goes when
a new one would pass the bound) and each expires `--session-ttl` seconds after its last use; an unknown
or expired id is a 404 that says so. A turn is scored through the server's micro-batcher, with the
same queue limits and deadlines as /v1/recommend. A session serves one request at a time: another
request on it meanwhile is a 409. Feedback is all or nothing: one bad item reference or critique is a
422 and nothing of that request is applied.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from recpeft.errors import UserError
from recpeft.serving.http_models import (
    MAX_CANDIDATES,
    ItemEntry,
    Scored,
    ShortText,
    Text,
    UserRequest,
    scored,
    to_history,
    to_item,
    to_profile,
)
from recpeft.serving.session import Session

MAX_K = 50
ItemRef = int | ShortText  # a 1-based position in the current recommendations, or an item id or title


class SessionStart(UserRequest):
    candidates: Annotated[list[ItemEntry], Field(min_length=1, max_length=MAX_CANDIDATES)]
    k: Annotated[int, Field(ge=1, le=MAX_K)] = 5


class SessionFeedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accept: Annotated[list[ItemRef], Field(max_length=MAX_K)] = []
    reject: Annotated[list[ItemRef], Field(max_length=MAX_K)] = []
    critique: Text | None = None


class SessionResponse(BaseModel):
    session_id: str
    domain: str
    turn: int
    items: list[Scored]
    remaining: int
    expires_in: float


@dataclass(eq=False)
class _Entry:
    session: Session
    domain: str
    expires: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SessionStore:
    """Sessions by id: bounded in number (least recently used out first) and expiring when idle."""

    def __init__(self, max_sessions: int, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.max_sessions, self.ttl, self.clock = max_sessions, ttl, clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _purge(self) -> None:
        now = self.clock()
        for sid in [sid for sid, e in self._entries.items() if e.expires <= now]:
            del self._entries[sid]

    def add(self, session: Session, domain: str) -> str:
        self._purge()
        while len(self._entries) >= self.max_sessions:
            self._entries.popitem(last=False)
        sid = secrets.token_urlsafe(12)
        self._entries[sid] = _Entry(session, domain, self.clock() + self.ttl)
        return sid

    def get(self, sid: str) -> _Entry:
        """The live session (its expiry renewed); a KeyError when unknown or expired."""
        self._purge()
        entry = self._entries[sid]
        entry.expires = self.clock() + self.ttl
        self._entries.move_to_end(sid)
        return entry

    def remove(self, sid: str) -> None:
        self._entries.pop(sid, None)


def add_session_routes(app, get, submit, limits) -> SessionStore:
    """Register the /v1/sessions endpoints. `get(domain)` is the domain's Recommender (or a 404);
    `submit(domain, history, items, profile, critiques)` scores through the server's batcher and raises
    its HTTP errors."""
    from fastapi import HTTPException

    if limits.max_sessions < 1 or limits.session_ttl <= 0:
        raise UserError(f"max_sessions must be >= 1 and session_ttl > 0, got {limits.max_sessions} and "
                        f"{limits.session_ttl}")
    store = SessionStore(limits.max_sessions, limits.session_ttl)
    app.state.sessions = store

    def live(sid: str) -> _Entry:
        try:
            entry = store.get(sid)
        except KeyError:
            raise HTTPException(404, f"session '{sid}' is unknown or expired (a session lasts {limits.session_ttl:g} s "
                                f"after its last use, --session-ttl); start one with POST /v1/sessions") from None
        if entry.lock.locked():
            raise HTTPException(409, f"session '{sid}' is busy with another request; send the next one after it")
        return entry

    async def turn(sid: str, entry: _Entry) -> SessionResponse:
        s = entry.session
        req = s.request()
        scores = await submit(entry.domain, req.history, req.items, req.profile, req.critiques) if req.items else []
        shown = s.take(req.items, scores)
        return SessionResponse(session_id=sid, domain=entry.domain, turn=s.turns, remaining=len(s.remaining()),
                               expires_in=store.ttl, items=[scored(i, p) for i, p in shown])

    @app.post("/v1/sessions", response_model=SessionResponse)
    async def start(req: SessionStart) -> SessionResponse:
        """Start a session: its first k recommendations among the candidates."""
        rec = get(req.domain)
        try:
            session = Session(rec, [to_item(c) for c in req.candidates], to_history(req.history),
                              to_profile(req.profile), req.k)
        except UserError as exc:
            raise HTTPException(422, str(exc)) from None
        sid = store.add(session, req.domain)
        entry = store.get(sid)
        async with entry.lock:
            return await turn(sid, entry)

    @app.post("/v1/sessions/{sid}", response_model=SessionResponse)
    async def feedback(sid: str, req: SessionFeedback) -> SessionResponse:
        """Accept or reject recommendations (positions, item ids or titles), add a critique, and get the next."""
        entry = live(sid)
        async with entry.lock:
            try:
                entry.session.feedback(req.accept, req.reject, req.critique)
            except UserError as exc:
                raise HTTPException(422, str(exc)) from None
            return await turn(sid, entry)

    @app.get("/v1/sessions/{sid}")
    async def state(sid: str) -> dict:
        """The session's feedback so far and its current recommendations."""
        entry = live(sid)
        return {"session_id": sid, "domain": entry.domain, **entry.session.state()}

    @app.delete("/v1/sessions/{sid}")
    async def end(sid: str) -> dict:
        live(sid)
        store.remove(sid)
        return {"session_id": sid, "ended": True}

    return store
