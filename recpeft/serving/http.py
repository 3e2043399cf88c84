"""`recpeft serve`: the adapters over HTTP (FastAPI, OpenAPI docs at /docs), one shared base model.

Endpoints: POST /v1/recommend, POST /v1/score, GET /v1/adapters, GET /health, and the interactive
sessions under /v1/sessions (http_sessions.py). Bad input is always a
4xx with a one-line reason: pydantic's 422 (field and rule), 400 for unusable JSON, 404 for an
unknown domain, 413 for a large body (chunked too), 408 for headers or a body that trickle in too
slowly. Under load, model work goes through a micro-batcher (batcher.py): concurrent requests for one
adapter are scored together, the queue is bounded (503 with Retry-After beyond it) and each request
has a deadline (504), after which its work is stopped.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import anyio

from recpeft import __version__
from recpeft.data.schema import Item
from recpeft.errors import UserError
from recpeft.serving.batcher import MicroBatcher, Overloaded, TimedOut
from recpeft.serving.http_models import (  # noqa: F401  (MAX_*: the limits, importable from here as before)
    MAX_BODY_BYTES,
    MAX_CANDIDATES,
    MAX_HISTORY,
    UNION_TAGS,
    RecommendRequest,
    RecommendResponse,
    ScoreRequest,
    ScoreResponse,
    scored,
    to_history,
    to_item,
    to_profile,
)
from recpeft.serving.http_sessions import add_session_routes


@dataclass(frozen=True)
class Limits:
    """What one server accepts (`recpeft serve --help` explains each)."""

    max_queue: int = 32
    timeout: float = 30.0
    max_body: int = MAX_BODY_BYTES
    client_timeout: float = 10.0
    batching: bool = True
    max_batch: int = 512
    max_connections: int = 256
    max_sessions: int = 1000
    session_ttl: float = 900.0


class BodyGuard:
    """Reads a request's whole body before the app sees it: at most max_bytes (413, whether the client
    sent a Content-Length or chunks without one) and within `timeout` seconds (408: a client that
    trickles its body would otherwise hold a connection and a partial body for as long as it likes)."""

    def __init__(self, app, max_bytes: int, timeout: float):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.responses import JSONResponse

        async def reply(status: int, detail: str):
            await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)

        too_large = f"request body over {self.max_bytes} bytes (--max-body)"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and not length.isdigit():
            return await reply(400, "the Content-Length header is not a number")
        if length is not None and int(length) > self.max_bytes:
            return await reply(413, too_large)
        chunks, size = [], 0
        try:
            with anyio.fail_after(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if size > self.max_bytes:
                        return await reply(413, too_large)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            return await reply(408, f"request body not received within {self.timeout:g} s (--client-timeout)")
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def head_deadline(seconds: float):
    """uvicorn's h11 protocol with a deadline for each request's head (request line and headers).

    uvicorn has none (Kludex/uvicorn#157), and its keep-alive timer restarts on every byte received, so
    a client sending its headers a byte at a time would hold a connection for ever. The timer runs from
    the connection's start, or the previous response's end, until a head is complete. Past it, a client
    that sent part of a head gets a 408, and a new connection that sent nothing is closed (an idle
    keep-alive one is left to uvicorn's keep-alive timer). BodyGuard times the body.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    body = f'{{"detail": "request headers not received within {seconds:g} s (--client-timeout)"}}'.encode()
    answer = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
              b"content-length: %d\r\n\r\n%s" % (len(body), body))

    class HeadDeadline(H11Protocol):
        _head_timer = None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _expired(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or not (self.cycle is None or self.cycle.response_complete):
                return
            if self.conn.trailing_data[0]:  # part of a head came: say why the connection ends
                self.transport.write(answer)  # raw: h11 answers nothing before a complete head
                self.transport.close()
            elif self.cycle is None:  # a new connection that never sent a byte
                self.transport.close()
            # else an idle keep-alive connection: uvicorn's keep-alive timer closes it

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a head arrived: the request runs
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # for the next request's head

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeadDeadline


def _validation_error(exc) -> dict:
    """pydantic's errors without the echoed input (a 10k-item list, a 256 KiB string), and one line."""
    errors = []
    for e in exc.errors()[:20]:
        msg, loc = e["msg"], list(e["loc"])
        if e["type"] == "json_invalid" and isinstance(e.get("ctx"), dict):
            msg, loc = f"{msg} at character {loc[-1]}: {e['ctx'].get('error')}", ["body"]
        loc = [x for i, x in enumerate(loc)
               if not (x in UNION_TAGS and i and (isinstance(loc[i - 1], int) or loc[i - 1] == "profile"))]
        errors.append({"loc": loc, "msg": msg, "type": e["type"]})
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(x) for x in first["loc"] if x != "body") or "body"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return {"detail": errors, "error": f"{where}: {first['msg']}{more}"}


def _parse_error(cause: BaseException) -> str:
    """FastAPI answers "There was an error parsing the body" for every JSON failure but a syntax error;
    this says which."""
    if isinstance(cause, RecursionError):
        return "the body is not usable JSON: it is nested too deeply"
    if isinstance(cause, UnicodeDecodeError):
        return "the body is not UTF-8 encoded JSON"
    return f"the body is not usable JSON: {(str(cause).splitlines() or [type(cause).__name__])[0][:200]}"


def create_app(recs, limits: Limits | None = None):
    """The FastAPI app over a RecommenderSet (recpeft.load_many / recommender.load_dir)."""
    from fastapi import FastAPI, HTTPException
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or Limits()

    def run_batch(domain: str, payloads: list, interrupt) -> list:
        """In the batcher's worker thread: tokenise each request (a bad one fails alone), score the
        rest together."""
        rec, results, ready = recs[domain], [None] * len(payloads), []
        for i, (history, items, profile, critiques) in enumerate(payloads):
            try:
                ready.append((i, rec.prepare(history, items, profile, critiques)))
            except UserError as exc:
                results[i] = exc
        if ready:
            for (i, _), probs in zip(ready, rec.score_prepared([p for _, p in ready], interrupt=interrupt)):
                results[i] = probs
        return results

    batcher = MicroBatcher(run_batch, max_queue=limits.max_queue, timeout=limits.timeout,
                           batching=limits.batching, max_batch=limits.max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await batcher.close()

    app = FastAPI(title="recpeft", version=__version__, lifespan=lifespan,
                  description="Recommendations from parameter-efficient adapters on one shared base model.")
    app.state.batcher, app.state.limits = batcher, limits
    app.add_middleware(BodyGuard, max_bytes=limits.max_body, timeout=limits.client_timeout)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc):
        return JSONResponse(_validation_error(exc), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI could not parse the body
            return JSONResponse({"detail": _parse_error(exc.__cause__)}, status_code=400)
        return await http_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def bug(_request, exc):  # the server logs the traceback; the client gets JSON, not a bare 500
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"},
                            status_code=500)

    def get(domain: str):
        if domain not in recs:
            raise HTTPException(404, f"unknown domain '{domain}'; loaded: {', '.join(recs)}")
        return recs[domain]

    async def probabilities(domain: str, history: list, items: list, profile=None) -> list[float]:
        return await submit(domain, to_history(history), [to_item(i) for i in items], to_profile(profile))

    async def submit(domain: str, history: list, items: list[Item], profile=None, critiques=()) -> list[float]:
        """P(like) of items through the micro-batcher; its refusals and a bad request become HTTP errors."""
        get(domain)
        try:
            return await batcher.submit(domain, (history, items, profile, tuple(critiques)), size=len(items))
        except Overloaded as exc:
            raise HTTPException(503, f"server busy: {exc.queued} requests queued (--max-queue "
                                f"{limits.max_queue}); retry in {exc.retry_after} s",
                                headers={"Retry-After": str(exc.retry_after)}) from None
        except TimedOut:
            raise HTTPException(504, f"no result within the {limits.timeout:g} s request timeout (--timeout): "
                                "the server is busy or the request is large; retry later or send fewer "
                                "candidates") from None
        except UserError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.get("/health")
    async def health() -> dict:
        """Liveness: the service is up and its adapters are loaded; how many requests wait for the model."""
        return {"status": "ok", "adapters": len(recs), "queued": batcher.queued}

    @app.get("/v1/adapters")
    async def adapters() -> list[dict]:
        """The loaded adapters: domain name, method, task, wording domain, base model, folder; max_candidates:
        the most items one request may score (a choice adapter's letters; null: any number)."""
        return [{"domain": name, "method": r.method, "task": r.meta.task, "domain_preset": r.domain.name,
                 "base_model": recs.base_name, "path": str(r.path), "history_len": r.history_len,
                 "max_candidates": len(r.answer_ids) if r.choice else None} for name, r in recs.items()]

    @app.post("/v1/score", response_model=ScoreResponse)
    async def score(req: ScoreRequest) -> ScoreResponse:
        """P(like / click) of each item for this history and/or profile."""
        return ScoreResponse(domain=req.domain,
                             scores=await probabilities(req.domain, req.history, req.items, req.profile))

    @app.post("/v1/recommend", response_model=RecommendResponse)
    async def recommend(req: RecommendRequest) -> RecommendResponse:
        """The k best candidates for this history and/or profile, best first (prompt prefix encoded once)."""
        probs = await probabilities(req.domain, req.history, req.candidates, req.profile)
        items = [to_item(c) for c in req.candidates]
        order = sorted(range(len(items)), key=lambda i: -probs[i])[:req.k]  # stable: ties keep input order
        return RecommendResponse(domain=req.domain, items=[scored(items[i], probs[i]) for i in order])

    add_session_routes(app, get, submit, limits)
    return app


def run(adapters: Path, host: str, port: int, bits: int | None = None, limits: Limits | None = None) -> None:
    """Load every adapter under `adapters` on one base model and serve them with uvicorn."""
    import uvicorn

    from recpeft.serving.recommender import load_dir

    limits = limits or Limits()
    app = create_app(load_dir(adapters, bits=bits), limits)
    # limit_concurrency: connections beyond it get uvicorn's own 503, a backstop against many slow clients
    uvicorn.run(app, host=host, port=port, log_level="info", limit_concurrency=limits.max_connections,
                timeout_keep_alive=5, http=head_deadline(limits.client_timeout))
