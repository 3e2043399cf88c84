"""Ranking evaluation: 16 users per cached-prefix call against one user at a time, side by side in one run.

    python experiments/bench_ranking_eval.py [--users 32] [--repeats 2] [--data ../shared/data/ml-100k] [--out PATH]

The profile task's test users on ML-100k (1 + 19 candidates each), SmolLM2-135M untrained (the speed does
not depend on the adapter). "one user" runs `RankingTask._cached_scores` on one user per call, the path
before users were grouped; "grouped" on USERS_PER_CALL users per call, the path `evaluate` takes now. The
modes alternate (ABBA) so a drifting host speed hits both alike; both must give the same scores (the max
|difference| is reported). Writes results/bench_ranking_eval.json (or --out).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "bench_ranking_eval.json")
    args = p.parse_args(argv)

    import torch

    from recpeft.artifacts import write_json_atomic
    from recpeft.config import TrainConfig
    from recpeft.data import load_data
    from recpeft.domains import get_domain
    from recpeft.models.hub import resolve
    from recpeft.models.load import load_base
    from recpeft.runtime import describe_machine
    from recpeft.tasks import get_task
    from recpeft.tasks.ranking import USERS_PER_CALL

    model, tok, _ = load_base(str(resolve("smollm2-135m")), bits=32)
    model.eval()
    data = load_data("video", args.data, "movielens")
    task = get_task("profile", data, get_domain("video"), tok, TrainConfig(task="profile"))
    users = task.eval_set("test", args.users).examples

    def one_at_a_time() -> list[list[float]]:
        return [s for ex in users for s in task._cached_scores(model, [ex])]

    def grouped() -> list[list[float]]:
        return [s for i in range(0, len(users), USERS_PER_CALL)
                for s in task._cached_scores(model, users[i:i + USERS_PER_CALL])]

    seconds: dict[str, list[float]] = {"one_user": [], "grouped": []}
    scores = {}
    grouped()  # warm-up
    for r in range(args.repeats):
        for name in (("one_user", "grouped") if r % 2 == 0 else ("grouped", "one_user")):
            start = time.perf_counter()
            scores[name] = one_at_a_time() if name == "one_user" else grouped()
            seconds[name].append(time.perf_counter() - start)
    diff = max(abs(a - b) for x, y in zip(scores["one_user"], scores["grouped"]) for a, b in zip(x, y))
    candidates = sum(len(ex.candidates) for ex in users)
    result = {
        "command": "python experiments/bench_ranking_eval.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {**describe_machine(), "torch_threads": torch.get_num_threads()},
        "users": len(users), "candidates": candidates, "users_per_call": USERS_PER_CALL, "seconds": seconds,
        "candidates_per_second": {k: candidates / statistics.fmean(v) for k, v in seconds.items()},
        "speedup": statistics.fmean(seconds["one_user"]) / statistics.fmean(seconds["grouped"]),
        "max_abs_score_difference": diff,
    }
    write_json_atomic(args.out, result)
    print(f"{len(users)} users x {candidates // len(users)} candidates: one user per call "
          f"{statistics.fmean(seconds['one_user']):.1f} s, {USERS_PER_CALL} per call "
          f"{statistics.fmean(seconds['grouped']):.1f} s: {result['speedup']:.2f}x; max |score diff| {diff:.1e}")
    return result


if __name__ == "__main__":
    main()
