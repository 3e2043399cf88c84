"""`recpeft serve`: the adapters over HTTP (FastAPI, OpenAPI docs at /docs), one shared base model.

Endpoints: POST /v1/recommend, POST /v1/score, GET /v1/adapters, GET /health. Requests are validated
by pydantic (422 with the field and the reason); history length, candidate count and body size are
bounded (422 / 413); an unknown domain is a 404 naming the loaded ones. Model calls are serialised by
the adapter bank's lock: the active adapter is state of the one shared model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Union

from pydantic import BaseModel, ConfigDict, Field

from . import __version__
from .data.schema import Item
from .errors import UserError

MAX_HISTORY = 50
MAX_CANDIDATES = 500
MAX_BODY_BYTES = 256 * 1024
MAX_TEXT = 300

Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]


class ItemIn(BaseModel):
    """An item: its title, and optionally an id and a category (shown in the prompt, as in training)."""

    model_config = ConfigDict(extra="forbid")
    title: Text
    item_id: Annotated[str, Field(max_length=MAX_TEXT)] | None = None
    category: Annotated[str, Field(max_length=MAX_TEXT)] = ""


class HistoryIn(ItemIn):
    """A history entry: liked by default; `liked: false` for a dislike, or a 1-5 `rating` (> 3 = liked)."""

    liked: bool | None = None
    rating: Annotated[float, Field(ge=1, le=5)] | None = None


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    domain: Text
    history: Annotated[list[Union[Text, HistoryIn]], Field(max_length=MAX_HISTORY)] = []
    items: Annotated[list[Union[Text, ItemIn]], Field(min_length=1, max_length=MAX_CANDIDATES)]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    domain: Text
    history: Annotated[list[Union[Text, HistoryIn]], Field(max_length=MAX_HISTORY)] = []
    candidates: Annotated[list[Union[Text, ItemIn]], Field(min_length=1, max_length=MAX_CANDIDATES)]
    k: Annotated[int, Field(ge=1, le=MAX_CANDIDATES)] = 10


class Scored(BaseModel):
    item_id: str
    title: str
    category: str
    score: float


class ScoreResponse(BaseModel):
    domain: str
    scores: list[float]


class RecommendResponse(BaseModel):
    domain: str
    items: list[Scored]


def _item(x: str | ItemIn) -> Item:
    if isinstance(x, str):
        return Item(x, x)
    return Item(x.item_id or x.title, x.title, x.category)


def _history(entries: list[str | HistoryIn]) -> list:
    out = []
    for e in entries:
        if isinstance(e, str):
            out.append(e)
        elif e.rating is not None:
            out.append((_item(e), e.rating))
        else:
            out.append((_item(e), e.liked is not False))
    return out


def create_app(recs):
    """The FastAPI app over a RecommenderSet (recpeft.load_many / recommender.load_dir)."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="recpeft", version=__version__,
                  description="Recommendations from parameter-efficient adapters on one shared base model.")

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"detail": "a Content-Length header is required"}, status_code=411)
            if not length.isdigit() or int(length) > MAX_BODY_BYTES:
                return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        return await call_next(request)

    def get(domain: str):
        if domain not in recs:
            raise HTTPException(404, f"unknown domain '{domain}'; loaded: {', '.join(recs)}")
        return recs[domain]

    def call(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.get("/health")
    def health() -> dict:
        """Liveness: the service is up and its adapters are loaded."""
        return {"status": "ok", "adapters": len(recs)}

    @app.get("/v1/adapters")
    def adapters() -> list[dict]:
        """The loaded adapters: domain name, method, wording domain, base model, folder."""
        return [{"domain": name, "method": r.method, "domain_preset": r.domain.name, "base_model": recs.base_name,
                 "path": str(r.path), "history_len": r.history_len} for name, r in recs.items()]

    @app.post("/v1/score", response_model=ScoreResponse)
    def score(req: ScoreRequest) -> ScoreResponse:
        """P(like / click) of each item for this history."""
        rec = get(req.domain)
        return ScoreResponse(domain=req.domain, scores=call(rec.score, _history(req.history),
                                                            [_item(i) for i in req.items]))

    @app.post("/v1/recommend", response_model=RecommendResponse)
    def recommend(req: RecommendRequest) -> RecommendResponse:
        """The k best candidates for this history, best first (history prefix encoded once)."""
        rec = get(req.domain)
        ranked = call(rec.rank, _history(req.history), [_item(c) for c in req.candidates], req.k)
        return RecommendResponse(domain=req.domain, items=[Scored(item_id=i.item_id, title=i.title,
                                                                 category=i.category, score=s) for i, s in ranked])

    return app


def run(adapters: Path, host: str, port: int, bits: int | None = None) -> None:
    """Load every adapter under `adapters` on one base model and serve them with uvicorn."""
    import uvicorn

    from .recommender import load_dir

    app = create_app(load_dir(adapters, bits=bits))
    uvicorn.run(app, host=host, port=port, log_level="info")
