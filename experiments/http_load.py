"""HTTP client primitives for experiments/load_serve.py: timed requests (plain, trickled, bounded
concurrency) and the summaries of their results. Kept apart from the load test itself so that the tests of
the server (tests/test_serve.py) can use the same clients."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import httpx


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def send(client: httpx.AsyncClient, path: str, **kwargs) -> tuple[int, str, float]:
    start = time.perf_counter()
    r = await client.post(path, **kwargs)
    return r.status_code, r.text, time.perf_counter() - start


async def slow_send(url: str, path: str, body: bytes, seconds: float, head: bool = False) -> tuple[int, str, float]:
    """A client that trickles its body (with head=True: its headers too) over `seconds`, reading the
    answer whenever it comes."""
    host, port = url.rsplit("//", 1)[1].split(":")
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, int(port))
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    if head:
        body = request + body
    else:
        writer.write(request)

    async def trickle():
        pieces = 10
        for i in range(pieces):
            writer.write(body[i * len(body) // pieces:(i + 1) * len(body) // pieces])
            await writer.drain()
            await asyncio.sleep(seconds / pieces)

    feeder = asyncio.create_task(trickle())
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split()[1])
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        text = (await reader.readexactly(length) if length is not None else await reader.read()).decode()
    finally:
        feeder.cancel()
        writer.close()
    return status, text, time.perf_counter() - start


def message(text: str) -> str:
    """The one-line reason of an error response ('error' for validation, else 'detail')."""
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()
    if isinstance(data, dict):
        msg = data.get("error", data.get("detail"))
        return msg if isinstance(msg, str) else json.dumps(msg)
    return text.strip()


async def pool(jobs: list, clients: int) -> list:
    """Run the coroutine factories in `jobs` with `clients` at a time; results in job order."""
    results: list = [None] * len(jobs)
    queue: asyncio.Queue = asyncio.Queue()
    for i, job in enumerate(jobs):
        queue.put_nowait((i, job))

    async def worker():
        while not queue.empty():
            i, job = queue.get_nowait()
            start = time.perf_counter()
            try:
                results[i] = await job()
            except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                results[i] = (0, f"no response: {type(exc).__name__}: {exc}", time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(clients)))
    return results


def summary(latencies: list[float]) -> dict:
    """ok: how many; p50 and p99 in ms."""
    ms = [1000 * x for x in latencies]
    return {"ok": len(ms), "p50_ms": round(percentile(ms, 50), 1) if ms else None,
            "p99_ms": round(percentile(ms, 99), 1) if ms else None}


def count(statuses: list[int]) -> dict[str, int]:
    """{"200": n, ...}; status 0 = no response (the connection failed)."""
    return dict(sorted(Counter(map(str, statuses)).items()))
