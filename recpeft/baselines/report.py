"""The `recpeft baselines` verb's library side: load, run, wrap with provenance, write, format."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from recpeft.artifacts import write_json_atomic
from recpeft.config import TrainConfig
from recpeft.data import load_data
from recpeft.data.schema import RecData
from recpeft.domains import DOMAINS
from recpeft.errors import UserError

COLUMNS = {"preference": ("auc", "logloss"), "rating": ("rmse", "mae"),
           "ranking": ("hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "mrr")}
COLUMNS["profile"] = COLUMNS["ranking"]


TRAIN_DEFAULTS = TrainConfig()  # the same history length and negatives as `recpeft train`


def baseline_report(domain: str, path: str | None, task: str, *, fmt: str | None = None, on_bad_rows: str = "fail",
                    models: list[str] | None = None,
                    negatives: int = TRAIN_DEFAULTS.negatives, seed: int = 0, train_samples: int = 0,
                    history_len: int = TRAIN_DEFAULTS.history_len,
                    cold_max_train: int = 2, threads: int = 0, out: Path | None = None,
                    profile_from: str = TRAIN_DEFAULTS.profile_from, profile_items: int = TRAIN_DEFAULTS.profile_items,
                    log: Callable[[str], None] | None = None) -> dict:
    """Load the data, run the baselines, and return (and optionally write to `out`) the results with
    what produced them: data name, path and fingerprint, settings, sizes and wall time."""
    from recpeft.baselines import SCORED_AS, run_baselines  # late: this module is imported by the package itself

    if domain not in DOMAINS:
        raise UserError(f"unknown domain '{domain}'; choose from {', '.join(DOMAINS)}")
    task = SCORED_AS.get(task, task)  # the report's metrics and columns are those of the task it is scored as
    if out is not None and Path(out).is_dir():
        raise UserError("--out is a folder; give a file name", str(out))
    if threads < 0:
        raise UserError("--threads must be >= 0")
    if threads:
        import torch

        torch.set_num_threads(threads)
    data = load_data(domain, path, fmt, on_bad_rows)
    if not isinstance(data, RecData):
        raise UserError("baselines need users' interactions with items; instruction data (alpaca) has none",
                        str(path))
    start = time.perf_counter()
    results = run_baselines(data, task, models, negatives=negatives, seed=seed, train_samples=train_samples,
                            history_len=history_len, cold_max_train=cold_max_train, log=log,
                            profile_from=profile_from, profile_items=profile_items)
    report = {
        "data": {"name": data.name, "path": path, "format": data.stats.get("format", "csv" if path else "sample"),
                 "fingerprint": data.fingerprint(),
                 "users": len({x.user_id for x in data.interactions}), "items": len(data.items),
                 "interactions": len(data.interactions)},
        "task": task,
        "settings": {"negatives": negatives if task in ("ranking", "profile") else None, "seed": seed,
                     "train_samples": train_samples, "history_len": history_len, "cold_max_train": cold_max_train,
                     **({"profile_from": profile_from, "profile_items": profile_items} if task == "profile" else {})},
        "seconds": round(time.perf_counter() - start, 2),
        "results": results,
    }
    if out is not None:
        write_json_atomic(Path(out), report)
    return report


def _cell(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def format_report(report: dict) -> str:
    """A plain-text table per split (test, cold-start test slice, valid): one row per baseline."""
    task, results = report["task"], report["results"]
    cols = COLUMNS[task]
    settings = report["settings"]
    shots = f", {settings['train_samples']} training examples" if settings["train_samples"] else ""
    lines = [f"recpeft baselines — {report['data']['name']} / {task}{shots} ({report['seconds']:.1f} s)"]
    for split, title in (("test", "test"), ("test_cold_start", f"test, cold start (target item <= "
                                                                  f"{settings['cold_max_train']} train interactions)"),
                         ("valid", "valid")):
        sizes = {m[split]["n"] for m in results.values() if m[split]}
        lines.append(f"\n  {title}: {', '.join(map(str, sizes)) or 0} examples")
        if not sizes:
            continue
        width = max(12, *(len(name) + 1 for name in results))
        lines.append("  " + f"{'baseline':<{width}}" + "".join(f"{c:>9}" for c in cols) + f"{'fit s':>9}")
        for name, m in results.items():
            row = m[split] or {}
            lines.append("  " + f"{name:<{width}}" + "".join(f"{_cell(row.get(c)):>9}" for c in cols)
                         + f"{m['fit_seconds']:>9.1f}")
    notes = [f"  {name}: {m['note']}" for name, m in results.items() if m.get("note")]
    return "\n".join(lines + (["", *notes] if notes else []))
