"""Load test of `recpeft serve` on 127.0.0.1 (never another address): speed with the micro-batcher on
and off side by side, and the server under hostile input.

    python experiments/load_serve.py --adapters adapters/            # the adapters to serve
    python experiments/load_serve.py --model smollm2-135m            # throwaway 2-step adapters on a base
    python experiments/load_serve.py --quick --adapters DIR          # seconds with the tiny test model

For each mode (`--batch`, then `--no-batch`) it starts a real server process and sends valid requests
(`--candidates` per request, a `--history`-item history, adapters mixed) from 1, 4 and 16 concurrent
clients: throughput, p50 and p99. The batch-on server then takes the hostile phase: `--requests`
requests from `--clients` clients, about half valid, the rest fuzzed JSON (wrong types, huge strings,
deep nesting, unknown domains, empty and 10k-candidate lists, ...), oversized bodies (with a
Content-Length and chunked without one) and slow clients that trickle their body. Reports the 5xx
count (target 0), each bad case's statuses and message, the server's peak RSS (VmHWM) and latencies.
Writes experiments/results/load_serve.json (load_serve_quick.json with --quick, or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from http_load import count, message, pool, send, slow_send, summary

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
HOST = "127.0.0.1"  # loopback only, by design: there is no option to change it


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set (VmHWM) so far, in MiB; None where /proc is missing."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Server:
    """`python -m recpeft serve` on HOST:free port, its output in a log file; stopped on exit."""

    def __init__(self, adapters: Path, flags: list[str], log: Path):
        self.port, self.log = free_port(), log
        self.url = f"http://{HOST}:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._out = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "recpeft", "serve", "--adapters", str(adapters),
                                      "--host", HOST, "--port", str(self.port), *flags],
                                     env=env, stdout=self._out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"the server did not start within {timeout:g} s:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        self._out.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


class Requests:
    """Valid request bodies for the served adapters, from their domains' embedded samples (seeded)."""

    def __init__(self, adapters: list[dict], candidates: int, history: int, seed: int = 0):
        from recpeft.data.formats.csvdir import load_sample

        self.rng = random.Random(seed)
        self.domains = [a["domain"] for a in adapters]
        self.titles = {a["domain"]: [i.title for i in load_sample(a["domain_preset"]).items.values()]
                       for a in adapters}
        self.candidates, self.history = candidates, history

    def valid(self) -> tuple[str, dict]:
        domain = self.rng.choice(self.domains)
        titles = self.rng.sample(self.titles[domain], self.candidates + self.history)
        history = [t if i % 3 else {"title": t, "liked": False} for i, t in enumerate(titles[:self.history])]
        if self.rng.random() < 0.5:
            return "/v1/recommend", {"domain": domain, "history": history, "candidates": titles[self.history:], "k": 3}
        return "/v1/score", {"domain": domain, "history": history, "items": titles[self.history:]}


def bad_cases(max_body: int, client_timeout: float) -> list[dict]:
    """The hostile requests: name, how to send it, the status it must get and a phrase its message must hold."""
    j = json.dumps
    ok = {"domain": "news", "candidates": ["a", "b"]}

    def case(name, status, needle, body=None, path="/v1/recommend", **kw):
        return {"name": name, "status": status, "needle": needle, "path": path, "body": body, **kw}

    return [
        case("wrong type: domain is a number", 422, "domain", j({"domain": 5, "candidates": ["a"]})),
        case("wrong type: k is text", 422, "k: Input should be a valid integer", j({**ok, "k": "ten"})),
        case("wrong type: candidates is a string", 422, "valid list", j({"domain": "news", "candidates": "abc"})),
        case("wrong type: history entry is a number", 422, "history", j({**ok, "history": [5]})),
        case("wrong type: null domain", 422, "domain", j({"domain": None, "candidates": ["a"]})),
        case("wrong type: body is a list", 422, "valid dictionary", j([ok])),
        case("NaN rating", 422, "rating", '{"domain": "news", "history": [{"title": "x", "rating": NaN}], '
                                          '"candidates": ["a"]}'),
        case("huge string", 422, "at most 300 characters",
             j({"domain": "news", "candidates": ["x" * (max_body // 2)]})),
        case("huge integer", 400, "not usable JSON",
             '{"domain": "news", "candidates": ["a"], "k": 1' + "0" * 5000 + "}"),
        case("deep nesting", 400, "nested too deeply", "[" * (max_body // 2)),
        case("deep nesting inside a field", 422, "candidates",
             j({"domain": "news", "candidates": [[[[[[[["a"]]]]]]]]})),
        case("lone surrogate", 422, "unicode", '{"domain": "news", "candidates": ["\\ud800"]}'),
        case("blank title", 422, "at least 1 character", j({"domain": "news", "candidates": ["   "]})),
        case("unknown field", 422, "Extra inputs are not permitted", j({**ok, "colour": "red"})),
        case("unknown domain", 404, "unknown domain", j({"domain": "sports", "candidates": ["a"]})),
        case("empty candidate list", 422, "at least 1 item", j({"domain": "news", "candidates": []})),
        case("10k candidates", 422, "at most 500 items", j({"domain": "news", "candidates": ["a"] * 10_000})),
        case("invalid JSON", 422, "JSON decode error", '{"domain": "news", "candidates": ['),
        case("not UTF-8", 400, "UTF-8", b'{"domain": "\xff", "candidates": ["a"]}'),
        case("empty body", 422, "Field required", ""),
        case("wrong method", 405, "Method Not Allowed", path="/v1/score", method="GET"),
        case("oversized body", 413, "--max-body", b"x" * (max_body * 4)),
        case("oversized chunked body", 413, "--max-body", chunked=max_body * 4),
        case("slow body past --client-timeout", 408, "body not received", j(ok), slow=client_timeout * 2),
        case("slow headers past --client-timeout", 408, "headers not received", j(ok), slow=client_timeout * 2,
             head=True),
    ]


async def run_case(client: httpx.AsyncClient, url: str, c: dict) -> tuple[int, str, float]:
    if c.get("slow"):
        return await slow_send(url, c["path"], c["body"].encode(), c["slow"], c.get("head", False))
    if c.get("method") == "GET":
        start = time.perf_counter()
        r = await client.get(c["path"])
        return r.status_code, r.text, time.perf_counter() - start
    if c.get("chunked"):
        async def chunks(total=c["chunked"]):
            for _ in range(0, total, 8192):
                yield b"x" * 8192
        return await send(client, c["path"], content=chunks(), headers={"content-type": "application/json"})
    body = c["body"] if isinstance(c["body"], bytes) else c["body"].encode()
    return await send(client, c["path"], content=body, headers={"content-type": "application/json"})


async def speed(url: str, gen: Requests, level: int, n: int, timeout: float) -> dict:
    """n valid requests from `level` concurrent clients: throughput, p50, p99, statuses."""
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=httpx.Limits(max_connections=level)) as client:
        await pool([lambda p=gen.valid(): send(client, p[0], json=p[1]) for _ in range(2)], 1)  # warm-up
        start = time.perf_counter()
        results = await pool([lambda p=gen.valid(): send(client, p[0], json=p[1]) for _ in range(n)], level)
        wall = time.perf_counter() - start
    latencies = [r[2] for r in results if r[0] == 200]
    return {"requests": len(results), "seconds": round(wall, 3), "throughput_rps": round(len(latencies) / wall, 3),
            **summary(latencies), "statuses": count([r[0] for r in results])}


async def hostile(url: str, gen: Requests, n: int, clients: int, max_body: int, client_timeout: float,
                  timeout: float) -> dict:
    """n requests from `clients` clients: about half valid (a few of them slow but in time), half bad."""
    rng = random.Random(1)
    cases = bad_cases(max_body, client_timeout)
    plan = [("bad", cases[(i // 2) % len(cases)]) if i % 2 else ("valid", None) for i in range(n)]
    for i in range(0, n, max(2, n // 16 * 2)):  # a few valid clients that trickle their body, but in time
        plan[i] = ("valid slow", None)
    rng.shuffle(plan)
    async with httpx.AsyncClient(base_url=url, timeout=timeout + client_timeout + 30,
                                 limits=httpx.Limits(max_connections=clients)) as client:
        def job(kind, c):
            if kind == "valid":
                p = gen.valid()
                return lambda: send(client, p[0], json=p[1])
            if kind == "valid slow":
                p = gen.valid()
                return lambda: slow_send(url, p[0], json.dumps(p[1]).encode(), client_timeout / 3)
            return lambda: run_case(client, url, c)
        start = time.perf_counter()
        results = await pool([job(kind, c) for kind, c in plan], clients)
        wall = time.perf_counter() - start
    statuses = [r[0] for r in results]
    valid = [r for (kind, _), r in zip(plan, results) if kind != "bad"]
    bad = {}
    for (kind, c), (status, text, _) in zip(plan, results):
        if kind != "bad":
            continue
        entry = bad.setdefault(c["name"], {"expected": c["status"], "statuses": [], "message": None, "clear": True})
        entry["statuses"].append(status)
        msg = message(text)
        entry["message"] = entry["message"] or msg
        clear = (status == c["status"] and c["needle"].lower() in msg.lower() and "\n" not in msg
                 and 0 < len(msg) <= 2000 and "Traceback" not in msg)
        entry["clear"] = entry["clear"] and clear
    for entry in bad.values():
        entry["statuses"] = count(entry["statuses"])
    every = summary([r[2] for r in results])
    return {"requests": n, "clients": clients, "seconds": round(wall, 2), "statuses": count(statuses),
            "count_5xx": sum(s >= 500 for s in statuses), "no_response": statuses.count(0),
            "valid": {"requests": len(valid), **summary([r[2] for r in valid if r[0] == 200])},
            "all_p50_ms": every["p50_ms"], "all_p99_ms": every["p99_ms"], "bad": bad,
            "every_bad_request_clear_4xx": all(e["clear"] for e in bad.values())}


def make_adapters(model: str, folder: Path, log) -> Path:
    """Throwaway adapters on `model` (2 training steps each: a load test needs their shape, not their skill)."""
    for domain in ("news", "video"):
        cmd = [sys.executable, "-m", "recpeft", "train", "--domain", domain, "--model", model, "--output-dir",
               str(folder / domain), "--max-steps", "2", "--eval-every", "2", "--eval-samples", "4",
               "--test-samples", "4", "--batch-size", "4", "--patience", "0"]
        log(f"training a throwaway {domain} adapter on {model} ...")
        done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"training failed: {done.stderr.strip().splitlines()[-1:]}")
    return folder


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--adapters", type=Path, help="Folder of adapters to serve (recpeft serve --adapters).")
    ap.add_argument("--model", help="Without --adapters: train throwaway 2-step adapters on this base model.")
    ap.add_argument("--quick", action="store_true", help="Small counts and short timeouts (tiny model, CI).")
    ap.add_argument("--requests", type=int, help="Hostile-phase requests [600; quick 500].")
    ap.add_argument("--clients", type=int, default=16, help="Hostile-phase concurrent clients [16].")
    ap.add_argument("--levels", default="1,4,16", help="Client counts of the speed phase [1,4,16].")
    ap.add_argument("--per-level", type=int, help="Valid requests per level and mode [96; quick 16].")
    ap.add_argument("--candidates", type=int, default=5, help="Candidates per valid request [5].")
    ap.add_argument("--history", type=int, default=10, help="History items per valid request [10].")
    ap.add_argument("--timeout", type=float, default=60.0, help="The server's --timeout [60].")
    ap.add_argument("--client-timeout", type=float, help="The server's --client-timeout [5; quick 1].")
    ap.add_argument("--max-body", type=int, default=256 * 1024, help="The server's --max-body [262144].")
    ap.add_argument("--modes", default="on,off", help="Batcher modes, in order; the first also takes the "
                    "hostile phase [on,off].")
    ap.add_argument("--out", type=Path, help="Results JSON [experiments/results/load_serve(_quick).json].")
    args = ap.parse_args(argv)
    if (args.adapters is None) == (args.model is None):
        ap.error("give either --adapters (a folder of adapters) or --model (to train throwaway ones)")
    requests = args.requests or (500 if args.quick else 600)
    per_level = args.per_level or (16 if args.quick else 96)
    client_timeout = args.client_timeout or (1.0 if args.quick else 5.0)
    levels = [int(x) for x in args.levels.split(",")]
    modes = args.modes.split(",")
    if not modes or set(modes) - {"on", "off"}:
        ap.error("--modes takes on, off or both")
    out = args.out or RESULTS / ("load_serve_quick.json" if args.quick else "load_serve.json")

    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {msg}", flush=True)

    with tempfile.TemporaryDirectory(prefix="load-serve-") as tmp:
        adapters = args.adapters or make_adapters(args.model, Path(tmp) / "adapters", log)
        common = ["--timeout", str(args.timeout), "--client-timeout", str(client_timeout), "--max-body",
                  str(args.max_body), "--max-queue", str(max(32, 2 * max(levels + [args.clients])))]
        report: dict = {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
                        "cores": os.cpu_count(), "adapters": str(adapters), "model": args.model,
                        "quick": args.quick, "candidates": args.candidates, "history": args.history,
                        "levels": levels, "per_level": per_level, "server_flags": common, "batching": {}}
        # Both servers run side by side and take turns at each level (in alternating order), so drift in
        # the machine's speed (other processes, thermal) hits both modes alike.
        servers = {mode: Server(adapters, common + ["--batch" if mode == "on" else "--no-batch"],
                                Path(tmp) / f"server-{mode}.log") for mode in modes}
        try:
            for server in servers.values():
                server.wait_ready()
            log("servers ready")
            first = servers[modes[0]]
            served = httpx.get(f"{first.url}/v1/adapters", timeout=10).json()
            report["base_model"] = served[0]["base_model"]
            gen = Requests(served, args.candidates, min(args.history, 50))
            log(f"valid requests only ({args.candidates} candidates, {args.history}-item history), batching "
                + " vs ".join(modes))
            for mode in modes:
                report["batching"][mode] = {"levels": {}}
            for i, level in enumerate(levels):
                for mode in (modes if i % 2 == 0 else modes[::-1]):
                    r = asyncio.run(speed(servers[mode].url, gen, level, per_level, args.timeout + 30))
                    report["batching"][mode]["levels"][str(level)] = r
                    log(f"  batching {mode:>3}, {level:>3} clients: {r['throughput_rps']:8.2f} req/s  "
                        f"p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms")
            log(f"hostile phase (batching {modes[0]}): {requests} requests from {args.clients} clients")
            report["hostile"] = asyncio.run(hostile(first.url, gen, requests, args.clients, args.max_body,
                                                    client_timeout, args.timeout))
            for mode, server in servers.items():
                report["batching"][mode]["peak_rss_mb"] = peak_rss_mb(server.proc.pid)
                report["batching"][mode]["alive_after"] = (
                    httpx.get(f"{server.url}/health", timeout=10).status_code == 200)
        finally:
            for server in servers.values():
                server.stop()
    report["batching_gain"] = {}
    if len(report["batching"]) == 2:
        on, off = report["batching"]["on"]["levels"], report["batching"]["off"]["levels"]
        report["batching_gain"] = {
            level: {"throughput_x": round(on[level]["throughput_rps"] / off[level]["throughput_rps"], 2)
                    if off[level]["throughput_rps"] else None,
                    "p50_x": round(off[level]["p50_ms"] / on[level]["p50_ms"], 2)
                    if on[level]["p50_ms"] and off[level]["p50_ms"] else None} for level in on}
    report["count_5xx"] = report["hostile"]["count_5xx"] + sum(
        k for m in report["batching"].values() for lv in m["levels"].values() for s, k in lv["statuses"].items()
        if int(s) >= 500)
    rss = [m["peak_rss_mb"] for m in report["batching"].values() if m["peak_rss_mb"] is not None]
    report["peak_rss_mb"] = round(max(rss), 1) if rss else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    h = report["hostile"]
    log(f"5xx responses: {report['count_5xx']} (target 0); hostile phase statuses {h['statuses']} "
        f"(0 = no response: {h['no_response']})")
    for name, e in h["bad"].items():
        log(f"  {'ok ' if e['clear'] else 'BAD'} {name}: {e['statuses']} {e['message'][:100]!r}")
    log(f"hostile phase: valid p50 {h['valid']['p50_ms']} ms, p99 {h['valid']['p99_ms']} ms; "
        f"all p50 {h['all_p50_ms']} ms, p99 {h['all_p99_ms']} ms; peak RSS {report['peak_rss_mb']} MiB")
    for level, g in report["batching_gain"].items():
        log(f"  {level:>3} clients: batching on/off throughput x{g['throughput_x']}, p50 x{g['p50_x']}")
    log(f"written to {out}")
    return report


if __name__ == "__main__":
    main()
