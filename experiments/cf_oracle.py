"""What the collaborative soft tokens carry at most for a simple model: AUCs on real preference test pairs.

    python experiments/cf_oracle.py [--data ../shared/data/ml-100k --format movielens --train-samples 2048]

`--fusion cf` gives the LLM, after each title, a token made from the item's ALS factors (and, with
`--fusion-item-stats`, its training-period log count and like-rate). This script fits logistic regressions
on exactly those vectors, without any text, on the training examples an ml100k_fusion run trains on (the
same seeded subset) and on all of them, and scores every test pair. It separates two questions when the
fused LLM misses: do the vectors carry the signal, and does the LLM read it? Feature sets:
- v: the target item's standardised vector (what a token without context carries);
- v, v*h: h the mean vector of the history items the prompt shows (what --fusion-context history gives);
- v, liked, disliked and their products with v: the prompt splits the history into liked and disliked
  titles, so a model that reads the tokens under those headings could form these;
- the same and the user's like-rate over the shown history (what the prompt's two lists' lengths say).
Items without a vector get zeros (the LLM's learned unknown vector). Prints JSON; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def features(table: dict, ex, kind: str, history_len: int) -> np.ndarray:
    """One test or training example's features of the given kind (see the module docstring)."""
    zero = np.zeros(len(next(iter(table.values()))))

    def mean(items) -> np.ndarray:
        return np.mean([table.get(x.item_id, zero) for x in items], 0) if items else zero

    v, shown = table.get(ex.target.item_id, zero), ex.history[-history_len:]
    if kind == "v":
        return v
    if kind == "v, v*h":
        return np.concatenate([v, v * mean(shown)])
    lk, dk = mean([x for x in shown if x.liked]), mean([x for x in shown if not x.liked])
    both = np.concatenate([v, lk, dk, v * lk, v * dk])
    if kind == "v, liked, disliked":
        return both
    return np.append(both, np.mean([x.liked for x in shown]) if shown else 0.5)


def matrix(table: dict, examples: list, kind: str, history_len: int) -> np.ndarray:
    return np.array([features(table, ex, kind, history_len) for ex in examples])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/ml-100k", help="a data path, or 'none': the embedded sample")
    p.add_argument("--format", default="movielens")
    p.add_argument("--domain", default="video")
    p.add_argument("--train-samples", type=int, default=2048, help="the run's seeded subset (0 = all)")
    p.add_argument("--history-len", type=int, default=10)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from recpeft.data import load_data
    from recpeft.evaluation.metrics import auc
    from recpeft.fusion.vectors import collaborative
    from recpeft.tasks.examples import preference_examples, subsample

    sample = args.data == "none"
    data = load_data(args.domain, None if sample else args.data, None if sample else args.format)
    splits = preference_examples(data)
    test, labels = splits["test"], [ex.label for ex in splits["test"]]
    out: dict = {"data": args.data, "test_pairs": len(test), "train_examples": len(splits["train"]),
                 "history_len": args.history_len}
    # one ALS fit: the vectors are standardised column by column, so the factors without the two statistics
    # columns are exactly what `collaborative(..., item_stats=False)` returns
    vectors = collaborative(data, "preference", "als", args.dim, args.seed, item_stats=True)
    full = vectors.vectors.numpy().astype(np.float64)
    for source, columns in (("cf:als", full[:, :-2]), (vectors.source, full)):
        table = dict(zip(vectors.ids, columns))
        for kind in ("v", "v, v*h", "v, liked, disliked", "v, liked, disliked, user's like-rate"):
            for n in (args.train_samples, 0):
                train = subsample(splits["train"], n, args.seed)
                model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
                model.fit(matrix(table, train, kind, args.history_len), [ex.label for ex in train])
                score = model.predict_proba(matrix(table, test, kind, args.history_len))[:, 1]
                key = f"{source} [{kind}], fitted on {len(train)}"
                out[key] = round(auc(labels, score.tolist()), 4)
                print(f"{key}: {out[key]}", file=sys.stderr)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
