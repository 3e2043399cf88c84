"""Real-time ranking: naive per-candidate forward vs the cached history prefix, same process, same inputs.

    python experiments/bench_realtime.py [--model smollm2-135m] [--adapter adapters/video]
                                         [--candidates 100] [--history 10] [--naive-reps 3] [--cached-reps 10]

One user with a `--history`-item history (video sample), `--candidates` candidates. The naive path runs
one full forward (prefix + candidate) per candidate; the cached path encodes the prefix once and scores
the candidates in batches on its KV cache. Prints p50/p95 latency of each, the speed-up, the largest
probability difference between the two, and the FLOP floor of the cached path:
2 x parameters x candidate-specific tokens / (fp32 GFLOP/s of a large torch.mm measured in this run).
Writes experiments/results/realtime.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n torch.mm over reps runs (after a warm-up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def timed(fn, reps: int) -> tuple[list[float], object]:
    out, times = None, []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapter", default=None, help="adapter folder; default: the bare base model")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--history", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100, help="candidates per cached batch")
    parser.add_argument("--naive-reps", type=int, default=3)
    parser.add_argument("--cached-reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=RESULTS / "realtime.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from recpeft.data.formats.csvdir import load_sample
    from recpeft.data.schema import Item
    from recpeft.domains import get_domain
    from recpeft.serving.prefix import SENTINEL, cached_answer_logits, naive_answer_logits, split_prompt
    from recpeft.tasks.prompts import PreferencePrompt, answer_token_ids, render, user_message

    if args.adapter:
        import recpeft

        rec = recpeft.load(args.adapter, bits=32)
        model, tok = rec.bank.model, rec.tokenizer
        bank_ctx = rec.bank.use(rec.name)
        bank_ctx.__enter__()
    else:
        from recpeft.models.load import load_base

        model, tok, _ = load_base(args.model, bits=32)
    model.eval()
    data, domain = load_sample("video"), get_domain("video")
    user = data.interactions[0].user_id
    events = [x for x in data.interactions if x.user_id == user][:args.history]
    seen = {x.item_id for x in events}
    cands = [i for i in data.items.values() if i.item_id not in seen][:args.candidates]
    prompt = PreferencePrompt([data.items[x.item_id] for x in events if x.liked],
                              [data.items[x.item_id] for x in events if not x.liked], Item(SENTINEL, SENTINEL))
    split = split_prompt(tok, render(tok, user_message(prompt, domain)))
    suffixes = [split.suffix_ids(tok, c.text()) for c in cands]
    answers, pad = answer_token_ids(tok), tok.pad_token_id

    def naive():
        return naive_answer_logits(model, split.prefix_ids, suffixes, answers, pad, batch_size=1)

    def cached():
        return cached_answer_logits(model, split.prefix_ids, suffixes, answers, pad, args.batch_size)

    gflops = matmul_gflops()
    cached()  # warm-up (allocator, kernels)
    naive_t, naive_out = timed(naive, args.naive_reps)
    cached_t, cached_out = timed(cached, args.cached_reps)
    gflops = max(gflops, matmul_gflops())  # measured before and after, the better of the two
    diff = float((torch.softmax(naive_out, -1) - torch.softmax(cached_out, -1)).abs().max())
    params = sum(p.numel() for p in model.parameters())
    suffix_tokens = sum(len(s) for s in suffixes)
    floor = 2 * params * suffix_tokens / (gflops * 1e9)
    result = {
        "model": args.model if not args.adapter else f"{args.model} + {args.adapter}", "parameters": params,
        "candidates": len(cands), "history_items": len(events), "prefix_tokens": len(split.prefix_ids),
        "candidate_tokens_total": suffix_tokens, "threads": args.threads, "batch_size": args.batch_size,
        "naive_p50_s": pct(naive_t, 0.5), "naive_p95_s": pct(naive_t, 0.95), "naive_runs": naive_t,
        "cached_p50_s": pct(cached_t, 0.5), "cached_p95_s": pct(cached_t, 0.95), "cached_runs": cached_t,
        "speedup_p50": pct(naive_t, 0.5) / pct(cached_t, 0.5), "matmul_gflops_fp32": gflops,
        "flop_floor_s": floor, "cached_p50_over_floor": pct(cached_t, 0.5) / floor,
        "max_abs_prob_diff": diff, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "torch": torch.__version__,
    }
    print(f"{len(cands)} candidates, {len(events)}-item history: prefix {len(split.prefix_ids)} tokens, "
          f"candidate suffixes {suffix_tokens} tokens in all; {params:,} parameters; {args.threads} threads")
    print(f"naive  (1 forward / candidate): p50 {result['naive_p50_s']:.3f} s  p95 {result['naive_p95_s']:.3f} s")
    print(f"cached (prefix once, batches):  p50 {result['cached_p50_s']:.3f} s  p95 {result['cached_p95_s']:.3f} s")
    print(f"speed-up {result['speedup_p50']:.1f}x; FLOP floor {floor:.3f} s at {gflops:.1f} GFLOP/s "
          f"(torch.mm fp32) -> cached p50 = {result['cached_p50_over_floor']:.2f}x the floor; "
          f"max |P naive - P cached| {diff:.1e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
