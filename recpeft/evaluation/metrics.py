"""Metrics, from scikit-learn where it has them."""

from __future__ import annotations

import math

from sklearn.metrics import log_loss, roc_auc_score


def auc(labels: list[int], scores: list[float]) -> float:
    """ROC AUC; NaN when only one class is present (AUC is undefined there)."""
    if len(set(labels)) < 2:
        return math.nan
    return float(roc_auc_score(labels, scores))


def binary_metrics(labels: list[int], scores: list[float]) -> dict[str, float]:
    clipped = [min(max(s, 1e-7), 1 - 1e-7) for s in scores]
    return {"auc": auc(labels, scores), "logloss": float(log_loss(labels, clipped, labels=[0, 1])),
            "n": len(labels), "positive_rate": sum(labels) / max(1, len(labels))}


def ranking_metrics(scores: list[list[float]], ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """HR@k, NDCG@k and MRR for rows of candidate scores whose true item is at index 0.

    Ties count against the true item (its rank is 1 + the number of negatives scoring >= it), so a
    scorer that returns constants gets the worst rank, not the best.
    """
    if not scores:
        raise ValueError("no ranking examples to score")
    ranks = [1 + sum(1 for s in row[1:] if s >= row[0]) for row in scores]
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = sum(r <= k for r in ranks) / len(ranks)
        if k > 1:
            out[f"ndcg@{k}"] = sum(1 / math.log2(r + 1) for r in ranks if r <= k) / len(ranks)
    out["mrr"] = sum(1 / r for r in ranks) / len(ranks)
    return out


def rating_metrics(predicted: list[float], actual: list[float]) -> dict[str, float]:
    """RMSE and MAE of predicted against true ratings."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    return {"rmse": math.sqrt(mean_squared_error(actual, predicted)), "mae": mean_absolute_error(actual, predicted)}


def set_metrics(predicted: list[set[str]], actual: list[set[str]]) -> dict[str, float]:
    """Micro-averaged precision, recall and F1 of predicted category sets against true ones."""
    tp = sum(len(p & a) for p, a in zip(predicted, actual))
    n_pred, n_true = sum(map(len, predicted)), sum(map(len, actual))
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
