"""Interactive sessions against a simulated user (issue 17.3): hit@k after 1..T turns, for the adapter's
critique-following session, its one-shot ranking paged without feedback, and non-LLM filtering sessions.

    python experiments/session_sim.py --adapter adapters/experiments/ml100k_session/critique \
        --data ../shared/data/ml-100k --format movielens [--users 300] [--negatives 99] [-k 10] [--turns 5]

The protocol is recpeft/evaluation/sessions.py's docstring. Users: a seeded subset of the ranking test
split (every user's true next item, with `--negatives` seeded negatives). The baselines fit on the same
train period. Writes experiments/results/session_sim.json (or --out) and prints the table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", required=True, help="a ranking adapter (ideally trained with --critique-share)")
    p.add_argument("--data", help="data path [default: the adapter's training data]")
    p.add_argument("--format", help="data format [default: the adapter's]")
    p.add_argument("--users", type=int, default=300, help="simulated users (a seeded subset of the test split)")
    p.add_argument("--negatives", type=int, default=99, help="negatives beside each user's target")
    p.add_argument("-k", type=int, default=10, help="items shown per turn")
    p.add_argument("--turns", type=int, default=5, help="turns per session")
    p.add_argument("--seed", type=int, default=42, help="seed of the negatives and the user subset")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = all cores)")
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "session_sim.json")
    args = p.parse_args(argv)

    import torch
    from tqdm import tqdm

    import recpeft
    from recpeft.artifacts import write_json_atomic
    from recpeft.baselines import REGISTRY
    from recpeft.baselines.base import FitContext, train_interactions
    from recpeft.data import load_data
    from recpeft.evaluation.sessions import Simulated, hit_rates, paged, simulate_filter, simulate_llm
    from recpeft.runtime import describe_machine
    from recpeft.tasks.examples import ranking_examples, subsample

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    rec = recpeft.load(args.adapter)
    tc = rec.meta.train_config
    data = load_data(rec.domain.name, args.data or tc.get("data"), args.format or tc.get("format"))
    splits = ranking_examples(data, negatives=args.negatives, seed=args.seed)
    users = subsample(splits["test"], args.users, args.seed)
    rows: dict[str, list[Simulated]] = {}
    with tqdm(desc="llm sessions (candidates scored)", unit="cand", dynamic_ncols=True) as bar:
        rows["llm"], first = simulate_llm(rec, data, users, args.k, args.turns, progress=bar.update)
    rows["one_shot"] = [Simulated(paged(s, 0, args.k, args.turns), []) for s in first]
    for name in ("popularity", "item_knn"):
        model = REGISTRY[name]()
        model.fit(FitContext(data, "ranking", train_interactions(data, "ranking"), splits["train"],
                             history_len=rec.history_len, seed=args.seed))
        rows[f"filter_{name}"] = simulate_filter(data, users, model.score_ranking(users), args.k, args.turns)
    table = {}
    for name, sims in rows.items():
        rates = hit_rates(sims, args.turns)
        table[name] = [{"turns": t + 1, f"hit@{args.k}": r, "ci95": 1.96 * math.sqrt(r * (1 - r) / len(sims))}
                       for t, r in enumerate(rates)]
    result = {
        "command": "python experiments/session_sim.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": describe_machine(),
        "adapter": {"path": str(args.adapter), "task": tc.get("task"), "critique_share": tc.get("critique_share", 0.0),
                    "train_samples": tc.get("train_samples"), "seed": tc.get("seed")},
        "data": data.name, "users": len(users), "negatives": args.negatives, "k": args.k, "turns": args.turns,
        "seed": args.seed, "seconds": round(time.time() - start, 1), "hit_rates": table,
        "example_critiques": [r.critiques for r in rows["llm"][:3]],
    }
    write_json_atomic(args.out, result)
    print(f"{len(users)} simulated users, 1 + {args.negatives} candidates, {args.k} shown per turn:")
    print(f"  {'session':<22}" + "".join(f"{'turn ' + str(t + 1):>10}" for t in range(args.turns)))
    for name, cells in table.items():
        print(f"  {name:<22}" + "".join(f"{c[f'hit@{args.k}']:>10.3f}" for c in cells))
    print(f"(95% interval about ±{max(c['ci95'] for cs in table.values() for c in cs):.3f}); wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
