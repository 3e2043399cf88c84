"""How much the embedded sample's synthetic modality can add at most: AUC ceilings on a sample's test pairs.

    python experiments/sample_oracle.py [--domain news]

The sample is generated (recpeft/data/make_samples.py), so each interaction's latent score is known. On the
very test pairs the default run scores (the preference task's test split, all of them), it prints the AUC of:
- the latent score itself (theme affinity + item quality): what no model can beat but by luck;
- the theme part alone: the most a model can reach from who likes which theme, which titles show;
- item quality alone: the part only the second modality carries (features.npz mixes theme and quality);
- a logistic regression on the modality alone (the candidate's 16 numbers, the mean of the user's liked
  and disliked items' and their products with the candidate's), fitted on the training split: what the
  vectors give a simple model without any text (history: the items the prompt shows, the last
  --history-len; before 2026-11-30's third session it used the whole history and reported 0.847);
- the same on what `--fusion-context history` gives the projector ([v, v * h], v the candidate's standardised
  vector, h the mean of the history items the prompt shows), and on v alone (what a token without context
  carries).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--domain", default="news", choices=["news", "ecommerce", "video"])
    args = p.parse_args(argv)
    from sklearn.linear_model import LogisticRegression

    from recpeft.data import load_data
    from recpeft.data.make_samples import QUALITY, SAMPLE_ROOT, generate
    from recpeft.evaluation.metrics import auc
    from recpeft.tasks.examples import preference_examples

    items, rows, latent = generate(args.domain)
    quality = {it[0]: it[4] for it in items}
    oracle = {(f"{u}", items[i][0], ts): o for (u, i, ts, _), (o, _) in zip(rows, latent)}
    data = load_data(args.domain, None, None)
    splits = preference_examples(data)
    f = np.load(SAMPLE_ROOT / args.domain / "features.npz", allow_pickle=False)
    vec = dict(zip(f["item_ids"].tolist(), f["vectors"]))

    from recpeft.config import TrainConfig

    history_len = TrainConfig().history_len
    table = np.array(f["vectors"], dtype=np.float64)
    mu, sd = table.mean(0), table.std(0)

    def context_features(ex, with_history: bool = True) -> np.ndarray:
        v = (vec[ex.target.item_id] - mu) / sd
        shown = ex.history[-history_len:]  # the items the prompt shows (the default run's --history-len)
        h = np.mean([(vec[x.item_id] - mu) / sd for x in shown] or [np.zeros_like(v)], 0)
        return np.concatenate([v, v * h]) if with_history else v

    def fitted_auc(make) -> float:
        model = LogisticRegression(max_iter=3000).fit(np.array([make(ex) for ex in splits["train"]]),
                                                      [ex.label for ex in splits["train"]])
        return auc(labels, model.predict_proba(np.array([make(ex) for ex in test]))[:, 1].tolist())

    def features(ex) -> np.ndarray:
        cand = vec[ex.target.item_id]
        liked = [vec[x.item_id] for x in ex.history[-history_len:] if x.liked] or [np.zeros_like(cand)]
        disliked = [vec[x.item_id] for x in ex.history[-history_len:] if not x.liked] or [np.zeros_like(cand)]
        lk, dk = np.mean(liked, 0), np.mean(disliked, 0)
        return np.concatenate([cand, lk, dk, cand * lk, cand * dk])

    test = splits["test"]
    labels = [ex.label for ex in test]
    full = [oracle[(ex.user_id, ex.target.item_id, ex.target.timestamp)] for ex in test]
    q = [quality[ex.target.item_id] for ex in test]
    fit = LogisticRegression(max_iter=2000).fit(np.array([features(ex) for ex in splits["train"]]),
                                                [ex.label for ex in splits["train"]])
    out = {"domain": args.domain, "test_pairs": len(test),
           "latent_score": auc(labels, full),
           "theme_part": auc(labels, [o - QUALITY * x for o, x in zip(full, q)]),
           "quality_part": auc(labels, q),
           "logreg_on_modality": auc(labels, fit.predict_proba(np.array([features(ex) for ex in test]))[:, 1].tolist()),
           "logreg_on_v_and_v_times_history_mean": fitted_auc(context_features),
           "logreg_on_v_alone": fitted_auc(lambda ex: context_features(ex, False))}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
