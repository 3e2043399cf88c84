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
