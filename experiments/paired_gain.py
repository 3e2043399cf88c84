"""Is one group of runs better than another on the same test examples? A paired bootstrap of the mean AUC gain.

    python experiments/paired_gain.py sample_fusion --base text-seed42 text-seed43 text-seed44 \
        --new anchor-ctx-lr10-seed42 anchor-ctx-lr10-seed43 anchor-ctx-lr10-seed44

The runs of an experiment's results JSON (experiments/run.py keeps every run's per-example scores) are
paired by position (same seed), and all score the same test examples. Each bootstrap draw resamples the
examples once and recomputes every run's AUC on them: the interval is the test set's sampling noise of the
mean gain over these seeds (pairing removes what both groups share); the seeds' own spread shows in the
gain per seed. Prints the mean gain, its 95% interval, and the gain per seed; writes nothing.
Examples of one user (the news sample's 600 test pairs come from 300 users, two each) share that user's
history, so users are resampled, each with all their examples, when the outputs name them (preference
runs from 2026-11-30 on; older runs borrow them from a compared run that names them, or else from any
run of the experiment with the same labels); outputs that all predate user ids are resampled example by
example, which gives a somewhat narrower interval. The output says which ("resampled").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _auc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC of each row of scores [runs, n] against labels [n] (ties count half), by ranks."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=1)
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return (ranks[:, pos].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _groups(users: list[str] | None, n: int) -> list[np.ndarray]:
    """The units a bootstrap draw resamples: each user's example indices, or each example alone."""
    if users is None:
        return [np.array([i]) for i in range(n)]
    by_user: dict[str, list[int]] = {}
    for i, user in enumerate(users):
        by_user.setdefault(user, []).append(i)
    return [np.array(ix) for ix in by_user.values()]


def _results(name: str) -> Path:
    path = Path(name)
    return path if path.is_file() else ROOT / "experiments" / "results" / f"{name}.json"


def _sample_users(domain: str, labels: list[int], p: argparse.ArgumentParser) -> list[str]:
    """The users of the embedded sample's test pairs, in the order a run with test_samples 0 scores them."""
    from recpeft.data import load_data
    from recpeft.tasks.examples import preference_examples

    test = preference_examples(load_data(domain, None, None))["test"]
    if [e.label for e in test] != labels:
        p.error(f"the runs did not score the {domain} sample's {len(test)} test pairs in order: no --users-of")
    return [e.user_id for e in test]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", help="an experiment name (experiments/results/NAME.json) or a JSON path")
    p.add_argument("--base", nargs="+", required=True,
                   help="the reference runs, one per seed; OTHER:RUN takes RUN from the experiment OTHER")
    p.add_argument("--new", nargs="+", required=True, help="the compared runs, in the same seed order (OTHER:RUN too)")
    p.add_argument("--users-of", metavar="DOMAIN",
                   help="outputs saved before they named users: take them from the embedded DOMAIN sample's test "
                        "pairs (all of them, in order; refused unless their labels are the outputs')")
    p.add_argument("--draws", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if len(args.base) != len(args.new):
        p.error(f"--base has {len(args.base)} runs and --new {len(args.new)}: pair them by seed")
    path = _results(args.experiment)
    own = json.loads(path.read_text())["runs"]  # read once: the unqualified runs, and users to borrow
    runs, missing = {}, []
    for ref in args.base + args.new:
        where, _, name = ref.rpartition(":")
        found = {r["name"]: r for r in (json.loads(_results(where).read_text())["runs"] if where else own)}
        if name not in found or "outputs" not in found[name]:
            missing.append(ref)
        else:
            runs[ref] = found[name]
    if missing:
        p.error(f"no per-example scores for {', '.join(missing)} (unqualified runs are read from {path})")
    labels = np.array(runs[args.base[0]]["outputs"]["labels"])
    for name in args.base + args.new:
        if runs[name]["outputs"]["labels"] != labels.tolist():
            p.error(f"{name} scored other test examples than {args.base[0]}")
    base = np.array([runs[n]["outputs"]["scores"] for n in args.base])
    new = np.array([runs[n]["outputs"]["scores"] for n in args.new])
    per_seed = _auc(labels, new) - _auc(labels, base)
    # Runs saved before outputs named users borrow them from a run that names them, among those compared or
    # else any other run of the experiment that scored the same labels (the same test examples, in order).
    named = [n for n in args.base + args.new if runs[n]["outputs"].get("users") is not None]
    users = runs[named[0]]["outputs"]["users"] if named else None
    if users is None:
        others = [r["outputs"] for r in own if "users" in r.get("outputs", {})]
        users = next((o["users"] for o in others if o["labels"] == labels.tolist()), None)
    if any(runs[n]["outputs"]["users"] != users for n in named):
        p.error(f"the runs name other users for their examples than {named[0]}")
    if users is None and args.users_of:
        users = _sample_users(args.users_of, labels.tolist(), p)
    groups = _groups(users, len(labels))
    rng = np.random.default_rng(args.seed)
    draws = []
    for _ in range(args.draws):
        idx = np.concatenate([groups[g] for g in rng.integers(0, len(groups), len(groups))])
        if labels[idx].min() == labels[idx].max():
            continue
        draws.append(float((_auc(labels[idx], new[:, idx]) - _auc(labels[idx], base[:, idx])).mean()))
    low, high = np.percentile(draws, [2.5, 97.5])
    out = {"experiment": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path), "examples": len(labels),
           "base": args.base, "new": args.new, "gain_per_seed": [round(float(g), 4) for g in per_seed],
           "mean_gain": round(float(per_seed.mean()), 4), "ci95": [round(float(low), 4), round(float(high), 4)],
           "resampled": "pairs" if users is None else f"users ({len(groups)})"}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
