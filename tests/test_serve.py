"""`recpeft serve`: the FastAPI app through TestClient, and one real uvicorn server on 127.0.0.1."""

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient

import recpeft
from recpeft.data.csvdir import load_sample
from recpeft.serve import MAX_BODY_BYTES, MAX_CANDIDATES, MAX_HISTORY, create_app

from conftest import ROOT

NEWS = [i.title for i in load_sample("news").items.values()]


@pytest.fixture(scope="module")
def served(tiny_adapters):
    recs = recpeft.load_many({k: tiny_adapters[k] for k in ("news", "ecommerce")})
    return recs, TestClient(create_app(recs))


def test_recommend_and_score_equal_the_python_api(served):
    recs, client = served
    history = [NEWS[0], {"title": NEWS[1], "liked": False}, {"title": NEWS[2], "rating": 4}]
    r = client.post("/v1/recommend", json={"domain": "news", "history": history, "candidates": NEWS[5:25], "k": 3})
    assert r.status_code == 200, r.text
    got = r.json()["items"]
    want = recs["news"].rank([NEWS[0], (NEWS[1], False), (NEWS[2], 4.0)], NEWS[5:25], k=3)
    assert [g["title"] for g in got] == [i.title for i, _ in want]
    assert all(abs(g["score"] - s) < 1e-6 for g, (_, s) in zip(got, want))
    r = client.post("/v1/score", json={"domain": "ecommerce", "history": [], "items": [{"title": "Desk", "category": "Home"}]})
    assert r.status_code == 200 and 0 < r.json()["scores"][0] < 1
    assert abs(r.json()["scores"][0] - recs["ecommerce"].score([], [recpeft.data.schema.Item("Desk", "Desk", "Home")])[0]) < 1e-6


def test_adapters_health_and_openapi(served):
    _, client = served
    assert client.get("/health").json() == {"status": "ok", "adapters": 2}
    listed = {a["domain"]: a for a in client.get("/v1/adapters").json()}
    assert listed["news"]["method"] == "lora" and listed["ecommerce"]["method"] == "adapter"
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/recommend", "/v1/score", "/v1/adapters", "/health"} <= set(paths)
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"domain": "sports", "candidates": ["a"]}, 404, "unknown domain 'sports'; loaded: news, ecommerce"),
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


def test_body_size_is_bounded(served):
    _, client = served
    big = {"domain": "news", "candidates": ["x" * 290] * 1000}
    r = client.post("/v1/recommend", json=big)
    assert r.status_code == 413 and str(MAX_BODY_BYTES) in r.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_uvicorn_server(tiny_adapters, tmp_path):
    folder = tmp_path / "adapters"
    folder.mkdir()
    (folder / "news").symlink_to(tiny_adapters["news"])
    (folder / "video").symlink_to(tiny_adapters["video"])
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "recpeft", "serve", "--adapters", str(folder), "--host",
                             "127.0.0.1", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else "timeout"
            time.sleep(0.3)
        r = httpx.post(f"{url}/v1/recommend", json={"domain": "video", "history": [NEWS[0]], "candidates": NEWS[:8],
                                                     "k": 2}, timeout=30)
        assert r.status_code == 200 and len(r.json()["items"]) == 2
        assert [a["domain"] for a in httpx.get(f"{url}/v1/adapters").json()] == ["news", "video"]
        assert httpx.post(f"{url}/v1/score", json={"domain": "nope", "items": ["a"]}).status_code == 404
    finally:
        proc.terminate()
        proc.wait(timeout=20)
