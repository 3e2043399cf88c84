"""`recpeft serve`: the FastAPI app through TestClient (results, bad input, queue limit, timeouts,
micro-batching), one real uvicorn server on 127.0.0.1, and the quick load test."""

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import ROOT
from fastapi.testclient import TestClient

import recpeft
from recpeft.data.formats.csvdir import load_sample
from recpeft.kernels.last_position import decoder_layers
from recpeft.serving.http import MAX_BODY_BYTES, MAX_CANDIDATES, MAX_HISTORY, Limits, create_app

sys.path.insert(0, str(ROOT / "experiments"))
import http_load  # noqa: E402
import load_serve  # noqa: E402

NEWS = [i.title for i in load_sample("news").items.values()]
LOADED = ("news", "ecommerce", "video")  # lora, bottleneck adapter, adalora


@pytest.fixture(scope="module")
def served(tiny_adapters):
    recs = recpeft.load_many({k: tiny_adapters[k] for k in LOADED})
    with TestClient(create_app(recs)) as client:
        yield recs, client


@contextlib.contextmanager
def before_each_layer(recs, fn):
    """Call fn before every decoder layer of the shared model runs (to slow it down or hold it)."""
    def hook(*_):  # returns None: a pre-hook's return value would replace the layer's input
        fn()

    handles = [layer.register_forward_pre_hook(hook) for layer in decoder_layers(recs.bank.model)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def wait_for(condition, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_recommend_and_score_equal_the_python_api(served):
    recs, client = served
    history = [NEWS[0], {"title": NEWS[1], "liked": False}, {"title": NEWS[2], "rating": 4}]
    r = client.post("/v1/recommend", json={"domain": "news", "history": history, "candidates": NEWS[5:25], "k": 3})
    assert r.status_code == 200, r.text
    got = r.json()["items"]
    want = recs["news"].rank([NEWS[0], (NEWS[1], False), (NEWS[2], 4.0)], NEWS[5:25], k=3)
    assert [g["title"] for g in got] == [i.title for i, _ in want]
    assert all(abs(g["score"] - s) < 1e-6 for g, (_, s) in zip(got, want))
    r = client.post("/v1/score", json={"domain": "ecommerce", "history": [],
                                       "items": [{"title": "Desk", "category": "Home"}]})
    assert r.status_code == 200 and 0 < r.json()["scores"][0] < 1
    assert abs(r.json()["scores"][0]
               - recs["ecommerce"].score([], [recpeft.data.schema.Item("Desk", "Desk", "Home")])[0]) < 1e-6


def test_adapters_health_and_openapi(served):
    _, client = served
    assert client.get("/health").json() == {"status": "ok", "adapters": 3, "queued": 0}
    listed = {a["domain"]: a for a in client.get("/v1/adapters").json()}
    assert listed["news"]["method"] == "lora" and listed["ecommerce"]["method"] == "adapter"
    assert listed["news"]["max_candidates"] is None and listed["news"]["task"] == "preference"  # any number
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/recommend", "/v1/score", "/v1/adapters", "/health"} <= set(paths)
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"domain": "sports", "candidates": ["a"]}, 404, "unknown domain 'sports'; loaded: news, ecommerce, video"),
    ({"domain": "news", "candidates": []}, 422, "at least 1 item"),
    ({"domain": "news", "candidates": ["a"] * (MAX_CANDIDATES + 1)}, 422, f"at most {MAX_CANDIDATES} items"),
    ({"domain": "news", "history": ["h"] * (MAX_HISTORY + 1), "candidates": ["a"]}, 422, f"at most {MAX_HISTORY}"),
    ({"domain": "news", "candidates": ["a"], "k": 0}, 422, "greater than or equal to 1"),
    ({"domain": "news", "history": [{"title": "x", "rating": 9}], "candidates": ["a"]}, 422, "less than or equal to 5"),
    ({"domain": "news", "candidates": ["a"], "colour": "red"}, 422, "Extra inputs are not permitted"),
    ({"candidates": ["a"]}, 422, "Field required"),
])
def test_bad_requests_get_clear_4xx(served, body, status, needle):
    _, client = served
    r = client.post("/v1/recommend", json=body)
    assert r.status_code == status and needle in r.text, r.text


def test_body_size_is_bounded_with_or_without_content_length(served):
    _, client = served
    big = {"domain": "news", "candidates": ["x" * 290] * 1000}
    r = client.post("/v1/recommend", json=big)
    assert r.status_code == 413 and str(MAX_BODY_BYTES) in r.text
    chunks = (b"x" * 8192 for _ in range(MAX_BODY_BYTES // 8192 + 2))  # a generator: sent chunked
    r = client.post("/v1/recommend", content=chunks, headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and "--max-body" in r.json()["detail"]


@pytest.mark.parametrize("case", [c for c in load_serve.bad_cases(MAX_BODY_BYTES, 1.0) if not c.get("slow")],
                         ids=lambda c: c["name"])
def test_fuzz_cases_get_a_clear_4xx(served, case):
    """The load test's hostile requests (wrong types, huge strings, deep nesting, 10k candidates, ...)."""
    _, client = served
    if case.get("method") == "GET":
        r = client.get(case["path"])
    else:
        content = ((b"x" * 8192 for _ in range(0, case["chunked"], 8192)) if case.get("chunked") else
                   case["body"] if isinstance(case["body"], bytes) else case["body"].encode())
        r = client.post(case["path"], content=content, headers={"content-type": "application/json"})
    msg = http_load.message(r.text)
    assert r.status_code == case["status"] and case["needle"].lower() in msg.lower(), r.text[:500]
    assert "\n" not in msg and len(msg) < 300  # one line, without the input echoed back


def _random_value(rng: random.Random, depth: int = 0):
    kinds = ["int", "float", "str", "bool", "none", "title"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds + (["many"] if depth == 0 else []))
    if kind == "many":  # one too many, or a lot of one thing
        return [rng.choice(NEWS)] * 501 if rng.random() < 0.5 else [_random_value(rng, 4)] * 200
    if kind == "int":
        return rng.choice([0, -1, 1, 3, 10**30, rng.randint(-1000, 1000)])
    if kind == "float":
        return rng.choice([float("nan"), float("inf"), -0.0, 4.5, 1e308])
    if kind == "str":
        return rng.choice(["", " ", "\u0000", "\ud800", "x" * rng.choice([1, 301, 5000]), "news", "é" * 10])
    if kind == "title":
        return rng.choice(NEWS)
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 3]))]
    if kind == "dict":
        keys = ["title", "liked", "rating", "category", "item_id", "other"]
        return {k: _random_value(rng, depth + 1) for k in rng.sample(keys, rng.randint(0, 4))}
    return {"bool": True, "none": None}[kind]


def test_random_json_never_gets_a_5xx(served):
    _, client = served
    rng = random.Random(0)
    statuses = set()
    for _ in range(150):
        path = rng.choice(["/v1/score", "/v1/recommend"])
        key = "items" if path == "/v1/score" else "candidates"
        body = {"domain": rng.choice(["news", "video"]), "history": rng.sample(NEWS, 3), key: rng.sample(NEWS, 3)}
        for field in rng.sample(["domain", "history", key, "k", "colour", "items"], rng.randint(0, 3)):
            body[field] = _random_value(rng)  # a valid request with up to 3 fields fuzzed
        content = json.dumps(body)
        assert len(content) < MAX_BODY_BYTES  # the fuzz is about JSON content; 413 is tested apart
        r = client.post(path, content=content, headers={"content-type": "application/json"})
        statuses.add(r.status_code)
        assert r.status_code < 500, (body, r.text[:300])
        if r.status_code != 200:
            assert http_load.message(r.text), r.text
    assert {200, 422} <= statuses  # the fuzzer reaches the model and the validator


def test_full_queue_gets_503_with_retry_after(served):
    recs, _ = served
    app = create_app(recs, Limits(max_queue=1, timeout=30))
    entered, gate = threading.Event(), threading.Event()
    body = {"domain": "news", "items": NEWS[:3]}
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        try:
            with before_each_layer(recs, lambda: (entered.set(), gate.wait(30))):
                first = pool.submit(client.post, "/v1/score", json=body)
                assert entered.wait(30)  # the first request holds the model
                second = pool.submit(client.post, "/v1/score", json=body)
                wait_for(lambda: app.state.batcher.queued == 1)  # the second waits in the queue
                r = client.post("/v1/score", json=body)  # the third finds the queue full
                assert r.status_code == 503, r.text
                assert int(r.headers["Retry-After"]) >= 1 and "--max-queue 1" in r.json()["detail"]
                assert client.get("/health").json()["queued"] == 1
                gate.set()
                assert first.result(30).status_code == 200 and second.result(30).status_code == 200
        finally:
            gate.set()
    assert app.state.batcher.stats["rejected"] == 1


def test_timeout_is_504_and_stops_the_model_work(served):
    recs, _ = served
    body = {"domain": "news", "history": NEWS[:5], "items": NEWS[5:45]}  # several forwards
    calls = []
    with before_each_layer(recs, lambda: calls.append(1)):
        recs["news"].score(NEWS[:5], NEWS[5:45])
    full = len(calls)
    assert full >= 4
    app = create_app(recs, Limits(timeout=0.5))
    calls.clear()
    with TestClient(app) as client:
        with before_each_layer(recs, lambda: (calls.append(1), time.sleep(0.3))):
            start = time.monotonic()
            r = client.post("/v1/score", json=body)
            assert r.status_code == 504 and "0.5 s request timeout" in r.json()["detail"], r.text
            assert time.monotonic() - start < 2
            wait_for(lambda: not app.state.batcher._running, 5)  # the call stopped at its next layer
        assert len(calls) <= 3 < full  # not run to its end
        assert app.state.batcher.stats["interrupted"] == 1
        assert client.post("/v1/score", json=body).status_code == 200  # and the model is free again


def test_a_request_that_times_out_in_the_queue_never_runs(served):
    recs, _ = served
    app = create_app(recs, Limits(timeout=0.5))
    entered, gate = threading.Event(), threading.Event()
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        try:
            with before_each_layer(recs, lambda: (entered.set(), gate.wait(30))):
                first = pool.submit(client.post, "/v1/score", json={"domain": "news", "items": NEWS[:2]})
                assert entered.wait(30)
                second = pool.submit(client.post, "/v1/score", json={"domain": "video", "items": NEWS[:2]})
                assert second.result(30).status_code == 504 and first.result(30).status_code == 504
                gate.set()
                wait_for(lambda: not app.state.batcher._running, 5)
        finally:
            gate.set()
    stats = app.state.batcher.stats
    assert stats["requests"] == 1 and stats["interrupted"] == 1  # only the first ever reached the model


def _python_history(history: list) -> list:
    return [(h["title"], False) if isinstance(h, dict) else h for h in history]


def test_batched_requests_equal_each_request_alone(served):
    """Requests for interleaved adapters, queued while the model is busy: each adapter's requests run
    as one micro-batch, and every score equals the request scored alone (1e-5)."""
    recs, _ = served
    rng = random.Random(3)
    order = ["news", "ecommerce", "video", "news", "news", "video", "ecommerce", "news", "video", "ecommerce"]
    requests = []
    for i, domain in enumerate(order):
        titles = rng.sample(NEWS, 20)
        history = [t if j % 3 else {"title": t, "liked": False} for j, t in enumerate(titles[:i % 6])]
        path, key = ("/v1/score", "items") if i % 3 else ("/v1/recommend", "candidates")
        requests.append((path, {"domain": domain, "history": history, key: titles[6:6 + 2 + i], "k": 50}))
        if path == "/v1/score":
            del requests[-1][1]["k"]
    app = create_app(recs, Limits(max_queue=64))
    entered, gate = threading.Event(), threading.Event()
    with TestClient(app) as client, ThreadPoolExecutor(len(requests) + 1) as pool:
        try:
            with before_each_layer(recs, lambda: (entered.set(), gate.wait(30))):
                blocker = pool.submit(client.post, "/v1/score", json={"domain": "news", "items": NEWS[:2]})
                assert entered.wait(30)
                futures = [pool.submit(client.post, path, json=body) for path, body in requests]
                wait_for(lambda: app.state.batcher.queued == len(requests))
                gate.set()
                responses = [f.result(60) for f in futures]
                assert blocker.result(30).status_code == 200
        finally:
            gate.set()
    stats = app.state.batcher.stats
    assert stats["requests"] == len(requests) + 1 and stats["batches"] == 1 + len(set(order))
    for (path, body), r in zip(requests, responses):
        assert r.status_code == 200, r.text
        items = body.get("items") or body.get("candidates")
        alone = recs[body["domain"]].score(_python_history(body["history"]), items)
        if path == "/v1/score":
            got = r.json()["scores"]
        else:
            by_title = {x["title"]: x["score"] for x in r.json()["items"]}
            got = [by_title[t] for t in items]
        assert max(abs(a - b) for a, b in zip(got, alone)) < 1e-5, body["domain"]


@pytest.mark.parametrize("name", LOADED)
def test_score_many_equals_score(served, name):
    """The batched Python API: histories of different lengths (padded prefixes), one call."""
    recs, _ = served
    requests = [(NEWS[:n], NEWS[10 + n:14 + 2 * n]) for n in (0, 1, 4, 9)]
    together = recs[name].score_many(requests)
    for (history, items), got in zip(requests, together):
        alone = recs[name].score(history, items)
        assert len(got) == len(items) and max(abs(a - b) for a, b in zip(got, alone)) < 1e-5


def test_serve_flags_have_help_and_check_their_range():
    from typer.testing import CliRunner

    from recpeft.cli.app import app

    text = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output
    for flag in ("--max-queue", "--timeout", "--batch", "--no-batch", "--max-batch", "--max-body",
                 "--client-timeout", "--max-connections"):
        assert flag in text
    assert CliRunner().invoke(app, ["serve", "--max-queue", "0"]).exit_code == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _adapter_folder(tiny_adapters, tmp_path, names=("news", "video")):
    folder = tmp_path / "adapters"
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(tiny_adapters[name])
    return folder


def test_real_uvicorn_server(tiny_adapters, tmp_path):
    folder = _adapter_folder(tiny_adapters, tmp_path)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "recpeft", "serve", "--adapters", str(folder), "--host",
                             "127.0.0.1", "--port", str(port), "--client-timeout", "1", "--max-body", "4096"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, (
                proc.stdout.read() if proc.poll() is not None else "timeout")
            time.sleep(0.3)
        r = httpx.post(f"{url}/v1/recommend", json={"domain": "video", "history": [NEWS[0]], "candidates": NEWS[:8],
                                                     "k": 2}, timeout=30)
        assert r.status_code == 200 and len(r.json()["items"]) == 2
        assert [a["domain"] for a in httpx.get(f"{url}/v1/adapters").json()] == ["news", "video"]
        assert httpx.post(f"{url}/v1/score", json={"domain": "nope", "items": ["a"]}).status_code == 404
        chunked = httpx.post(f"{url}/v1/score", content=(b"x" * 1000 for _ in range(10)))
        assert chunked.status_code == 413 and "4096" in chunked.text
        import asyncio

        status, text, seconds = asyncio.run(http_load.slow_send(url, "/v1/score", b'{"domain": "news", '
                                                                 b'"items": ["a"]}', 3.0))
        assert status == 408 and "body not received within 1 s (--client-timeout)" in text and seconds < 3.0
        status, text, seconds = asyncio.run(http_load.slow_send(url, "/v1/score", b'{"domain": "news", '
                                                                 b'"items": ["a"]}', 3.0, head=True))
        assert status == 408 and "headers not received within 1 s" in text and seconds < 3.0
        status, _, _ = asyncio.run(http_load.slow_send(url, "/v1/score", b'{"domain": "news", "items": ["a"]}', 0.3,
                                                        head=True))
        assert status == 200  # slow, but within the client timeout
        with socket.create_connection(("127.0.0.1", port)) as idle:  # connects, never sends a byte
            idle.settimeout(10)
            start = time.monotonic()
            assert idle.recv(100) == b"" and time.monotonic() - start < 5  # closed by the server
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_load_test_quick_mode(tiny_adapters, tmp_path):
    """experiments/load_serve.py --quick: real servers (batching on and off) on 127.0.0.1, 500 mixed
    requests from 16 clients; no 5xx, every bad request its 4xx with a clear message."""
    folder = _adapter_folder(tiny_adapters, tmp_path, LOADED)
    out = tmp_path / "load.json"
    report = load_serve.main(["--quick", "--adapters", str(folder), "--out", str(out)])
    assert json.loads(out.read_text()) == report
    hostile = report["hostile"]
    assert report["count_5xx"] == 0 and hostile["no_response"] == 0
    assert hostile["requests"] >= 500 and hostile["clients"] >= 16
    assert hostile["every_bad_request_clear_4xx"], hostile["bad"]
    assert all(400 <= int(s) < 500 for e in hostile["bad"].values() for s in e["statuses"])
    assert hostile["valid"]["ok"] == hostile["valid"]["requests"] > 0
    for mode in ("on", "off"):
        result = report["batching"][mode]
        assert set(result["levels"]) == {"1", "4", "16"} and result["alive_after"]
        assert all(lv["ok"] == lv["requests"] and lv["p99_ms"] >= lv["p50_ms"] > 0 for lv in result["levels"].values())
    assert report["peak_rss_mb"] > 0 and set(report["batching_gain"]) == {"1", "4", "16"}
