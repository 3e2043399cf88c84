"""Per-item vectors for fusion: fitted by a collaborative-filtering model, or read from a feature file.

Collaborative vectors (--fusion cf) are the item factors of a model fitted on the task's train period
only (recpeft.baselines.base.train_interactions, the period the classical baselines fit on): implicit's
ALS (--fusion-cf als, a well-kept library) or recpeft's BPR (--fusion-cf bpr, the baseline's own model).
Feature files (--fusion file --item-features F) hold any other per-item vectors, e.g. image or audio
embeddings: a .safetensors file with a 2-D tensor "vectors" and the item ids, as a JSON list, in its
metadata key "item_ids"; or a .npz with the arrays "item_ids" (strings) and "vectors", read without
pickle. Either way the vectors are standardised per dimension, so the projector sees unit-scale input.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recpeft.errors import UserError
from recpeft.fusion import CF_MODELS


@dataclass(frozen=True)
class ItemVectors:
    """Item ids and their vectors (row i belongs to ids[i]); `source` and `fingerprint` say where they came from."""

    ids: list[str]
    vectors: torch.Tensor  # [len(ids), dim] float32, standardised
    source: str  # "cf:als", "cf:bpr" or "file"
    fingerprint: str  # sha256 of the raw vectors and ids (a feature file's content)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def _standardised(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / x.std(0).clamp(min=1e-6) if len(x) > 1 else x


def _fingerprint(ids: list[str], vectors: np.ndarray) -> str:
    h = hashlib.sha256(json.dumps(ids).encode())
    h.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _make(ids: list[str], raw: np.ndarray, source: str) -> ItemVectors:
    raw = np.asarray(raw, dtype=np.float32)
    return ItemVectors(list(ids), _standardised(torch.from_numpy(raw.copy())), source, _fingerprint(ids, raw))


def collaborative(data, task: str, model: str = "als", dim: int = 64, seed: int = 0,
                  item_stats: bool = False) -> ItemVectors:
    """Item factors of a CF model fitted on the task's train period; items it never saw are left out
    (they get the learned unknown vector). item_stats: two more columns, the item's log count and shrunk
    like-rate (mean rating for the rating task) over the same period (source "cf:als+stats").

    Those statistics include the training prompts' own targets (a frozen table cannot leave one example
    out, as the logistic-regression baseline does): each moves its item's rate by 1 / (count + 5), which
    the test pairs, from a later period, never get. That can only make the adapter trust rare items'
    rates too much; it cannot leak a test label."""
    from recpeft.baselines.base import train_interactions

    if model not in CF_MODELS:
        raise UserError(f"unknown fusion CF model '{model}'; choose from {', '.join(CF_MODELS)}")
    events = train_interactions(data, "preference" if task == "click" else task)
    ids = sorted({x.item_id for x in events})
    if len(ids) < 2:
        raise UserError(f"data '{data.name}' has {len(ids)} items in its training period; fusion needs more")
    factors = _bpr(data, task, events, ids, dim, seed) if model == "bpr" else _als(events, ids, dim, seed)
    if not item_stats:
        return _make(ids, factors, f"cf:{model}")
    return _make(ids, np.concatenate([factors, _stats(events, ids, task)], axis=1), f"cf:{model}+stats")


def _stats(events, ids: list[str], task: str) -> np.ndarray:
    """[log count, shrunk like-rate or mean rating] per item, the popularity baseline's statistics."""
    from recpeft.baselines.popularity import ItemStats

    stats = ItemStats(events, "rating" if task == "rating" else "preference")
    return np.array([[stats.log_count(i), stats.mean(i)] for i in ids], dtype=np.float32)


def _als(events, ids: list[str], dim: int, seed: int) -> np.ndarray:
    from implicit.als import AlternatingLeastSquares
    from scipy.sparse import csr_matrix
    from threadpoolctl import threadpool_limits

    users = {u: i for i, u in enumerate(sorted({x.user_id for x in events}))}
    col = {item: i for i, item in enumerate(ids)}
    pairs = sorted({(users[x.user_id], col[x.item_id]) for x in events})
    rows, cols = zip(*pairs)
    matrix = csr_matrix((np.ones(len(pairs), dtype=np.float32), (rows, cols)), shape=(len(users), len(ids)))
    # one thread: the same factors on every machine and every resume (a run rebuilds them to continue)
    with threadpool_limits(1, "blas"):  # implicit asks for it: a BLAS thread pool inside its loop is slow
        model = AlternatingLeastSquares(factors=dim, iterations=15, regularization=0.05, random_state=seed,
                                        num_threads=1)
        model.fit(matrix, show_progress=False)
    return np.asarray(model.item_factors)


def _bpr(data, task: str, events, ids: list[str], dim: int, seed: int) -> np.ndarray:
    from recpeft.baselines.base import FitContext
    from recpeft.baselines.bpr import BPR

    bpr = BPR(dim=dim)
    ctx = FitContext(data, "ranking", events, [], seed=seed)
    bpr.fit(ctx)
    index = [ctx.index[i] for i in ids]
    return bpr.item_emb.detach()[index].numpy()


def from_file(path: str | Path) -> ItemVectors:
    """Item vectors from a .safetensors or .npz feature file (see the module docstring); every problem is a
    UserError naming the file."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise UserError("item feature file not found", where)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(where, framework="np") as f:
                meta = f.metadata() or {}
                if "vectors" not in f.keys():
                    raise UserError("a feature file needs a tensor named 'vectors'", where)
                vectors = f.get_tensor("vectors")
        except (SafetensorError, OSError) as exc:
            raise UserError(f"corrupt safetensors file: {exc}", where) from None
        try:
            ids = json.loads(meta.get("item_ids", ""))
        except json.JSONDecodeError:
            raise UserError("a .safetensors feature file needs the item ids as a JSON list in its metadata key "
                            "'item_ids'", where) from None
    elif path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                if "vectors" not in f or "item_ids" not in f:
                    raise UserError("a .npz feature file needs the arrays 'item_ids' and 'vectors'", where)
                vectors, ids = f["vectors"], f["item_ids"].tolist()
        except (ValueError, OSError) as exc:  # allow_pickle=False refuses object arrays with a ValueError
            raise UserError(f"cannot read the feature file (numeric vectors and string ids only): "
                            f"{str(exc).splitlines()[0]}", where) from None
    else:
        raise UserError(f"unknown feature file type '{path.suffix}'; use .safetensors or .npz", where)
    return _checked(ids, vectors, where)


def _checked(ids, vectors: np.ndarray, where: str) -> ItemVectors:
    if not isinstance(ids, list) or not all(isinstance(i, (str, int)) for i in ids):
        raise UserError("the item ids must be a list of strings", where)
    ids = [str(i) for i in ids]
    if vectors.ndim != 2 or vectors.shape[1] < 1:
        raise UserError(f"'vectors' must be 2-D [items, dim], got shape {list(vectors.shape)}", where)
    if len(ids) != len(vectors):
        raise UserError(f"{len(ids)} item ids for {len(vectors)} vectors", where)
    if len(set(ids)) != len(ids):
        raise UserError("the item ids are not unique", where)
    if not np.issubdtype(vectors.dtype, np.number) or not np.isfinite(vectors).all():
        raise UserError("the vectors must be finite numbers", where)
    return _make(ids, vectors, "file")
